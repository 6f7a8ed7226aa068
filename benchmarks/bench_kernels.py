"""Kernel benchmarks: sandboxd against a bare local ipykernel, measured in the same run.

1. Cold start: median time from ``POST /api/kernels`` to the first ``kernel_info_reply`` on the
   kernel's WebSocket, against a bare ipykernel started by jupyter_client's ``KernelManager``
   (start + ``kernel_info`` over ZMQ). Runs alternate, 10 each by default. Target <= 1.10x.
2. Execute round trip of ``pass``: send ``execute_request`` -> ``execute_reply`` received,
   through the gateway WebSocket against direct ZMQ to the *same* sandboxed kernel (ipc sockets
   in its run dir), so the difference is the gateway. Target: at most +1 ms.

Run as root: ``.venv/bin/python benchmarks/bench_kernels.py [--runs 10] [--rtt 300]``. It
starts its own daemon instance (``sbxb…``, loopback only) and removes everything at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import requests
import websocket
import zmq
from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A throw-away sandboxd instance with one user."""

    def __init__(self) -> None:
        self.instance = "sbxb" + secrets.token_hex(2)
        self.state = tempfile.mkdtemp(prefix=f"{self.instance}-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.path.join(self.state, "daemon.log"), "wb")  # noqa: SIM115
        config = os.path.join(self.state, "config.toml")
        with open(config, "w") as fh:  # kernels without a network, like the bare baseline
            fh.write('[profiles.default]\nnetwork = "none"\n')
        self.proc = subprocess.Popen(
            [
                os.path.join(BIN, "sandboxd"),
                "serve",
                "--instance",
                self.instance,
                "--config",
                config,
                "--listen",
                f"127.0.0.1:{self.port}",
                "--state-dir",
                self.state + "/s",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        token_file = os.path.join(self.state, "s", "admin-token")
        deadline = time.monotonic() + 30
        while True:
            try:
                admin = open(token_file).read().strip()
                requests.get(self.url + "/api/openapi.json", timeout=1)
                break
            except (OSError, requests.ConnectionError):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("sandboxd did not start") from None
                time.sleep(0.05)
        body = requests.post(
            self.url + "/api/users",
            json={"name": "bench"},
            timeout=10,
            headers={"Authorization": f"token {admin}"},
        ).json()
        self.token = body["token"]
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        subprocess.run(
            [
                os.path.join(BIN, "sandboxd"),
                "cleanup",
                "--instance",
                self.instance,
                "--state-dir",
                self.state + "/s",
                "--purge",
            ],
            capture_output=True,
        )
        shutil.rmtree(self.state, ignore_errors=True)


def msg(msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "username": "b",
            "session": "b",
            "date": "2026-01-01T00:00:00.000000Z",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": content,
        "channel": "shell",
    }


EXECUTE = {
    "code": "pass",
    "silent": False,
    "store_history": False,
    "user_expressions": {},
    "allow_stdin": False,
}


def ws_open(d: Daemon, kid: str) -> websocket.WebSocket:
    return websocket.create_connection(
        d.url.replace("http", "ws") + f"/api/kernels/{kid}/channels",
        header=[f"Authorization: token {d.token}"],
        timeout=60,
    )


def ws_wait(ws: websocket.WebSocket, msg_id: str, msg_type: str, state: str = "") -> None:
    while True:
        got = json.loads(ws.recv())
        if (
            got["parent_header"].get("msg_id") == msg_id
            and got["msg_type"] == msg_type
            and (not state or got["content"].get("execution_state") == state)
        ):
            return


def cold_sandboxd(d: Daemon) -> float:
    t0 = time.perf_counter()
    kid = d.http.post(d.url + "/api/kernels", json={"name": "python3"}, timeout=120).json()["id"]
    ws = ws_open(d, kid)
    m = msg("kernel_info_request", {})
    ws.send(json.dumps(m))
    ws_wait(ws, m["header"]["msg_id"], "kernel_info_reply")
    elapsed = time.perf_counter() - t0
    ws.close()
    d.http.delete(d.url + f"/api/kernels/{kid}", timeout=60)
    return elapsed


def cold_bare() -> float:
    t0 = time.perf_counter()
    km = KernelManager(kernel_name="python3")
    km.start_kernel(stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    kc.kernel_info(reply=True, timeout=60)
    elapsed = time.perf_counter() - t0
    kc.stop_channels()
    km.shutdown_kernel(now=True)
    return elapsed


def rtt_ws(ws: websocket.WebSocket) -> float:
    """One execute of ``pass`` through the gateway WebSocket; until its execute_reply."""
    m = msg("execute_request", EXECUTE)
    msg_id = m["header"]["msg_id"]
    t0 = time.perf_counter()
    ws.send(json.dumps(m))
    elapsed = 0.0
    replied = idle = False
    while not (replied and idle):  # shell and iopub may arrive in either order
        got = json.loads(ws.recv())
        if got["parent_header"].get("msg_id") != msg_id:
            continue
        if got["msg_type"] == "execute_reply":
            elapsed = time.perf_counter() - t0
            replied = True
        elif got["msg_type"] == "status" and got["content"]["execution_state"] == "idle":
            idle = True
    return elapsed


class DirectClient:
    """jupyter_client's Session straight on the kernel's ipc sockets (the baseline)."""

    def __init__(self, conn_file: str, host_dir: str) -> None:
        with open(conn_file) as fh:
            info = json.load(fh)
        self.session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
        ctx = zmq.Context.instance()
        self.shell = ctx.socket(zmq.DEALER)
        self.shell.connect(f"ipc://{host_dir}/kernel-ipc-{info['shell_port']}")
        self.iopub = ctx.socket(zmq.SUB)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        self.iopub.connect(f"ipc://{host_dir}/kernel-ipc-{info['iopub_port']}")
        time.sleep(0.5)

    def rtt(self) -> float:
        t0 = time.perf_counter()
        sent = self.session.send(self.shell, "execute_request", EXECUTE)
        while True:
            _, reply = self.session.recv(self.shell, mode=0)
            if reply["parent_header"].get("msg_id") == sent["header"]["msg_id"]:
                break
        elapsed = time.perf_counter() - t0
        while True:  # untimed drain until this request's idle (iopub is a separate socket)
            _, m = self.session.recv(self.iopub, mode=0)
            if (
                m["msg_type"] == "status"
                and m["content"]["execution_state"] == "idle"
                and m["parent_header"].get("msg_id") == sent["header"]["msg_id"]
            ):
                return elapsed

    def close(self) -> None:
        self.shell.close(0)
        self.iopub.close(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rtt", type=int, default=300)
    args = parser.parse_args()
    d = Daemon()
    try:
        cold_bare(), cold_sandboxd(d)  # warm the page cache of both paths
        bare, sbx = [], []
        for _ in range(args.runs):
            bare.append(cold_bare())
            sbx.append(cold_sandboxd(d))
        mb, ms = statistics.median(bare), statistics.median(sbx)
        print(
            f"cold start, median of {args.runs}: bare KernelManager {mb * 1000:.0f} ms, "
            f"sandboxd POST->kernel_info_reply {ms * 1000:.0f} ms, ratio {ms / mb:.3f} "
            f"(target <= 1.10)"
        )

        model = d.http.post(d.url + "/api/kernels", json={"name": "python3"}, timeout=120).json()
        host_dir = f"/run/sandboxd/{d.instance}/{model['sandbox']}/kernel"
        ws = ws_open(d, model["id"])
        direct_client = DirectClient(os.path.join(host_dir, "connection.json"), host_dir)
        try:
            for _ in range(20):  # warm both paths
                rtt_ws(ws), direct_client.rtt()
            via_ws, direct = [], []
            for _ in range(args.rtt):  # interleaved, so machine noise hits both alike
                via_ws.append(rtt_ws(ws))
                direct.append(direct_client.rtt())
        finally:
            direct_client.close()
            ws.close()
            d.http.delete(d.url + f"/api/kernels/{model['id']}", timeout=60)
        mw, mz = statistics.median(via_ws), statistics.median(direct)
        print(
            f"execute 'pass' round trip, median of {args.rtt}: direct ZMQ {mz * 1000:.3f} ms, "
            f"gateway WebSocket {mw * 1000:.3f} ms, gateway adds {(mw - mz) * 1000:.3f} ms "
            f"(target <= 1 ms), ratio {mw / mz:.2f}"
        )
    finally:
        d.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
