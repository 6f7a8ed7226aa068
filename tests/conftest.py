"""Fixtures: a real sandboxd, in its own network namespace, with a test instance name.

The whole pytest process moves into a fresh network namespace at start, so the daemon under
test, its clients and every sandbox talk only over that namespace's loopback. The session
ends with a leak check of everything named with the test instance prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
SANDBOXD = os.path.join(BIN, "sandboxd")
SANDBOXCTL = os.path.join(BIN, "sandboxctl")
PYTHON = sys.executable

#: every host object of a test run starts with PREFIX; instances are PREFIX + one letter
PREFIX = os.environ.get("SANDBOXD_TEST_PREFIX") or "sbxt" + secrets.token_hex(2)[:3]
INSTANCE = PREFIX + "a"
TEST_NETNS = f"{PREFIX}-tns"


def other_instance(letter: str) -> str:
    """A second daemon instance name (b..z) covered by the same leak check."""
    assert len(letter) == 1 and letter != "a"
    return PREFIX + letter


CLONE_NEWNET = 0x40000000


def _enter_test_netns() -> None:
    subprocess.run(["ip", "netns", "add", TEST_NETNS], check=True)
    fd = os.open(f"/run/netns/{TEST_NETNS}", os.O_RDONLY)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


IS_ROOT = os.geteuid() == 0
#: how long a daemon may take to listen: Python's imports alone take 15-30 s in the TCG VM
START_TIMEOUT = 300.0 if os.environ.get("SANDBOXD_VM") else 60.0
#: fixtures that start a daemon or touch the host: a test using one must be marked ``root``
ROOT_FIXTURES = {"daemon", "alice", "bob"}


def _needs_root(item: pytest.Item) -> bool:
    return item.get_closest_marker("root") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Hold the ``root`` marker true, and skip root tests (with the reason) for a non-root run."""
    unmarked = [
        item.nodeid
        for item in items
        if not _needs_root(item) and ROOT_FIXTURES & set(getattr(item, "fixturenames", ()))
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use a daemon but lack `pytestmark = pytest.mark.root`:\n  "
            + "\n  ".join(unmarked)
        )
    if not IS_ROOT:
        skip = pytest.mark.skip(reason="needs root and a real kernel: run `make test` as root")
        for item in items:
            if _needs_root(item):
                item.add_marker(skip)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Only a run that holds root tests moves into its own network namespace."""
    in_worker = hasattr(session.config, "workerinput")
    if IS_ROOT and not in_worker and any(_needs_root(item) for item in session.items):
        _enter_test_netns()
        session.config.stash[_IN_NETNS] = True


_IN_NETNS = pytest.StashKey[bool]()


def leftovers(prefix: str) -> list[str]:
    """Host objects whose names start with ``prefix`` (and bwrap processes of ours)."""
    left: list[str] = []
    if os.path.isdir("/run/netns"):
        left += [
            f"netns {n}"
            for n in os.listdir("/run/netns")
            if n.startswith(prefix) and n != TEST_NETNS
        ]
    for ns in (None, f"/run/netns/{TEST_NETNS}"):
        cmd = ["ip", "-o", "link", "show"]
        if ns:
            cmd = ["nsenter", f"--net={ns}", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = line.split(":", 2)[1].strip().split("@")[0]
            if name.startswith(prefix):
                left.append(f"link {name}")
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            target = line.split()[4]
            if f"/{prefix}" in target and target != f"/run/netns/{TEST_NETNS}":
                left.append(f"mount {target}")
    for base, dirs, _ in os.walk("/sys/fs/cgroup"):
        if base.count("/") > 5:
            dirs[:] = []
            continue
        left += [f"cgroup {base}/{d}" for d in dirs if d.startswith(prefix)]
        dirs[:] = [d for d in dirs if not d.startswith(prefix)]
    for ns in (None, f"/run/netns/{TEST_NETNS}"):
        cmd = ["nft", "-j", "list", "tables"]
        if ns:
            cmd = ["nsenter", f"--net={ns}", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        if out.strip():
            for item in json.loads(out).get("nftables", []):
                table = item.get("table")
                if table and table["name"].startswith(prefix):
                    left.append(f"nft table {table['family']} {table['name']}")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"bwrap" and prefix.encode() in b" ".join(argv):
            left.append(f"process {pid} bwrap")
    return left


SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if hasattr(session.config, "workerinput"):
        return
    if os.environ.get("SANDBOXD_TESTS_MUST_RUN") and SKIPPED:
        sys.stderr.write(
            "\nSANDBOXD_TESTS_MUST_RUN: these tests were skipped:\n  " + "\n  ".join(SKIPPED) + "\n"
        )
        session.exitstatus = 1
    if not session.config.stash.get(_IN_NETNS, False):  # a pure run: no host objects made
        for path in (STATE_DIR, VOLUME_ROOT):
            shutil.rmtree(path, ignore_errors=True)
        return
    subprocess.run(
        [SANDBOXD, "cleanup", "--instance", INSTANCE, "--purge", "--state-dir", STATE_DIR],
        capture_output=True,
    )
    for letter in "bcdefghijklmnopqrstuvwxyz":
        if not os.path.exists(f"/run/sandboxd/{PREFIX}{letter}"):
            continue
        subprocess.run(
            [
                SANDBOXD,
                "cleanup",
                "--instance",
                PREFIX + letter,
                "--state-dir",
                f"{STATE_DIR}-{letter}",
            ],
            capture_output=True,
        )
    left = leftovers(PREFIX)
    subprocess.run(["ip", "netns", "delete", TEST_NETNS], capture_output=True)
    if left:
        sys.stderr.write("\nLEAK CHECK FAILED: left on the host:\n  " + "\n  ".join(left) + "\n")
        session.exitstatus = 1
    else:
        sys.stderr.write(f"\nleak check: nothing left for {PREFIX}\n")


STATE_DIR = tempfile.mkdtemp(prefix=f"{INSTANCE}-state-")
VOLUME_ROOT = tempfile.mkdtemp(prefix=f"{INSTANCE}-vol-")
os.chmod(VOLUME_ROOT, 0o755)


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


@dataclass
class Client:
    url: str
    token: str | None
    session: requests.Session = field(default_factory=requests.Session)

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        if self.token is not None:
            headers.setdefault("Authorization", f"token {self.token}")
        return self.session.request(method, self.url + path, headers=headers, timeout=120, **kw)

    def call(self, method: str, path: str, expect: int | None = None, **kw: Any) -> Any:
        resp = self.request(method, path, **kw)
        body = resp.json() if resp.content else None
        if expect is not None:
            assert resp.status_code == expect, (resp.status_code, body)
        elif resp.status_code >= 400:
            raise ApiError(resp.status_code, body)
        return body

    def run(self, command: list[str], **fields: Any) -> dict[str, Any]:
        return self.call("POST", "/api/sandboxes", json={"command": command, **fields})

    def wait(self, sid: str) -> dict[str, Any]:
        return self.call("POST", f"/api/sandboxes/{sid}/wait")

    def logs(self, sid: str) -> dict[str, Any]:
        return self.call("GET", f"/api/sandboxes/{sid}/logs")

    def run_to_end(self, command: list[str], **fields: Any) -> tuple[dict[str, Any], str, str]:
        sb = self.run(command, **fields)
        result = self.wait(sb["id"])
        logs = self.logs(sb["id"])
        self.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
        return result, logs["stdout"], logs["stderr"]


CONFIG = f"""
volume_roots = ["{VOLUME_ROOT}"]
stop_grace_seconds = 3
log_max_bytes = 65536

