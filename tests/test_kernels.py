"""The kernels API straight from clients: framing, identity, env rules, quotas, culling, OOM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket
from conftest import Client, Daemon
from test_kernel_fixtures import (  # noqa: F401
    execute,
    kd,
    message,
    recv,
    send,
    start_kernel,
    stdout_of,
    wait_for,
    ws_connect,
)

UUID = r"^\w{8}-\w{4}-\w{4}-\w{4}-\w{12}$"


@pytest.fixture(scope="module")
def alice_kernel(kd: Daemon) -> Iterator[dict[str, Any]]:  # noqa: F811
    """One kernel shared by the tests below; started with env a kernel should and should not get."""
    alice = kd.user("alice")
    kernel = start_kernel(
        alice,
        KERNEL_USERNAME="carol",
        KERNEL_FOO="bar",
        ALLOWED_VAR="yes",
        OTHER_VAR="dropped",
        KERNEL_WORKING_DIR="/tmp",
    )
    yield kernel
    alice.request("DELETE", f"/api/kernels/{kernel['id']}")


def test_model_and_environment(kd: Daemon, alice_kernel: dict[str, Any]) -> None:  # noqa: F811
    import re

    alice = kd.user("alice")
    from helpers import wait_until

    # the kernel_info exchange at start may still be reporting "busy" for a moment
    model = wait_until(
        lambda: (
            (m := alice.call("GET", f"/api/kernels/{alice_kernel['id']}"))
            and m["execution_state"] == "idle"
            and m
        ),
        timeout=30,
    )
    assert re.match(UUID, model["id"])
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", model["last_activity"])
    assert model["connections"] == 0
    assert model["user"] == "alice"  # a user token acts as itself, whatever KERNEL_USERNAME says
    ws = ws_connect(kd, alice, model["id"])
    try:
        assert alice.call("GET", f"/api/kernels/{model['id']}")["connections"] == 1
        _, iopub = execute(
            ws,
            "import os\nprint(os.environ.get('KERNEL_FOO'), "
            "os.environ.get('ALLOWED_VAR'), os.environ.get('OTHER_VAR'), "
            "os.getcwd())",
        )
    finally:
        ws.close()
    assert stdout_of(iopub).split() == ["bar", "yes", "None", "/home/jovyan"]


@pytest.mark.parametrize("v1", [True, False], ids=["v1", "legacy"])
def test_binary_buffers_round_trip(
    kd: Daemon,  # noqa: F811
    alice_kernel: dict[str, Any],  # noqa: F811
    v1: bool,
) -> None:
    alice = kd.user("alice")
    ws = ws_connect(kd, alice, alice_kernel["id"], v1=v1)
    try:
        assert ws.subprotocol == ("v1.kernel.websocket.jupyter.org" if v1 else None)
        reply, _ = execute(
            ws,
            (
                "def _echo(comm, open_msg):\n"
                "    @comm.on_msg\n"
                "    def _(msg):\n"
                "        comm.send({'n': len(msg['buffers'])}, buffers=msg['buffers'])\n"
                "get_ipython().kernel.comm_manager.register_target('echo', _echo)\n"
            ),
            v1,
        )
        assert reply["content"]["status"] == "ok"
        comm_id = os.urandom(8).hex()
        send(ws, message("comm_open", {"comm_id": comm_id, "target_name": "echo", "data": {}}), v1)
        payload = [b"\x00\x01\x02binary\xff", os.urandom(3000)]
        msg = message("comm_msg", {"comm_id": comm_id, "data": {}})
        send(ws, msg, v1, payload)
        while True:
            got = recv(ws, v1)
            if (
                got["header"]["msg_type"] == "comm_msg"
                and got["parent_header"].get("msg_id") == msg["header"]["msg_id"]
            ):
                break
        assert got["content"]["data"] == {"n": 2}
        assert [bytes(b) for b in got["buffers"]] == payload
    finally:
        ws.close()


def test_other_users_kernel_is_invisible(kd: Daemon, alice_kernel: dict[str, Any]) -> None:  # noqa: F811
    bob = kd.user("bob")
    kid = alice_kernel["id"]
    assert kid not in [k["id"] for k in bob.call("GET", "/api/kernels")]
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/interrupt"), ("POST", "/restart")):
        resp = bob.request(method, f"/api/kernels/{kid}{path}", json={})
        assert resp.status_code == 404, (method, path, resp.status_code)
        assert resp.json()["reason"] == "unknown-kernel"
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        ws_connect(kd, bob, kid)
    assert err.value.status_code == 404
    # the admin sees every kernel; alice's kernel is still fine
    assert kid in [k["id"] for k in kd.admin.call("GET", "/api/kernels")]
    assert kd.user("alice").call("GET", f"/api/kernels/{kid}")["execution_state"] != "dead"


def test_service_token_acts_for_kernel_username(kd: Daemon) -> None:  # noqa: F811
    hub_body = kd.admin.call("POST", "/api/users", json={"name": "hub", "service": True})
    hub = Client(kd.url, hub_body["token"])
    carol = kd.user("carol")
    work = carol.call("PUT", "/api/users/carol/volumes/work")
    os.makedirs(os.path.join(work["host"], "sub"), exist_ok=True)
    os.chown(os.path.join(work["host"], "sub"), work["uid"], work["uid"])
    kernel = start_kernel(
        hub, "python3-vol", KERNEL_USERNAME="carol", KERNEL_WORKING_DIR="/home/jovyan/work/sub"
    )
    try:
        assert kernel["user"] == "carol"
        assert kernel["id"] in [k["id"] for k in carol.call("GET", "/api/kernels")]
        assert kernel["id"] in [k["id"] for k in hub.call("GET", "/api/kernels")]
        assert kernel["id"] not in [k["id"] for k in kd.user("alice").call("GET", "/api/kernels")]
        ws = ws_connect(kd, hub, kernel["id"])
        try:
            _, iopub = execute(ws, "import os; print(os.getcwd())")
        finally:
            ws.close()
        assert stdout_of(iopub).strip() == "/home/jovyan/work/sub"
    finally:
        hub.call("DELETE", f"/api/kernels/{kernel['id']}", expect=204)


def test_bad_inputs(kd: Daemon) -> None:  # noqa: F811
    dave = kd.user("dave")
    cases: list[tuple[Any, int, str]] = [
        ({"name": "no-such-spec"}, 404, "unknown-kernelspec"),
        ([1, 2], 400, "bad-body"),
        ({"name": 7}, 400, "bad-body"),
        ({"env": "KERNEL_X=1"}, 400, "bad-env"),
        ({"env": {"KERNEL_X": "$(reboot)"}}, 400, "bad-env"),
        ({"env": {"KERNEL_X": "`id`"}}, 400, "bad-env"),
        ({"env": {"KERNEL_X": "a\nb"}}, 400, "bad-env"),
        ({"env": {"KERNEL_X": "x" * 4097}}, 400, "bad-env"),
        ({"env": {"KERNEL_X": 5}}, 400, "bad-env"),
        ({"env": {"KERNEL_MEMORY": "64g"}}, 429, "profile-limit"),
    ]
    for body, status, reason in cases:
        resp = dave.request("POST", "/api/kernels", json=body)
        assert resp.status_code == status, (body, resp.status_code, resp.text)
        assert resp.json()["reason"] == reason, (body, resp.json())
        assert set(resp.json()) == {"reason", "message"}
    resp = dave.request(
        "POST", "/api/kernels", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status_code == 400 and resp.json()["reason"] == "malformed-json"
    unknown = "00000000-0000-4000-8000-000000000000"
    for method, path in (("GET", ""), ("DELETE", ""), ("POST", "/interrupt"), ("POST", "/restart")):
        assert dave.request(method, f"/api/kernels/{unknown}{path}").status_code == 404
    for path in ("/api/kernels", "/api/kernelspecs", f"/api/kernels/{unknown}"):
        resp = requests.get(kd.url + path, timeout=10)
        assert resp.status_code == 401 and resp.json()["reason"] == "no-token"
        resp = requests.get(kd.url + path, headers={"Authorization": "token nope"}, timeout=10)
        assert resp.status_code == 401
    with pytest.raises(websocket.WebSocketBadStatusException) as err:
        websocket.create_connection(
            kd.url.replace("http", "ws") + f"/api/kernels/{unknown}/channels"
        )
    assert err.value.status_code == 401
    assert dave.request("GET", "/api/kernelspecs/nope").status_code == 404
    assert dave.request("GET", "/kernelspecs/python3/../kernel.json").status_code == 404
    assert dave.call("GET", "/api/sandboxes?all=1") == []  # nothing half-made


def test_kernel_quota_and_live_change(kd: Daemon, alice_kernel: dict[str, Any]) -> None:  # noqa: F811
    alice = kd.user("alice")
    running = len(alice.call("GET", "/api/kernels"))
    kd.admin.call("PUT", "/api/users/alice/quota", json={"max_kernels": running})
    try:
        resp = alice.request("POST", "/api/kernels", json={"name": "python3"})
        assert resp.status_code == 429
        assert resp.json()["reason"] == "max-kernels"
        assert f"{running} of {running} kernels" in resp.json()["message"]
        quota = alice.call("GET", "/api/users/alice/quota")
        assert quota["usage"]["kernels"] == running and quota["source"] == "api"
    finally:
        kd.admin.call("DELETE", "/api/users/alice/quota")
    assert alice.call("GET", "/api/users/alice/quota")["quota"]["max_kernels"] == 6


def test_config_reload_and_bad_reload(kd: Daemon) -> None:  # noqa: F811
    with open(kd.config_path) as fh:
        good = fh.read()
    erin = kd.user("erin")
    assert erin.call("GET", "/api/users/erin/quota")["quota"]["max_kernels"] == 6

    def reload(text: str) -> None:
        with open(kd.config_path, "w") as fh:
            fh.write(text)
        assert kd.proc is not None
        kd.proc.send_signal(signal.SIGHUP)

    try:
        reload(good.replace("max_kernels = 6", "max_kernels = 0"))
        wait_for(lambda: erin.call("GET", "/api/users/erin/quota")["quota"]["max_kernels"] == 0)
        resp = erin.request("POST", "/api/kernels", json={})
        assert resp.status_code == 429 and resp.json()["reason"] == "max-kernels"
        reload(good.replace("max_kernels = 6", "max_kernels = -3"))  # invalid: refused
        wait_for(lambda: "quotas.default.max_kernels" in open(kd.log_path).read())
        assert erin.call("GET", "/api/users/erin/quota")["quota"]["max_kernels"] == 0
        reload("this is [not toml")
        time.sleep(0.5)
        assert erin.call("GET", "/api/users/erin/quota")["quota"]["max_kernels"] == 0
    finally:
        reload(good)
        wait_for(lambda: erin.call("GET", "/api/users/erin/quota")["quota"]["max_kernels"] == 6)


def test_culling(kd: Daemon) -> None:  # noqa: F811
    """Idle kernels go (and answer 404); a busy one stays unless its profile culls busy ones."""
    frank = kd.user("frank")
    idle = start_kernel(frank, "python3-cull")
    busy_kept = start_kernel(frank, "python3-cull")
    busy_culled = start_kernel(frank, "python3-cullbusy")
    sockets = []
    try:
        for kernel in (busy_kept, busy_culled):
            ws = ws_connect(kd, frank, kernel["id"])
            sockets.append(ws)
            send(
                ws,
                message(
                    "execute_request",
                    {
                        "code": "import time; time.sleep(600)",
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                    },
                ),
                False,
            )
            wait_for(
                lambda k=kernel: (
                    frank.call("GET", f"/api/kernels/{k['id']}")["execution_state"] == "busy"
                )
            )
        for kernel in (idle, busy_culled):
            wait_for(
                lambda k=kernel: frank.request("GET", f"/api/kernels/{k['id']}").status_code == 404,
                timeout=60,
            )
        ids = [k["id"] for k in frank.call("GET", "/api/kernels")]
        assert ids == [busy_kept["id"]]
        model = frank.call("GET", f"/api/kernels/{busy_kept['id']}")
        assert model["execution_state"] == "busy"
        # a culled kernel answers 404 at once; its sandbox is removed right after
        wait_for(
            lambda: (
                [s["labels"]["kernel_id"] for s in frank.call("GET", "/api/sandboxes")]
                == [busy_kept["id"]]
            )
        )
    finally:
        for ws in sockets:
            ws.close()
        for kernel in (idle, busy_kept, busy_culled):
            frank.request("DELETE", f"/api/kernels/{kernel['id']}")


def test_oom_marks_kernel_dead_and_restart_revives(
    kd: Daemon,  # noqa: F811
    alice_kernel: dict[str, Any],
) -> None:
    alice = kd.user("alice")
    kernel = start_kernel(alice, "python3-small")
    kid = kernel["id"]
    try:
        ws = ws_connect(kd, alice, kid)
        try:
            send(
                ws,
                message(
                    "execute_request",
                    {
                        "code": "x = b'x' * (1 << 30)",
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                    },
                ),
                False,
            )
            while True:  # the client connected by WebSocket sees the kernel die
                got = recv(ws, False)
                if (
                    got["header"]["msg_type"] == "status"
                    and got["content"]["execution_state"] == "dead"
                ):
                    break
            model = alice.call("GET", f"/api/kernels/{kid}")
            assert model["execution_state"] == "dead"
            assert "memory limit" in model["reason"] and "OOM" in model["reason"]
            # another kernel of the same user and the daemon carry on
            other = ws_connect(kd, alice, alice_kernel["id"])
            try:
                _, iopub = execute(other, "print(6 * 7)")
            finally:
                other.close()
            assert stdout_of(iopub).strip() == "42"
            # restart brings it back, and the same WebSocket works again
            assert alice.call("POST", f"/api/kernels/{kid}/restart", json={})["id"] == kid
            reply, iopub = execute(ws, "print('back')")
            assert stdout_of(iopub).strip() == "back"
            assert "reason" not in alice.call("GET", f"/api/kernels/{kid}")
        finally:
            ws.close()
    finally:
        alice.call("DELETE", f"/api/kernels/{kid}", expect=204)


def test_cli_kernel_commands(kd: Daemon, alice_kernel: dict[str, Any]) -> None:  # noqa: F811
    from conftest import SANDBOXCTL

    env = kd.env(kd.user("alice").token)
    out = subprocess.run(
        [SANDBOXCTL, "kernel", "ls"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert alice_kernel["id"] in out
    out = subprocess.run(
        [SANDBOXCTL, "kernelspec", "ls"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "python3-cull" in out
