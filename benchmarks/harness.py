"""Shared set-up for benchmarks: a network namespace of their own and a daemon instance in it.

Benchmarks measure; they never assert. Each one compares against a baseline measured in the
same run and prints medians and ratios.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import requests

BIN = os.path.dirname(sys.executable)
SANDBOXD = os.path.join(BIN, "sandboxd")
SANDBOXCTL = os.path.join(BIN, "sandboxctl")


def enter_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "add", name], check=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(fd, 0x40000000) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


@dataclass
class BenchDaemon:
    url: str
    token: str
    instance: str
    state: str
    pid: int = 0  # the daemon process (fd counts, RSS, py-spy)

    @property
    def state_dir(self) -> str:
        return self.state + "/s"

    @property
    def run_dir(self) -> str:
        return f"/run/sandboxd/{self.instance}"

    def env(self) -> dict[str, str]:
        return {**os.environ, "SANDBOXD_URL": self.url, "SANDBOXD_TOKEN": self.token}

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(
            self.url + path, json=body, headers={"Authorization": f"token {self.token}"}, timeout=60
        )


@contextlib.contextmanager
def daemon(config: str = "") -> Iterator[BenchDaemon]:
    """A fresh sandboxd instance (``sbxb…``) in a fresh netns; everything removed afterwards."""
    instance = "sbxb" + secrets.token_hex(2)
    netns = f"{instance}-ns"
    enter_netns(netns)
    state = tempfile.mkdtemp(prefix=f"{instance}-")
    cfg = os.path.join(state, "config.toml")
    with open(cfg, "w") as fh:
        fh.write(config)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(state + ".log", "w")
    proc = subprocess.Popen(
        [
            SANDBOXD,
            "serve",
            "--config",
            cfg,
            "--instance",
            instance,
            "--listen",
            f"127.0.0.1:{port}",
            "--state-dir",
            state + "/s",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(400):
            try:
                with open(state + "/s/admin-token") as fh:
                    token = fh.read().strip()
                requests.get(url + "/api/openapi.json", timeout=1)
                break
            except (OSError, requests.ConnectionError):
                time.sleep(0.05)
        else:
            raise RuntimeError("daemon did not start")
        yield BenchDaemon(url, token, instance, state, proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        subprocess.run(
            [SANDBOXD, "cleanup", "--instance", instance, "--state-dir", state + "/s", "--purge"],
            capture_output=True,
        )
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True)
        log.close()
        shutil.rmtree(state, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.remove(state + ".log")


def timed(fn, runs: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def report(name: str, samples: list[float], baseline: list[float] | None = None) -> str:
    med = statistics.median(samples)
    line = f"{name:<48} median {med * 1000:8.2f} ms  (n={len(samples)})"
    if baseline:
        line += f"  ratio {med / statistics.median(baseline):6.2f}x"
    print(line, flush=True)
    return line
