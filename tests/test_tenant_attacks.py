"""Issue 11's tenant attacks, each as a test: none stalls the daemon for another user, each
bound gives a clear refusal, and nothing is left behind.

One daemon (``<prefix>t``) with small bounds, so each is reached quickly: 3 WebSockets per
kernel and 5 per user, a 128 KiB stdin buffer per attach, 3 exited sandboxes kept per user.
Timing is never asserted beyond "answers at all within a generous timeout" (a frozen loop does
not answer for minutes); the figures are in ``benchmarks/``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import websocket
from conftest import PREFIX, SANDBOXD, Client, Daemon, make_daemon, other_instance, stop_daemon
from helpers import wait_until
from resilience import assert_consistent, rss_bytes
from test_kernel_fixtures import execute, start_kernel, stdout_of, ws_connect

INST = other_instance("t")
STDIN_BUFFER = 131072
LOG_MAX = 1048576
PER_KERNEL, PER_USER = 3, 5
KEEP_EXITED = 3
PROMPT = 10.0  # seconds: "answers" (a loop frozen by a tenant does not answer for minutes)


def config(ksdir: str) -> str:
    return f"""
stop_grace_seconds = 1
log_max_bytes = {LOG_MAX}
max_exited_per_user = {KEEP_EXITED}
max_websockets_per_user = {PER_USER}
max_websockets_per_kernel = {PER_KERNEL}
attach_stdin_buffer = {STDIN_BUFFER}
kernel_run_size = "4m"
kernelspec_dirs = ["{ksdir}"]

[profiles.default]
cpus = 1.0
memory = "512m"
pids = 256
disk = "256m"
network = "none"
max_memory = "2g"

