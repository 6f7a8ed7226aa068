"""The Jupyter gateway API: /api/kernelspecs, /kernelspecs/..., /api/kernels and the channels
WebSocket, as jupyter_server's GatewayClient and direct Jupyter clients use them
(reference/jupyter.md §0, §2)."""

from __future__ import annotations

import asyncio
import json
import mimetypes
from typing import Any

from tornado import websocket
from tornado.iostream import StreamBufferFullError

from .. import blocking, metrics
from ..errors import SandboxdError
from ..kernels import culler, specs, wire
from ..kernels.bridge import ClientConnection
from ..kernels.manager import Kernel, KernelManager
from ..models.requests import KernelAction, KernelspecsQuery
from ..models.types import validate
from ..service import Sandboxd
from .base import BaseHandler, expect_upgrade, summary, token_from

WRITE_BUFFER = 16 << 20  # bytes queued for one slow client before it is closed
MAX_RESOURCE = 1 << 20  # a kernelspec's logo or other resource file


async def setup(sbx: Sandboxd) -> KernelManager:
    """The kernel manager of a daemon: adopts running kernels and starts the culler."""
    manager = KernelManager(sbx)
    await manager.recover()
    loop = asyncio.get_running_loop()
    manager.culler = loop.create_task(culler.run(manager))  # type: ignore[attr-defined]
    return manager


class KernelBase(BaseHandler):
    @property
    def kernels(self) -> KernelManager:
        return self.settings["kernels"]


class KernelspecsHandler(KernelBase):
    def get(self) -> None:
        actor = self.current()
        user = actor.name
        wanted = self.query(KernelspecsQuery).user
        if wanted and (actor.service or actor.admin):
            user = wanted
        admin = actor.admin and user == actor.name
        visible = specs.visible(self.sbx.config, user, admin)
        self.send(
            {
                "default": specs.default_name(visible),
                "kernelspecs": {n: ks.model() for n, ks in sorted(visible.items())},
            }
        )


class KernelspecHandler(KernelBase):
    def get(self, name: str) -> None:
        self.current()
        self.send(specs.get(self.sbx.config, name).model())


class KernelspecResourceHandler(KernelBase):
    async def get(self, name: str, fname: str) -> None:
        self.current()
        path = specs.resource_path(self.sbx.config, name, fname)
        data = await blocking.run(_read_resource, path)
        self.set_header(
            "Content-Type", mimetypes.guess_type(fname)[0] or "application/octet-stream"
        )
        self.set_header("Cache-Control", "max-age=3600")
        self.finish(data)


class KernelsHandler(KernelBase):
    def get(self) -> None:
        actor = self.current()
        self.send([self.kernels.model(k) for k in self.kernels.list(actor)])

    async def post(self) -> None:
        actor = self.current()
        kernel = await self.kernels.start(actor, self.body())
        self.set_header("Location", f"/api/kernels/{kernel.id}")
        self.send(self.kernels.model(kernel), 201)


class KernelHandler(KernelBase):
    def get(self, kernel_id: str) -> None:
        self.send(self.kernels.model(self.kernels.get(self.current(), kernel_id)))

    async def delete(self, kernel_id: str) -> None:
        await self.kernels.shutdown(self.current(), kernel_id)
        self.set_status(204)
        self.finish()


class KernelActionHandler(KernelBase):
    async def post(self, kernel_id: str, action: str) -> None:
        actor = self.current()
        validate(KernelAction, self.body())  # a malformed body is still a 400
        if action == "interrupt":
            self.kernels.interrupt(actor, kernel_id)
            self.set_status(204)
            self.finish()
            return
        kernel = await self.kernels.restart(actor, kernel_id)
        self.send(self.kernels.model(kernel))


def _read_resource(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(MAX_RESOURCE)


class KernelChannelsHandler(websocket.WebSocketHandler):
    """WebSocket <-> ZMQ for one client; legacy framing unless the client offers v1.

    Refused (429) before the upgrade beyond the per-user and per-kernel limits; a client that
    reads slower than its kernel writes is closed once ``WRITE_BUFFER`` bytes wait for it.
    """

    kernel: Kernel
    client: ClientConnection | None = None
    user: str = ""

    @property
    def kernels(self) -> KernelManager:
        return self.settings["kernels"]

    def _request_summary(self) -> str:
        return summary(self.request)

    def _refuse(self, exc: SandboxdError) -> None:
        self.set_status(exc.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(exc.to_json()))

    async def get(self, *args: Any, **kwargs: Any) -> None:
        sbx = self.settings["sandboxd"]
        user = sbx.authenticate(token_from(self.request))
        if user is None:
            from ..errors import Unauthorized

            self._refuse(Unauthorized("a valid token is required", reason="bad-token"))
            return
        try:
            self.kernel = self.kernels.get(user, kwargs["kernel_id"])
            expect_upgrade(self.request)
            self.kernels.admit_websocket(user.name, self.kernel)
        except SandboxdError as exc:
            if exc.reason == "max-websockets":
                metrics.resource_refusal("max-websockets")
            self._refuse(exc)
            return
        self.user = user.name
        self.kernels.websocket_opened(self.user)
        try:
            await super().get(*args, **kwargs)
        finally:
            if self.get_status() != 101:  # no upgrade (a plain GET, a bad handshake): no slot
                self._release_slot()

    def check_origin(self, origin: str) -> bool:
        return True  # token-authenticated, no cookies

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return wire.V1 if wire.V1 in subprotocols else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)  # Nagle + delayed ACK would add ~40 ms per cell (jupyter.md §7)
        stream = getattr(self.ws_connection, "stream", None)
        if stream is not None:
            stream.max_write_buffer_size = WRITE_BUFFER
        self.client = ClientConnection(
            self.selected_subprotocol,
            self._send,
            self._close,
            self.get_query_argument("session_id", ""),
        )
        self.kernels.connect(self.kernel, self.client)

    def _send(self, data: bytes | str, binary: bool) -> None:
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        try:
            self.write_message(data, binary=binary)
        except StreamBufferFullError:
            self.close(1009, "the client reads slower than the kernel writes")

    def _close(self, code: int, reason: str) -> None:
        self.close(code, reason)

    def on_message(self, message: str | bytes) -> None:
        if self.client is not None:
            self.kernels.from_client(self.kernel, self.client, message)

    def on_close(self) -> None:
        if self.client is not None:
            self.kernels.disconnect(self.kernel, self.client)
            self.client = None
        self._release_slot()

    def _release_slot(self) -> None:
        if self.user:
            self.kernels.websocket_closed(self.user)
            self.user = ""