[profiles.default]
cpus = 1.0
memory = "512m"
pids = 256
network = "none"            # engine tests: loopback only (the network suite covers bridge)
disk = "256m"
max_cpus = 2.0
max_memory = "4g"

[profiles.hostnet]
network = "host"
allow_host_network = true

[quotas.default]
max_sandboxes = 12
memory = "6g"
cpus = 8.0
"""


@dataclass
class Daemon:
    url: str
    instance: str
    state_dir: str
    run_dir: str
    config_path: str
    admin: Client
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: str = ""
    users: dict[str, Client] = field(default_factory=dict)

    def start(
        self,
        listen_host: str = "127.0.0.1",
        netns: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start (or restart) the daemon; ``netns``: run it in that named network namespace
        (with nsenter, not ``ip netns exec``, which remounts /sys and hides the cgroups);
        ``env``: extra environment (the crash tests' ``SANDBOXD_FAULT``)."""
        log = open(self.log_path, "ab")
        enter = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        self.proc = subprocess.Popen(
            [
                *enter,
                SANDBOXD,
                "serve",
                "--config",
                self.config_path,
                "--instance",
                self.instance,
                "--listen",
                f"{listen_host}:{self.port}",
                "--state-dir",
                self.state_dir,
                "--run-dir",
                self.run_dir,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env} if env else None,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        token_file = os.path.join(self.state_dir, "admin-token")
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sandboxd exited: {open(self.log_path).read()[-3000:]}")
            try:
                with open(token_file) as fh:
                    self.admin.token = fh.read().strip()
                requests.get(self.url + "/api/openapi.json", timeout=1)
                return
            except (OSError, requests.ConnectionError):
                time.sleep(0.05)
        raise RuntimeError("sandboxd did not come up")

    def kill(self, sig: int = 9) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout=30)

    def user(self, name: str) -> Client:
        """A client for user ``name`` (created on first use)."""
        if name not in self.users:
            body = self.admin.call("POST", "/api/users", json={"name": name})
            self.users[name] = Client(self.url, body["token"])
        return self.users[name]

    def env(self, token: str | None = None) -> dict[str, str]:
        return {
            **os.environ,
            "SANDBOXD_URL": self.url,
            "SANDBOXD_TOKEN": token or self.admin.token or "",
        }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_daemon(instance: str, config: str = CONFIG, state_dir: str | None = None) -> Daemon:
    """A Daemon (not started) with its own instance name, state dir, port and config."""
    state_dir = state_dir or (
        STATE_DIR if instance == INSTANCE else f"{STATE_DIR}-{instance[len(PREFIX) :]}"
    )
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    config_path = f"{state_dir}.toml"
    with open(config_path, "w") as fh:
        fh.write(config)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return Daemon(
        url=url,
        instance=instance,
        state_dir=state_dir,
        run_dir=f"/run/sandboxd/{instance}",
        config_path=config_path,
        admin=Client(url, None),
        port=port,
        log_path=state_dir + ".log",
    )


@contextlib.contextmanager
def running_daemon(instance: str, config: str = CONFIG) -> Iterator[Daemon]:
    """A started daemon of its own instance, stopped and cleaned up (state purged) after."""
    d = make_daemon(instance, config)
    d.start()
    try:
        yield d
    finally:
        stop_daemon(d)
        subprocess.run(
            [SANDBOXD, "cleanup", "--instance", d.instance, "--state-dir", d.state_dir, "--purge"],
            capture_output=True,
        )


def stop_daemon(d: Daemon) -> None:
    if d.proc and d.proc.poll() is None:
        d.proc.terminate()
        d.proc.wait(timeout=30)
    for c in d.users.values():
        c.session.close()


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    d = make_daemon(INSTANCE)
    d.start()
    yield d
    stop_daemon(d)
    shutil.rmtree(VOLUME_ROOT, ignore_errors=True)


@pytest.fixture
def alice(daemon: Daemon) -> Client:
    return daemon.user("alice")


@pytest.fixture
def bob(daemon: Daemon) -> Client:
    return daemon.user("bob")