[quotas.default]
max_sandboxes = 12
max_kernels = 3
memory = "16g"
cpus = 16.0
"""


def write_kernelspec(ksdir: str, name: str, argv: list[str]) -> None:
    os.makedirs(os.path.join(ksdir, name))
    with open(os.path.join(ksdir, name, "kernel.json"), "w") as fh:
        json.dump({"argv": argv, "display_name": name, "language": "python"}, fh)


@pytest.fixture(scope="module")
def td() -> Iterator[Daemon]:
    ksdir = tempfile.mkdtemp(prefix=f"{PREFIX}-tks-")
    write_kernelspec(ksdir, "no-such-binary", ["/nonexistent/kernel", "-f", "{connection_file}"])
    write_kernelspec(ksdir, "exits-at-once", ["python3", "-c", "raise SystemExit(3)"])
    d = make_daemon(INST, config(ksdir))
    d.start()
    yield d
    stop_daemon(d)
    subprocess.run(
        [SANDBOXD, "cleanup", "--instance", d.instance, "--state-dir", d.state_dir, "--purge"],
        capture_output=True,
    )
    shutil.rmtree(ksdir, ignore_errors=True)


def answers(client: Client, path: str = "/api/status") -> dict[str, Any]:
    """``path`` answers 200 within PROMPT seconds (raises otherwise)."""
    resp = client.session.get(
        client.url + path, headers={"Authorization": f"token {client.token}"}, timeout=PROMPT
    )
    assert resp.status_code == 200, resp.text
    return resp.json()


def metric(d: Daemon, name: str, labels: str = "") -> float:
    """One sample of the daemon's /metrics (0 if absent)."""
    text = d.admin.request("GET", "/metrics").text
    wanted = name + ("{" + labels + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0


def remove_all(client: Client) -> None:
    for kernel in client.call("GET", "/api/kernels"):
        client.request("DELETE", f"/api/kernels/{kernel['id']}")
    for sb in client.call("GET", "/api/sandboxes?all=1"):
        client.request("DELETE", f"/api/sandboxes/{sb['id']}?force=1")


def ws_url(d: Daemon, path: str) -> str:
    return d.url.replace("http", "ws") + path


def close_frame(ws: websocket.WebSocket, timeout: float = 30) -> tuple[int, str]:
    """Read until the server's close frame; (code, reason)."""
    ws.settimeout(timeout)
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
            return code, data[2:].decode(errors="replace")


# -- freeze by stdin ------------------------------------------------------------------------


def test_stdin_flood_closes_the_attach_and_never_blocks_others(td: Daemon) -> None:
    """A sandbox that never reads its stdin, fed 200 KB and more through an attach: another
    user's requests keep answering, and the attach closes with a reason once the buffer is full."""
    mallory, alice = td.user("mallory"), td.user("alice")
    refusals = metric(td, "sandboxd_resource_refusals_total", 'reason="stdin-full"')
    sb = mallory.run(["sleep", "600"], stdin=True)
    ws = websocket.create_connection(
        ws_url(td, f"/api/sandboxes/{sb['id']}/attach"),
        header=[f"Authorization: token {mallory.token}"],
        timeout=30,
    )
    sent, closed = 0, False
    try:
        chunk = b"\x00" + b"x" * 16384
        while sent < 4 * 1024 * 1024 and not closed:
            try:
                ws.send_binary(chunk)
                sent += len(chunk) - 1
            except (websocket.WebSocketConnectionClosedException, OSError):
                closed = True
            if sent % (64 * 1024) == 0:
                answers(alice)  # another user, during the flood
        assert sent >= 200 * 1000, sent
        code, reason = close_frame(ws)
        assert code == 1009 and "stdin buffer full" in reason, (code, reason)
    finally:
        ws.close()
    answers(alice)
    assert mallory.call("GET", f"/api/sandboxes/{sb['id']}")["state"] == "running"
    assert metric(td, "sandboxd_resource_refusals_total", 'reason="stdin-full"') == refusals + 1
    mallory.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1", expect=204)


# -- WebSockets -----------------------------------------------------------------------------


def upgrade(d: Daemon, client: Client, path: str) -> requests.Response:
    """A WebSocket upgrade request, answered without upgrading when refused."""
    return requests.get(
        d.url + path,
        headers={
            "Authorization": f"token {client.token}",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
        timeout=PROMPT,
        stream=True,
    )


def test_websockets_beyond_the_limits_are_429_before_the_upgrade(td: Daemon) -> None:
    mallory, bob = td.user("mallory"), td.user("bob")
    refusals = metric(td, "sandboxd_resource_refusals_total", 'reason="max-websockets"')
    first, second = start_kernel(mallory), start_kernel(mallory)
    opened: list[websocket.WebSocket] = []
    try:
        for _ in range(PER_KERNEL):
            opened.append(ws_connect(td, mallory, first["id"]))
        resp = upgrade(td, mallory, f"/api/kernels/{first['id']}/channels")
        assert resp.status_code == 429 and resp.json()["reason"] == "max-websockets", resp.text
        for _ in range(PER_USER - PER_KERNEL):
            opened.append(ws_connect(td, mallory, second["id"]))
        resp = upgrade(td, mallory, f"/api/kernels/{second['id']}/channels")
        assert resp.status_code == 429 and resp.json()["reason"] == "max-websockets", resp.text
        sb = mallory.run(["sleep", "60"])
        resp = upgrade(td, mallory, f"/api/sandboxes/{sb['id']}/attach")  # attaches count too
        assert resp.status_code == 429 and resp.json()["reason"] == "max-websockets", resp.text
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            ws_connect(td, mallory, second["id"])
        assert refused.value.status_code == 429
        # every open socket still works, and another user starts and uses a kernel
        reply, _ = execute(opened[0], "1 + 1")
        assert reply["content"]["status"] == "ok"
        theirs = start_kernel(bob)
        ws = ws_connect(td, bob, theirs["id"])
        try:
            reply, iopub = execute(ws, "print('bob ok')")
            assert stdout_of(iopub) == "bob ok\n"
        finally:
            ws.close()
        assert (
            metric(td, "sandboxd_resource_refusals_total", 'reason="max-websockets"')
            == refusals + 4
        )
    finally:
        for ws in opened:
            ws.close()
    # closed sockets give their slots back

    def reopens() -> bool:
        try:
            ws_connect(td, mallory, first["id"]).close()
        except websocket.WebSocketBadStatusException:
            return False
        return True

    wait_until(reopens, timeout=30, interval=0.2)
    remove_all(mallory)
    remove_all(bob)


def test_plain_requests_to_websocket_routes_take_no_slot(td: Daemon) -> None:
    """A GET without an upgrade (400) or with a bad handshake must not hold a WebSocket slot:
    more of them than the per-user limit, then a real WebSocket still opens."""
    mallory = td.user("mallory")
    kernel = start_kernel(mallory)
    try:
        for _ in range(PER_USER + 2):
            resp = mallory.request("GET", f"/api/kernels/{kernel['id']}/channels")
            assert resp.status_code == 400
            bad = requests.get(
                td.url + f"/api/kernels/{kernel['id']}/channels",
                headers={
                    "Authorization": f"token {mallory.token}",
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "99",
                },
                timeout=PROMPT,
            )
            assert bad.status_code >= 400
        ws = ws_connect(td, mallory, kernel["id"])
        reply, _ = execute(ws, "2 + 2")
        assert reply["content"]["status"] == "ok"
        ws.close()
    finally:
        remove_all(mallory)


# -- /run/kernel ---------------------------------------------------------------------------

FILL_RUN_KERNEL = """
import os
written = 0
try:
    with open("/run/kernel/fill", "wb") as fh:
        for _ in range(64):
            fh.write(b"x" * (1 << 20))
            fh.flush()
            written += 1
except OSError as exc:
    print("stopped", exc.errno, written)
else:
    print("wrote", written)
os.remove("/run/kernel/fill")
st = os.statvfs("/run/kernel")
print("size", st.f_blocks * st.f_frsize)
"""


def test_run_kernel_is_a_small_capped_tmpfs(td: Daemon) -> None:
    """A kernel filling /run/kernel (its connection file and sockets live there) hits the
    tmpfs's cap (kernel_run_size = 4m here), not the host's /run; the kernel keeps working."""
    mallory = td.user("mallory")
    kernel = start_kernel(mallory)
    ws = ws_connect(td, mallory, kernel["id"])
    try:
        reply, iopub = execute(ws, FILL_RUN_KERNEL)
        assert reply["content"]["status"] == "ok", reply["content"]
        lines = stdout_of(iopub).splitlines()
        assert lines[0].startswith("stopped 28 "), lines  # ENOSPC
        assert int(lines[0].split()[2]) <= 4, lines
        assert int(lines[1].split()[1]) <= 4 << 20, lines
        reply, iopub = execute(ws, "print('still here')")
        assert stdout_of(iopub) == "still here\n"
    finally:
        ws.close()
        remove_all(mallory)


# -- log flood ------------------------------------------------------------------------------


def kept_log_bytes(d: Daemon, sid: str) -> int:
    base = os.path.join(d.state_dir, "logs", f"{sid}.log")
    return sum(os.path.getsize(p) for p in (base, base + ".1") if os.path.exists(p))


def test_log_flood_is_capped_at_all_times(td: Daemon) -> None:
    mallory, alice = td.user("mallory"), td.user("alice")
    pid = td.proc.pid  # type: ignore[union-attr]
    rss_before = rss_bytes(pid)
    sb = mallory.run(["/bin/sh", "-c", "head -c 800000000 /dev/zero"])
    sizes, rss_peak = [], rss_before
    try:
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            sizes.append(kept_log_bytes(td, sb["id"]))
            rss_peak = max(rss_peak, rss_bytes(pid))
            answers(alice)
            time.sleep(0.1)
        resp = mallory.session.get(
            mallory.url + f"/api/sandboxes/{sb['id']}/logs",
            headers={"Authorization": f"token {mallory.token}"},
            timeout=PROMPT,
        )
        assert resp.status_code == 200
        assert len(resp.content) <= 6 * LOG_MAX + 4096  # a NUL is 6 bytes of JSON
        assert resp.json()["truncated"] is True
        assert max(sizes) <= LOG_MAX and max(sizes) > LOG_MAX // 4, max(sizes)
        assert mallory.call("GET", f"/api/sandboxes/{sb['id']}")["state"] == "running"
        mallory.call("POST", f"/api/sandboxes/{sb['id']}/stop", json={"timeout": 0})
        assert kept_log_bytes(td, sb["id"]) <= LOG_MAX  # after the exit too
        tail = mallory.call("GET", f"/api/sandboxes/{sb['id']}/logs?tail=3")
        assert len(tail["stdout"]) <= LOG_MAX
        rss_peak = max(rss_peak, rss_bytes(pid))
    finally:
        mallory.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1", expect=204)
    growth = rss_peak - rss_before
    print(f"\nlog flood: kept log at most {max(sizes)} B; daemon RSS +{growth / 2**20:.1f} MiB")
    assert growth <= 64 << 20, f"the daemon's RSS grew by {growth / 2**20:.1f} MiB"


# -- large bodies ---------------------------------------------------------------------------


def raw_request(d: Daemon, head: str, body_chunks: list[bytes] = ()) -> tuple[int, bytes]:
    """Send ``head`` (and then the chunks, while the server takes them); (status, response)."""
    head = head.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1)
    host, port = d.url.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=PROMPT) as conn:
        conn.sendall(head.encode())
        try:
            for chunk in body_chunks:
                conn.sendall(chunk)
        except OSError:
            pass  # the server cut us off
        data = b""
        try:
            while got := conn.recv(65536):  # to EOF: every request says Connection: close
                data += got
        except OSError:
            pass
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


