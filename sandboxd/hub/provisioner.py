"""``sandboxd`` kernel provisioner: a local Jupyter server (no gateway mode) runs its kernels in
sandboxd.

jupyter_client's KernelManager talks ZMQ to a connection file. The sandboxed kernel's own ipc
sockets belong to root and the tenant, so this provisioner binds local loopback ZMQ sockets with
a key of its own and relays every message over the daemon's kernel WebSocket (v1 protocol); the
daemon re-signs toward the kernel. Lifecycle calls map onto the API: launch = ``POST
/api/kernels``, SIGINT = ``…/interrupt``, kill/terminate = ``DELETE``, poll = ``GET`` (404 or
``dead`` = gone). Select it in kernel.json (``sandboxctl kernelspec install`` writes this):

    "metadata": {"kernel_provisioner": {"provisioner_name": "sandboxd",
                 "config": {"url": "http://127.0.0.1:8890", "kernelspec": "python3"}}}

The token comes from ``SANDBOXD_TOKEN`` or ``SANDBOXD_TOKEN_FILE`` (never from kernel.json).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import uuid
from typing import Any, cast

import zmq
import zmq.asyncio
from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from tornado import httpclient, websocket
from traitlets import Unicode

from ..kernels import wire

LOCAL_CHANNELS = {
    "shell": zmq.ROUTER,
    "control": zmq.ROUTER,
    "stdin": zmq.ROUTER,
    "iopub": zmq.PUB,
    "hb": zmq.REP,
}


def _token() -> str:
    token = os.environ.get("SANDBOXD_TOKEN", "")
    path = os.environ.get("SANDBOXD_TOKEN_FILE", "")
    if not token and path:
        with open(path) as fh:
            token = fh.read().strip()
    return token


class SandboxdProvisioner(KernelProvisionerBase):
    """Runs the kernel in a sandboxd sandbox and relays its channels locally."""

    url = Unicode(
        os.environ.get("SANDBOXD_URL", "http://127.0.0.1:8890"), config=True, help="sandboxd's URL"
    )
    kernelspec = Unicode("python3", config=True, help="the daemon's kernelspec to start")

    remote_id: str | None = None
    ws: websocket.WebSocketClientConnection | None = None
    ctx: zmq.asyncio.Context | None = None
    _exit_code: int | None = None

    # --- HTTP ------------------------------------------------------------------------------

    async def _api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        req = httpclient.HTTPRequest(
            self.url.rstrip("/") + path,
            method=method,
            headers={"Authorization": f"token {_token()}", "Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
            request_timeout=120,
        )
        resp = await httpclient.AsyncHTTPClient().fetch(req, raise_error=False)
        data = json.loads(resp.body) if resp.body else None
        return resp.code, data

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self.remote_id is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        kwargs.setdefault("cmd", self.kernel_spec.argv)
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        env = {k: v for k, v in (kwargs.get("env") or {}).items() if k.startswith("KERNEL_")}
        code, model = await self._api("POST", "/api/kernels", {"name": self.kernelspec, "env": env})
        if code != 201:
            reason = (model or {}).get("message", f"HTTP {code}")
            raise RuntimeError(f"sandboxd refused the kernel: {reason}")
        self.remote_id = model["id"]
        self._exit_code = None
        ws_url = (
            self.url.replace("http", "ws", 1).rstrip("/")
            + f"/api/kernels/{self.remote_id}/channels"
        )
        ws = self.ws = await websocket.websocket_connect(
            httpclient.HTTPRequest(ws_url, headers={"Authorization": f"token {_token()}"}),
            subprotocols=[wire.V1],
        )
        self._bind_local()
        self._tasks = (
            [asyncio.ensure_future(self._from_ws(ws))]
            + [
                asyncio.ensure_future(self._from_local(ws, ch))
                for ch in ("shell", "control", "stdin")
            ]
            + [asyncio.ensure_future(self._heartbeat())]
        )
        # jupyter_client compares keys as bytes (connect.py::_reconcile_connection_info)
        self.connection_info = cast(KernelConnectionInfo, {**self.info, "key": self.key.encode()})
        return self.connection_info

    def _bind_local(self) -> None:
        self.ctx = zmq.asyncio.Context()
        self.key = uuid.uuid4().hex
        self.signer = wire.Signer(self.key.encode())
        self.sockets: dict[str, zmq.asyncio.Socket] = {}
        self.info: dict[str, Any] = {
            "transport": "tcp",
            "ip": "127.0.0.1",
            "key": self.key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "",
        }
        for channel, kind in LOCAL_CHANNELS.items():
            sock = self.ctx.socket(kind)
            sock.linger = 0
            port = sock.bind_to_random_port("tcp://127.0.0.1")
            self.sockets[channel] = sock
            self.info[f"{channel}_port"] = port
        self.idents: dict[str, list[bytes]] = {}

    async def _from_local(self, ws: websocket.WebSocketClientConnection, channel: str) -> None:
        sock = self.sockets[channel]
        while True:
            msg = await sock.recv_multipart()
            with contextlib.suppress(wire.BadFrame, ValueError, KeyError):
                idents, body = wire.split_zmq(msg)
                msg_id = json.loads(body[0])["msg_id"]
                self.idents[msg_id] = idents
                if len(self.idents) > 10000:
                    self.idents.pop(next(iter(self.idents)))
                await ws.write_message(wire.to_v1(channel, body), binary=True)

    async def _from_ws(self, ws: websocket.WebSocketClientConnection) -> None:
        while True:
            frame = await ws.read_message()
            if frame is None:
                self._exit_code = self._exit_code if self._exit_code is not None else 1
                return
            if isinstance(frame, str):
                continue
            n = int.from_bytes(frame[:8], "little")
            offsets = [int.from_bytes(frame[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(n)]
            chunks = [frame[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
            channel, body = chunks[0].decode(), chunks[1:]
            signed = [wire.DELIM, self.signer.sign(body[:4]), *body]
            if channel == "iopub":
                if b'"status"' in body[0] and b'"dead"' in body[3]:
                    self._exit_code = 1
                await self.sockets["iopub"].send_multipart(signed)
            elif channel in ("shell", "control", "stdin"):
                with contextlib.suppress(ValueError, KeyError):
                    parent = json.loads(body[1]).get("msg_id", "")
                    idents = self.idents.get(parent)
                    if idents:
                        await self.sockets[channel].send_multipart([*idents, *signed])

    async def _heartbeat(self) -> None:
        sock = self.sockets["hb"]
        while True:
            await sock.send_multipart(await sock.recv_multipart())

    async def poll(self) -> int | None:
        if self.remote_id is None:
            return 0
        if self._exit_code is not None:
            return self._exit_code
        code, model = await self._api("GET", f"/api/kernels/{self.remote_id}")
        if code == 404:
            return 0
        if code == 200 and model.get("execution_state") == "dead":
            return 1
        return None

    async def wait(self) -> int | None:
        while True:
            status = await self.poll()
            if status is not None:
                return status
            await asyncio.sleep(0.1)

    async def send_signal(self, signum: int) -> None:
        if self.remote_id is None or signum == 0:
            return
        if signum == signal.SIGINT:
            await self._api("POST", f"/api/kernels/{self.remote_id}/interrupt", {})
        else:
            await self.kill()

    async def kill(self, restart: bool = False) -> None:
        if self.remote_id is not None:
            await self._api("DELETE", f"/api/kernels/{self.remote_id}")
            self._exit_code = 0 if self._exit_code is None else self._exit_code

    async def terminate(self, restart: bool = False) -> None:
        await self.kill(restart)

    async def cleanup(self, restart: bool = False) -> None:
        await self.kill(restart)
        for task in getattr(self, "_tasks", []):
            task.cancel()
        if self.ws is not None:
            self.ws.close()
            self.ws = None
        for sock in getattr(self, "sockets", {}).values():
            sock.close(0)
        if self.ctx is not None:
            self.ctx.term()
            self.ctx = None
        self.remote_id = None

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return 2.0

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update({"remote_id": self.remote_id, "url": self.url})
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.remote_id = provisioner_info.get("remote_id")
