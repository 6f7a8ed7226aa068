"""An unmodified ``jupyter server --gateway-url=<sandboxd>`` drives sandboxed kernels.

Everything below goes through the Jupyter server's own REST and WebSocket API, as JupyterLab
would: kernelspecs (and a logo), start, execute, interrupt a ``while True`` loop, restart (a
fresh process, same id), shut down.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import websocket
from conftest import Daemon, free_port
from test_kernel_fixtures import execute, kd, message, recv, send, stdout_of  # noqa: F401

JUPYTER = os.path.join(os.path.dirname(sys.executable), "jupyter")


@dataclass
class JupyterServer:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    log: str

    def call(self, method: str, path: str, expect: int, **kw: object) -> object:
        resp = requests.request(
            method,
            self.url + path,
            timeout=120,
            headers={"Authorization": f"token {self.token}"},
            **kw,
        )
        assert resp.status_code == expect, (resp.status_code, resp.text[:500])
        return (
            resp.json()
            if resp.content and "json" in resp.headers.get("Content-Type", "")
            else resp.content
        )

    def ws(self, kernel_id: str) -> websocket.WebSocket:
        url = self.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels"
        return websocket.create_connection(
            url, timeout=60, header=[f"Authorization: token {self.token}"]
        )


@pytest.fixture(scope="module")
def jserver(kd: Daemon) -> Iterator[JupyterServer]:  # noqa: F811
    """A real Jupyter server in gateway mode, authenticating to sandboxd as alice."""
    alice = kd.user("alice")
    root = tempfile.mkdtemp(prefix="jsrv-")
    port, token = free_port(), secrets.token_hex(16)
    log = os.path.join(root, "server.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_", "JUPYTER_"))}
    env["JUPYTER_CONFIG_DIR"] = os.path.join(root, "config")
    env["JUPYTER_DATA_DIR"] = os.path.join(root, "data")
    env["JUPYTER_RUNTIME_DIR"] = os.path.join(root, "runtime")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [
                JUPYTER,
                "server",
                "--no-browser",
                "--allow-root",
                f"--port={port}",
                "--ip=127.0.0.1",
                f"--ServerApp.root_dir={root}",
                f"--IdentityProvider.token={token}",
                f"--gateway-url={kd.url}",
                f"--GatewayClient.auth_token={alice.token}",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )
    server = JupyterServer(f"http://127.0.0.1:{port}", token, proc, log)
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, open(log).read()[-3000:]
        try:
            if requests.get(
                server.url + "/api/status", timeout=1, headers={"Authorization": f"token {token}"}
            ).ok:
                break
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "jupyter server did not come up"
        time.sleep(0.2)
    yield server
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    shutil.rmtree(root, ignore_errors=True)


def test_kernelspecs_through_the_server(jserver: JupyterServer) -> None:
    specs = jserver.call("GET", "/api/kernelspecs", 200)
    assert specs["default"] == "python3"
    python3 = specs["kernelspecs"]["python3"]
    assert python3["spec"]["metadata"]["sandboxd"]["profile"] == "default"
    assert python3["spec"]["language"] == "python"
    logo = jserver.call("GET", "/kernelspecs/python3/logo-64x64.png", 200)
    assert logo[:8] == b"\x89PNG\r\n\x1a\n"


def test_kernel_lifecycle_through_the_server(jserver: JupyterServer, kd: Daemon) -> None:  # noqa: F811
    alice = kd.user("alice")
    kernel = jserver.call("POST", "/api/kernels", 201, json={"name": "python3"})
    kid = kernel["id"]
    try:
        # the daemon knows it as alice's, with a sandbox of its own
        model = alice.call("GET", f"/api/kernels/{kid}")
        first_sandbox = model["sandbox"]
        ws = jserver.ws(kid)
        try:
            reply, iopub = execute(ws, "import os, socket\nx = 41\nprint(x + 1, os.getuid())")
            assert reply["content"]["status"] == "ok"
            assert stdout_of(iopub).split() == ["42", "1000"]

            # interrupt a busy loop: SIGINT reaches the kernel, the cell ends with an error
            loop = message(
                "execute_request",
                {
                    "code": "while True:\n    pass",
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                },
            )
            send(ws, loop, False)
            busy = False
            while not busy:
                got = recv(ws, False)
                busy = (
                    got["header"]["msg_type"] == "status"
                    and got["parent_header"].get("msg_id") == loop["header"]["msg_id"]
                    and got["content"]["execution_state"] == "busy"
                )
            jserver.call("POST", f"/api/kernels/{kid}/interrupt", 204, json={})
            while True:
                got = recv(ws, False)
                if (
                    got["channel"] == "shell"
                    and got["parent_header"]["msg_id"] == loop["header"]["msg_id"]
                ):
                    break
            assert got["content"]["status"] == "error"
            assert got["content"]["ename"] == "KeyboardInterrupt"
            # ipykernel aborts requests that arrive while it handles the error (stop_on_error):
            # a request is "aborted" until the kernel is past that window, then runs
            for _ in range(20):
                reply, _ = execute(ws, "x")
                if reply["content"]["status"] != "aborted":
                    break
                time.sleep(0.2)
            assert reply["content"]["status"] == "ok"  # the same process, state kept

            # restart: same kernel id, a fresh process (x is gone), a new sandbox
            restarted = jserver.call("POST", f"/api/kernels/{kid}/restart", 200, json={})
            assert restarted["id"] == kid
        finally:
            ws.close()
        ws = jserver.ws(kid)
        try:
            reply, _ = execute(ws, "x")
            assert reply["content"]["status"] == "error"
            assert reply["content"]["ename"] == "NameError"
        finally:
            ws.close()
        model = alice.call("GET", f"/api/kernels/{kid}")
        assert model["sandbox"] != first_sandbox
        assert model["execution_state"] in ("idle", "busy")
        listed = jserver.call("GET", "/api/kernels", 200)
        assert kid in [k["id"] for k in listed]
    finally:
        jserver.call("DELETE", f"/api/kernels/{kid}", 204)
    alice.call("GET", f"/api/kernels/{kid}", expect=404)
    sandboxes = alice.call("GET", "/api/sandboxes")
    assert not [s for s in sandboxes if s["kind"] == "kernel"], sandboxes