@pytest.mark.parametrize("token", ["none", "bad", "good"])
def test_large_body_is_413_before_it_is_read(td: Daemon, token: str) -> None:
    """Only the headers are sent: the 413 comes without the body, before any authentication."""
    before = metric(td, "sandboxd_resource_refusals_total", 'reason="body-too-large"')
    auth = {"none": "", "bad": "Authorization: token nope\r\n"}.get(
        token, f"Authorization: token {td.user('mallory').token}\r\n"
    )
    head = (
        f"POST /api/sandboxes HTTP/1.1\r\nHost: x\r\n{auth}"
        "Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
    )
    status, data = raw_request(td, head)
    assert status == 413, data[:300]
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["reason"] == "body-too-large", body
    assert metric(td, "sandboxd_resource_refusals_total", 'reason="body-too-large"') == before + 1


def test_chunked_body_over_the_limit_is_cut(td: Daemon) -> None:
    """A chunked body has no length to check up front: reading stops at the limit (400, the
    connection closes); the same request under the limit is served."""
    mallory = td.user("mallory")
    head = (
        f"POST /api/sandboxes HTTP/1.1\r\nHost: x\r\nAuthorization: token {mallory.token}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b" " * 65536  # JSON whitespace: a valid body once the command follows
    chunk = b"%x\r\n" % len(piece) + piece + b"\r\n"
    command = b'{"command": ["true"]}'
    end = b"%x\r\n" % len(command) + command + b"\r\n0\r\n\r\n"
    status, data = raw_request(td, head, [chunk] * 64 + [end])  # 4 MiB; the limit is 1 MiB
    assert status == 400, data[:300]
    assert mallory.call("GET", "/api/sandboxes?all=1") == []
    status, data = raw_request(td, head, [chunk] * 4 + [end])  # 256 KiB
    assert status == 201, data[:300]
    remove_all(mallory)
    answers(mallory)


# -- exited sandboxes -----------------------------------------------------------------------


def test_retention_keeps_the_newest_exited_sandboxes(td: Daemon) -> None:
    erin = td.user("erin")
    made = []
    for n in range(KEEP_EXITED + 3):
        sb = erin.run(["/bin/sh", "-c", f"echo run {n}"], name=f"r{n}")
        assert erin.wait(sb["id"])["exit_code"] == 0
        made.append(sb["id"])
    wait_until(lambda: len(erin.call("GET", "/api/sandboxes?all=1")) == KEEP_EXITED, timeout=30)
    kept = {s["id"] for s in erin.call("GET", "/api/sandboxes?all=1")}
    assert kept == set(made[-KEEP_EXITED:])  # the oldest went first
    for sid in made[:-KEEP_EXITED]:
        assert erin.request("GET", f"/api/sandboxes/{sid}").status_code == 404
        assert kept_log_bytes(td, sid) == 0
    assert erin.logs(made[-1])["stdout"] == f"run {KEEP_EXITED + 2}\n"
    remove_all(erin)
    assert_consistent(td)


# -- kernel starts that fail ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kernelspec", "status"), [("no-such-binary", 400), ("exits-at-once", 500)]
)
def test_failed_kernel_start_leaves_no_sandbox(td: Daemon, kernelspec: str, status: int) -> None:
    frank = td.user("frank")
    outcome = "refused" if status < 500 else "failure"
    starts = metric(
        td,
        "sandboxd_sandbox_start_duration_seconds_count",
        f'kind="kernel",outcome="{outcome}"',
    )
    failures = metric(td, "sandboxd_kernel_failures_total")
    resp = frank.request("POST", "/api/kernels", json={"name": kernelspec})
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"reason", "message"} and "Traceback" not in resp.text
    assert frank.call("GET", "/api/kernels") == []
    assert frank.call("GET", "/api/sandboxes?all=1") == []
    assert frank.call("GET", "/api/users/frank/quota")["usage"]["kernels"] == 0
    if status < 500:  # the kernelspec's fault: refused, not a failure of the host
        assert metric(td, *_start("kernel", "refused")) == starts + 1
        assert metric(td, "sandboxd_kernel_failures_total") == failures
    else:  # the sandbox started; the kernel in it failed
        assert metric(td, "sandboxd_kernel_failures_total") == failures + 1
    assert_consistent(td)


