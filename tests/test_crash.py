"""Crash at every step: the daemon SIGKILLed at each fault point, and at 20 random moments
under load, leaves nothing a restart does not account for, and what ran before still runs.

``SANDBOXD_FAULT=<point>`` (``sandboxd/faults.py``) makes the daemon kill itself right after
that step of a create, a bridged network attach, a remove or a kernel start. After each crash
the daemon is started again without it, and ``resilience.HostView`` checks that the host and
the records agree: no orphan process, cgroup, mount, netns, veth, nft rule or run dir, no record
without its objects. Survivors made before the first crash (a bridged web server, a sandbox
with network "none", a kernel holding a variable) must still run and answer after every one.
"""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from conftest import SANDBOXD, ApiError, Client, Daemon, make_daemon, other_instance, stop_daemon
from resilience import assert_consistent
from test_kernel_fixtures import execute, start_kernel, stdout_of, ws_connect

from sandboxd import faults

INST = other_instance("f")
POOL = "10.218.0.0/16"
ROUNDS = 20  # SIGKILLs at random moments under load
LOAD_CLIENTS = 4

CONFIG = f"""
stop_grace_seconds = 1
log_max_bytes = 65536

[profiles.default]
cpus = 0.5
memory = "256m"
pids = 128
disk = "64m"
network = "bridge"

[network]
pool = "{POOL}"             # daemons sharing the test netns need pools of their own

[quotas.default]
max_sandboxes = 12
max_kernels = 3
memory = "16g"
cpus = 16.0
"""

# a web server in the bridged survivor; the test reaches it across the user's bridge
SERVER = (
    "import http.server as h; h.HTTPServer(('', 8080), h.SimpleHTTPRequestHandler).serve_forever()"
)


@dataclass
class Survivors:
    """What runs before the first crash and must outlive every one."""

    bridged: dict[str, Any]
    isolated: dict[str, Any]
    kernel: dict[str, Any]
    address: str


@pytest.fixture(scope="module")
def crashd() -> Iterator[Daemon]:
    d = make_daemon(INST, CONFIG)
    d.start()
    yield d
    stop_daemon(d)
    subprocess.run(
        [SANDBOXD, "cleanup", "--instance", d.instance, "--state-dir", d.state_dir, "--purge"],
        capture_output=True,
    )


@pytest.fixture(scope="module")
def survivors(crashd: Daemon) -> Survivors:
    alice = crashd.user("alice")
    bridged = alice.run(["python3", "-c", SERVER], name="keep-web")
    isolated = alice.run(["sleep", "3600"], name="keep-none", network="none")
    kernel = start_kernel(alice)
    ws = ws_connect(crashd, alice, kernel["id"])
    try:
        reply, _ = execute(ws, "kept = 6 * 7")
        assert reply["content"]["status"] == "ok"
    finally:
        ws.close()
    address = bridged["network_settings"]["address"]
    s = Survivors(bridged, isolated, kernel, address)
    check_survivors(crashd, s)
    return s


