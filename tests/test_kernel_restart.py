"""A kernel survives a daemon killed with SIGKILL: same id, same process, its state kept."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
from conftest import Daemon
from test_kernel_fixtures import execute, kernel_daemon_of, start_kernel, stdout_of, ws_connect

pytestmark = pytest.mark.root


@pytest.fixture
def kernel_daemon() -> Iterator[Daemon]:
    with kernel_daemon_of("q") as d:
        yield d


def test_kernel_is_readopted_after_sigkill(kernel_daemon: Daemon) -> None:
    alice = kernel_daemon.user("alice")
    kernel = start_kernel(alice)
    ws = ws_connect(kernel_daemon, alice, kernel["id"])
    reply, _ = execute(ws, "remembered = 41 + 1")
    assert reply["content"]["status"] == "ok"
    ws.close()
    sandbox = alice.call("GET", f"/api/kernels/{kernel['id']}")["sandbox"]
    pid = alice.call("GET", f"/api/sandboxes/{sandbox}")["pid"]

    kernel_daemon.kill(signal.SIGKILL)
    kernel_daemon.start()

    model = alice.call("GET", f"/api/kernels/{kernel['id']}")
    assert model["id"] == kernel["id"] and model["execution_state"] != "dead"
    assert alice.call("GET", f"/api/sandboxes/{sandbox}")["pid"] == pid
    assert [k["id"] for k in alice.call("GET", "/api/kernels")] == [kernel["id"]]
    ws = ws_connect(kernel_daemon, alice, kernel["id"])
    try:
        reply, iopub = execute(ws, "print(remembered)")
        assert reply["content"]["status"] == "ok"
        assert stdout_of(iopub).strip() == "42"  # the same process: its state survived
    finally:
        ws.close()
    alice.call("DELETE", f"/api/kernels/{kernel['id']}", expect=204)
    assert alice.request("GET", f"/api/sandboxes/{sandbox}").status_code == 404


def test_readopted_kernel_keeps_its_creator_and_limits(kernel_daemon: Daemon) -> None:
    """A Hub's service token that started alice's kernel still manages it after a restart,
    and the kernel's limits (KERNEL_MEMORY) survive into a restart of the kernel."""
    from conftest import Client

    hub_body = kernel_daemon.admin.call("POST", "/api/users", json={"name": "hub", "service": True})
    hub = Client(kernel_daemon.url, hub_body["token"])
    alice = kernel_daemon.user("alice")
    kernel = start_kernel(hub, KERNEL_USERNAME="alice", KERNEL_MEMORY="300m")
    sandbox = hub.call("GET", f"/api/kernels/{kernel['id']}")["sandbox"]
    assert alice.call("GET", f"/api/sandboxes/{sandbox}")["limits"]["memory"] == 300 << 20

    kernel_daemon.kill(signal.SIGKILL)
    kernel_daemon.start()

    assert hub.call("GET", f"/api/kernels/{kernel['id']}")["user"] == "alice"
    assert kernel["id"] in [k["id"] for k in hub.call("GET", "/api/kernels")]
    restarted = hub.call("POST", f"/api/kernels/{kernel['id']}/restart")
    assert restarted["sandbox"] != sandbox
    assert alice.call("GET", f"/api/sandboxes/{restarted['sandbox']}")["limits"]["memory"] == (
        300 << 20
    )
    hub.call("DELETE", f"/api/kernels/{kernel['id']}", expect=204)