def _start(kind: str, outcome: str) -> tuple[str, str]:
    return "sandboxd_sandbox_start_duration_seconds_count", f'kind="{kind}",outcome="{outcome}"'


def test_refusals_are_counted_apart_from_failures(td: Daemon) -> None:
    grace = td.user("grace")
    refused, failed = (
        metric(td, *_start("sandbox", "refused")),
        metric(td, *_start("sandbox", "failure")),
    )
    resp = grace.request("POST", "/api/sandboxes", json={"command": ["/no/such/command"]})
    assert resp.status_code == 400 and resp.json()["reason"] == "bad-command", resp.text
    resp = grace.request("POST", "/api/sandboxes", json={"command": ["true"], "memory": "64g"})
    assert resp.status_code == 429, resp.text
    assert metric(td, *_start("sandbox", "refused")) == refused + 2
    assert metric(td, *_start("sandbox", "failure")) == failed
    assert grace.call("GET", "/api/sandboxes?all=1") == []


# -- noisy neighbour ------------------------------------------------------------------------

HOGS = {
    # every process forks forever: the pids limit is all that stops it
    "forkbomb": (
        ["python3", "-c", "import os\nwhile 1:\n try: os.fork()\n except OSError: pass"],
        {"pids": 64},
    ),
    "memory": (
        [
            "/bin/sh",
            "-c",
            "while :; do python3 -c 'a = []\nwhile 1: a.append(bytearray(1 << 20))'; done",
        ],
        {"memory": "64m"},
    ),
    "cpu": (["/bin/sh", "-c", "while :; do :; done"], {"cpus": 0.5}),
    "logs": (["/bin/sh", "-c", "head -c 800000000 /dev/zero"], {}),
}