def web_answers(address: str, timeout: float = 20.0) -> bool:
    """An HTTP answer from the bridged survivor's server (raw socket: no proxy, no retries)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, 8080), timeout=2) as conn:
                conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
                if conn.recv(64).startswith(b"HTTP/1.0 200"):
                    return True
        except OSError:
            time.sleep(0.2)
    return False


def check_survivors(d: Daemon, s: Survivors) -> None:
    alice = d.user("alice")
    for sb in (s.bridged, s.isolated):
        model = alice.call("GET", f"/api/sandboxes/{sb['id']}")
        assert model["state"] == "running" and model["pid"] == sb["pid"], model
    assert web_answers(s.address), "the bridged survivor's server does not answer"
    model = alice.call("GET", f"/api/kernels/{s.kernel['id']}")
    assert model["execution_state"] != "dead", model
    ws = ws_connect(d, alice, s.kernel["id"])
    try:
        reply, iopub = execute(ws, "print(kept)")
        assert reply["content"]["status"] == "ok"
        assert stdout_of(iopub).strip() == "42"  # the same kernel process, its state kept
    finally:
        ws.close()


def remove_all(client: Client) -> None:
    for kernel in client.call("GET", "/api/kernels"):
        client.call("DELETE", f"/api/kernels/{kernel['id']}", expect=204)
    for sb in client.call("GET", "/api/sandboxes?all=1"):
        client.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1", expect=204)


#: what of the interrupted operation a restart keeps (nothing, for every other point): a
#: sandbox recorded as running is re-adopted; an interrupted remove leaves the exited record
#: (removing it again works); a kernel whose row was written is adopted
AFTER = {
    "create:running": ["running"],
    "remove:stopped": ["exited"],
    "remove:released": ["exited"],
    "kernel:recorded": ["running"],
}


def trigger(d: Daemon, client: Client, point: str) -> None:
    """Run the operation that passes ``point`` (the daemon dies on the way)."""
    op = point.split(":")[0]
    try:
        if op == "remove":
            sb = client.run(["sleep", "600"])
            client.request("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
        elif op == "kernel":
            client.request("POST", "/api/kernels", json={"name": "python3"})
        else:  # create and network: a bridged create passes every step of both
            client.request("POST", "/api/sandboxes", json={"command": ["sleep", "600"]})
    except requests.ConnectionError:
        pass


@pytest.mark.parametrize("point", faults.POINTS)
def test_crash_at_fault_point(crashd: Daemon, survivors: Survivors, point: str) -> None:
    stop_daemon(crashd)
    crashd.start(env={"SANDBOXD_FAULT": point})
    bob = crashd.user("bob")
    trigger(crashd, bob, point)
    assert crashd.proc is not None
    assert crashd.proc.wait(timeout=60) == -signal.SIGKILL, f"the daemon did not die at {point}"
    crashd.start()
    assert_consistent(crashd, POOL)
    check_survivors(crashd, survivors)
    states = sorted(s["state"] for s in bob.call("GET", "/api/sandboxes?all=1"))
    assert states == AFTER.get(point, []), (point, states)
    if point == "kernel:recorded":  # recorded before the crash: adopted, and it runs code
        (kernel,) = bob.call("GET", "/api/kernels")
        ws = ws_connect(crashd, bob, kernel["id"])
        try:
            assert execute(ws, "1 + 1")[0]["content"]["status"] == "ok"
        finally:
            ws.close()
    remove_all(bob)
    view = assert_consistent(crashd, POOL)
    kernel = crashd.user("alice").call("GET", f"/api/kernels/{survivors.kernel['id']}")
    assert view.running == {survivors.bridged["id"], survivors.isolated["id"], kernel["sandbox"]}


def churn(client: Client, n: int, stop: threading.Event) -> None:
    """Create and remove until the daemon dies; clients 0-2 sandboxes, client 3 kernels."""
    i = 0
    try:
        while not stop.is_set():
            if n == LOAD_CLIENTS - 1:
                kernel = client.call("POST", "/api/kernels", json={"name": "python3"})
                client.call("DELETE", f"/api/kernels/{kernel['id']}")
            else:
                net = "bridge" if (i + n) % 2 == 0 else "none"
                sb = client.run(["sleep", "600"], network=net)
                client.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
            i += 1
    except (requests.ConnectionError, ApiError):
        return  # the daemon died under us (or refused while it was dying)


def test_sigkill_at_random_moments_under_load(crashd: Daemon, survivors: Survivors) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    clients = [crashd.user(f"load{n}") for n in range(LOAD_CLIENTS)]
    for rnd in range(ROUNDS):
        stop = threading.Event()
        threads = [
            threading.Thread(target=churn, args=(c, n, stop), daemon=True)
            for n, c in enumerate(clients)
        ]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 2.5))
        crashd.kill(signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(timeout=150)
            assert not t.is_alive()
        crashd.start()
        try:
            assert_consistent(crashd, POOL)
            check_survivors(crashd, survivors)
        except AssertionError as exc:
            raise AssertionError(f"round {rnd} (seed {seed}): {exc}") from None
        for c in clients:
            remove_all(c)
    assert_consistent(crashd, POOL)
