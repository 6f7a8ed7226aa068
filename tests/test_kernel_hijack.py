"""Issue 10, attack 3: a tenant's kernel tries to make the daemon talk to another tenant's
kernel, by replacing its own sockets and connection file with symlinks, live and across a
daemon restart, and by forging messages. Two real tenants; the victim's state is checked.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest
import requests
import websocket
from conftest import Daemon
from helpers import host_pids
from test_kernel_fixtures import (
    execute,
    kernel_daemon_of,
    recv,
    start_kernel,
    stdout_of,
    ws_connect,
)

pytestmark = pytest.mark.root


@pytest.fixture
def hd() -> Iterator[Daemon]:
    with kernel_daemon_of("h") as d:
        yield d


def sandbox_of(d: Daemon, kernel_id: str) -> dict:
    sid = d.admin.call("GET", f"/api/kernels/{kernel_id}")["sandbox"]
    return d.admin.call("GET", f"/api/sandboxes/{sid}")


def drain(ws: websocket.WebSocket, seconds: float) -> str:
    """Everything a client receives for ``seconds`` (as text, for substring checks)."""
    seen = []
    ws.settimeout(0.2)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            seen.append(str(recv(ws, False)))
        except websocket.WebSocketTimeoutException:
            continue
        except websocket.WebSocketConnectionClosedException:
            break
    ws.settimeout(60)
    return "\n".join(seen)


HIJACK = """
import os
victim = {victim!r}
for n in (1, 2, 3, 4):
    mine = f"/run/kernel/kernel-ipc-{{n}}"
    os.rename(mine, mine + ".orig")
    os.symlink(f"{{victim}}/run/kernel/kernel-ipc-{{n}}", mine)
os.rename("/run/kernel/connection.json", "/run/kernel/connection.orig")
os.symlink(f"{{victim}}/run/kernel/connection.json", "/run/kernel/connection.json")
print("planted")
"""


def test_symlinked_sockets_never_reach_another_tenant(hd: Daemon) -> None:
    alice, bob = hd.user("alice"), hd.user("bob")
    ka, kb = start_kernel(alice), start_kernel(bob)
    alice_init, _ = host_pids(sandbox_of(hd, ka["id"]))
    victim_root = f"/proc/{alice_init}/root"  # the best path an attacker could aim at
    wa, wb = ws_connect(hd, alice, ka["id"]), ws_connect(hd, bob, kb["id"])
    try:
        reply, iopub = execute(wb, HIJACK.format(victim=victim_root))
        assert reply["content"]["status"] == "ok" and "planted" in stdout_of(iopub)
        # a new client of bob's: its sockets go to the inodes checked at start, not the links
        wb2 = ws_connect(hd, bob, kb["id"])
        reply, iopub = execute(wb2, "open('/home/jovyan/pwned', 'w').write('x'); print('BOB')")
        assert "BOB" in stdout_of(iopub)
        wb2.close()
        reply, iopub = execute(wa, "print('ALICE-SECRET-1')")
        assert "ALICE-SECRET-1" in stdout_of(iopub)
        assert "ALICE-SECRET-1" not in drain(wb, 1.0)
        assert not os.path.exists(f"{victim_root}/home/jovyan/pwned")
    finally:
        wa.close()
        wb.close()

    # after a restart the daemon reads nothing back from bob's side: his kernel is unreachable
    hd.kill(signal.SIGKILL)
    hd.start()
    assert alice.call("GET", f"/api/kernels/{ka['id']}")["execution_state"] != "dead"
    bob_model = bob.call("GET", f"/api/kernels/{kb['id']}")
    assert bob_model["execution_state"] == "dead" and "unreachable" in bob_model["reason"]
    wa, wb = ws_connect(hd, alice, ka["id"]), ws_connect(hd, bob, kb["id"])
    try:
        from test_kernel_fixtures import message, send

        send(
            wb,
            message(
                "execute_request",
                {
                    "code": "open('/home/jovyan/pwned2', 'w').write('x')",
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                },
            ),
            False,
        )
        reply, iopub = execute(wa, "import os; print('ALICE-SECRET-2', os.path.exists('pwned2'))")
        assert "ALICE-SECRET-2 False" in stdout_of(iopub)
        assert "ALICE-SECRET-2" not in drain(wb, 1.0)
        assert not os.path.exists(f"{victim_root}/home/jovyan/pwned2")
        assert not os.path.exists(f"{victim_root}/home/jovyan/pwned")
    finally:
        wa.close()
        wb.close()
    bob.call("DELETE", f"/api/kernels/{kb['id']}", expect=204)
    alice.call("DELETE", f"/api/kernels/{ka['id']}", expect=204)


FORGE = """
from jupyter_client.session import Session
k = get_ipython().kernel
forged = Session(key=b"not-this-kernels-key", username="x")
forged.send(k.iopub_socket, "stream", {"name": "stdout", "text": "FORG" + "ED-OUTPUT"})
print("sent")
"""


def test_messages_signed_with_another_key_are_dropped_and_counted(hd: Daemon) -> None:
    bob = hd.user("bob")
    kb = start_kernel(bob)
    ws = ws_connect(hd, bob, kb["id"])

    def dropped() -> float:
        text = requests.get(
            hd.url + "/metrics", headers={"Authorization": f"token {hd.admin.token}"}, timeout=10
        ).text
        for line in text.splitlines():
            if line.startswith('sandboxd_kernel_messages_dropped_total{reason="bad-signature"}'):
                return float(line.split()[-1])
        raise AssertionError("no dropped-messages counter")

    before = dropped()
    try:
        reply, iopub = execute(ws, FORGE)
        assert reply["content"]["status"] == "ok" and "sent" in stdout_of(iopub)
        assert "FORGED-OUTPUT" not in str(iopub) + drain(ws, 1.0)
    finally:
        ws.close()
    assert dropped() >= before + 1
    bob.call("DELETE", f"/api/kernels/{kb['id']}", expect=204)


def test_key_is_never_read_back_from_the_sandbox(hd: Daemon) -> None:
    """The kernel rewrites its connection file with another key; after a restart the daemon
    still talks to it with the key it keeps (the kernel process never re-reads the file)."""
    alice = hd.user("alice")
    ka = start_kernel(alice)
    ws = ws_connect(hd, alice, ka["id"])
    try:
        reply, _ = execute(
            ws,
            "import json; p='/run/kernel/connection.json'; c=json.load(open(p)); "
            "c['key']='0'*64; json.dump(c, open(p,'w')); x = 7",
        )
        assert reply["content"]["status"] == "ok"
    finally:
        ws.close()
    hd.kill(signal.SIGKILL)
    hd.start()
    ws = ws_connect(hd, alice, ka["id"])
    try:
        reply, iopub = execute(ws, "print(x * 6)")
        assert stdout_of(iopub).strip() == "42"
    finally:
        ws.close()
    alice.call("DELETE", f"/api/kernels/{ka['id']}", expect=204)