def test_noisy_neighbour_is_contained(td: Daemon) -> None:
    """bob's fork bomb, memory hog, CPU hog and log flood run at once; each stays inside its
    limit, and alice's kernel and other requests keep answering throughout."""
    alice, bob = td.user("alice"), td.user("bob")
    kernel = start_kernel(alice)
    ws = ws_connect(td, alice, kernel["id"])
    hogs: dict[str, dict[str, Any]] = {}
    try:
        reply, _ = execute(ws, "n = 0")
        assert reply["content"]["status"] == "ok"
        for name, (command, limits) in HOGS.items():
            hogs[name] = bob.run(command, name=f"hog-{name}", **limits)
        deadline = time.monotonic() + 10
        rounds = 0
        while time.monotonic() < deadline:
            reply, _ = execute(ws, "n += 1", timeout=PROMPT * 3)
            assert reply["content"]["status"] == "ok"
            answers(alice)
            rounds += 1
        reply, iopub = execute(ws, "print(n)")
        assert stdout_of(iopub).strip() == str(rounds)
        stats = {n: bob.call("GET", f"/api/sandboxes/{s['id']}/stats") for n, s in hogs.items()}
        assert 32 <= stats["forkbomb"]["pids_current"] <= 64, stats["forkbomb"]
        assert stats["memory"]["memory_usage"] <= 64 << 20, stats["memory"]
        assert stats["memory"]["oom_kills"] > 0, stats["memory"]
        assert stats["cpu"]["cpu_percent"] <= 80, stats["cpu"]  # cpus 0.5: at most ~50 %
        assert kept_log_bytes(td, hogs["logs"]["id"]) <= LOG_MAX
        for sb in hogs.values():  # contained, not ended: each still runs within its limit
            assert bob.call("GET", f"/api/sandboxes/{sb['id']}")["state"] == "running"
    finally:
        ws.close()
        remove_all(bob)
        remove_all(alice)
    assert_consistent(td)


# -- found by the red team: a kernel's own sockets as a weapon ----------------------------------

BIG_IOPUB = """
import time, zmq
k = get_ipython().kernel
big = zmq.Frame(b"x" * (64 << 20))
t0 = time.time()
while time.time() - t0 < {seconds}:
    k.iopub_socket.send_multipart(
        [b"<IDS|MSG>", b"0" * 64, b'{{"msg_type":"stream"}}', b"{{}}", b"{{}}", big], copy=False
    )
    time.sleep(0.2)
print("sent")
"""


def test_oversized_kernel_messages_neither_stall_nor_grow_the_daemon(td: Daemon) -> None:
    """A kernel publishes 64 MiB messages (over the 16 MiB limit), again and again: another
    user keeps getting answers, the daemon's memory does not follow, and the kernel still
    works for its own user afterwards (ZMQ dropped the oversized messages, not the kernel)."""
    mallory, other = td.user("mallory"), td.user("otto")
    kernel = mallory.call("POST", "/api/kernels", expect=201, json={"env": {"KERNEL_MEMORY": "1g"}})
    ws = ws_connect(td, mallory, kernel["id"])
    before = rss_bytes(td.proc.pid)
    try:
        from test_kernel_fixtures import message, send

        msg = message(
            "execute_request",
            {
                "code": BIG_IOPUB.format(seconds=8),
                "silent": False,
                "store_history": False,
                "user_expressions": {},
                "allow_stdin": False,
            },
        )
        send(ws, msg, False)
        deadline = time.monotonic() + 10
        peak = before
        while time.monotonic() < deadline:
            answers(other)
            peak = max(peak, rss_bytes(td.proc.pid))
            time.sleep(0.2)
        assert peak - before < 256 << 20, (before, peak)
        reply, iopub = execute(ws, "print('still here')", timeout=60)
        assert "still here" in stdout_of(iopub)
    finally:
        ws.close()
        mallory.call("DELETE", f"/api/kernels/{kernel['id']}", expect=204)


def test_a_client_flooding_a_stopped_kernel_is_cut_off(td: Daemon) -> None:
    """The kernel stops itself (SIGSTOP), then its client sends 8 MiB frames without end:
    the daemon holds a bounded amount for it and closes that WebSocket with 1013."""
    mallory, other = td.user("mallory"), td.user("otto")
    kernel = start_kernel(mallory)
    ws = ws_connect(td, mallory, kernel["id"])
    before = rss_bytes(td.proc.pid)
    try:
        from test_kernel_fixtures import message, send

        send(
            ws,
            message(
                "execute_request",
                {
                    "code": "import os, signal; os.kill(os.getpid(), signal.SIGSTOP)",
                    "silent": True,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                },
            ),
            False,
        )
        time.sleep(1)
        blob = "x" * (8 << 20)
        closed = None
        for _ in range(200):
            try:
                send(
                    ws,
                    message(
                        "execute_request",
                        {
                            "code": blob,
                            "silent": True,
                            "store_history": False,
                            "user_expressions": {},
                            "allow_stdin": False,
                        },
                    ),
                    False,
                )
            except (websocket.WebSocketException, OSError):
                closed = "send failed"
                break
            answers(other)
        if closed is None:
            code, reason = close_frame(ws)
            assert code == 1013, (code, reason)
        assert rss_bytes(td.proc.pid) - before < 512 << 20
        assert metric(td, "sandboxd_resource_refusals_total", 'reason="kernel-not-reading"') >= 1
    finally:
        ws.close()
        mallory.call("DELETE", f"/api/kernels/{kernel['id']}", expect=204)
