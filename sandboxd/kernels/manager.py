"""Kernel lifecycle: the Jupyter kernel models, their sandboxes, clients, activity and death.

Kernel ids are UUIDs (jupyter_server's routes need that shape); each maps to the sandbox that
currently runs it. Restart replaces the sandbox (a fresh kernel process in a fresh sandbox with
the same id, limits and environment), so a kernel that died of OOM comes back the same way.
Each kernel has a row in the state database (its sandbox, owner, creator, request and HMAC key),
so after a daemon restart ``recover`` adopts the kernels whose sandboxes still run with their
creator and limits, and reaches them without reading anything from the tenant's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .. import faults, metrics
from ..errors import Conflict, InvalidRequest, NotFound, QuotaExceeded, SandboxdError
from ..runtime.sandbox import Exit
from ..service import Sandboxd, iso
from ..spec import SandboxSpec
from ..state import User
from . import channels, specs, wire
from .bridge import ClientConnection
from .launch import KernelProcess, connect, new_key, start_kernel_sandbox
from .request import KernelRequest, parse
from .zsocket import Backpressure

log = logging.getLogger("sandboxd.kernels")

ADOPT_TIMEOUT = 5.0  # a running kernel's sockets exist already


@dataclass(eq=False)
class Kernel:
    id: str
    request: KernelRequest
    creator: str  # the token's user that started it (a service acting for the owner)
    process: KernelProcess | None = None
    chans: channels.KernelChannels | None = None
    execution_state: str = "starting"
    last_activity: float = field(default_factory=time.time)
    reason: str = ""
    clients: set[ClientConnection] = field(default_factory=set)
    busy_op: str = ""  # "restart" / "shutdown" while one is in progress
    key: str = field(default_factory=new_key)
    dropped: bool = False  # shutting down or culled: going away

    @property
    def owner(self) -> User:
        return self.request.owner

    @property
    def name(self) -> str:
        return self.request.kernelspec.name


class KernelManager:
    """All kernels of one daemon."""

    def __init__(self, sbx: Sandboxd) -> None:
        self.sbx = sbx
        self.kernels: dict[str, Kernel] = {}
        self.by_sandbox: dict[str, str] = {}
        self.websockets: dict[str, int] = {}  # per user: kernel channels + attaches
        sbx.exit_listeners.append(self._on_sandbox_exit)
        channels.configure_zmq()

    # access -----------------------------------------------------------------------------------

    def may_see(self, actor: User, kernel: Kernel) -> bool:
        return actor.admin or actor.name in (kernel.owner.name, kernel.creator)

    def get(self, actor: User, kernel_id: str) -> Kernel:
        kernel = self.kernels.get(kernel_id)
        if kernel is None or not self.may_see(actor, kernel):
            raise NotFound(f"no such kernel: {kernel_id}", reason="unknown-kernel")
        return kernel

    def list(self, actor: User) -> list[Kernel]:
        return [k for k in self.kernels.values() if self.may_see(actor, k)]

    def model(self, kernel: Kernel) -> dict[str, Any]:
        out = {
            "id": kernel.id,
            "name": kernel.name,
            "last_activity": iso(kernel.last_activity),
            "execution_state": kernel.execution_state,
            "connections": len(kernel.clients),
        }
        if kernel.reason:
            out["reason"] = kernel.reason
        if kernel.process is not None:
            out["sandbox"] = kernel.process.sandbox_id
        out["user"] = kernel.owner.name
        return out

    def touch(self, kernel: Kernel) -> None:
        kernel.last_activity = time.time()

    # lifecycle --------------------------------------------------------------------------------

    async def start(self, actor: User, body: Any) -> Kernel:
        req = parse(body, actor, self.sbx.config, self.sbx.store)
        kernel = Kernel(id=str(uuid.uuid4()), request=req, creator=actor.name)
        try:
            proc, chans = await start_kernel_sandbox(self.sbx, actor, req, kernel.id, kernel.key)
        except SandboxdError as exc:
            if exc.status >= 500:
                metrics.kernel_event("failed")
            raise
        self.kernels[kernel.id] = kernel
        self._attach(kernel, proc, chans)
        self._save(kernel)
        faults.point("kernel:recorded")
        metrics.kernel_event("started")
        return kernel

    def _save(self, kernel: Kernel) -> None:
        """The kernel's row: what a restarted daemon needs to adopt it (key included)."""
        if kernel.process is None:
            return
        req = kernel.request
        self.sbx.store.put_kernel(
            {
                "id": kernel.id,
                "sandbox": kernel.process.sandbox_id,
                "user": kernel.owner.name,
                "creator": kernel.creator,
                "kernelspec": req.kernelspec.name,
                "key": kernel.key,
                "request": {
                    "env": req.env,
                    "workdir": req.workdir,
                    "volumes": list(req.volumes),
                    "limits": req.limits,
                },
            }
        )

    def _attach(self, kernel: Kernel, proc: KernelProcess, chans: channels.KernelChannels) -> None:
        kernel.process, kernel.chans = proc, chans
        self.by_sandbox[proc.sandbox_id] = kernel.id
        chans.on_iopub = lambda msg: self._on_iopub(kernel, msg)
        chans.on_trouble = lambda text: self._broadcast(kernel, channels.stream_message(text))
        kernel.execution_state, kernel.reason = "idle", ""
        self.touch(kernel)
        for client in kernel.clients:
            client.attach(chans)
        if proc.live is not None and proc.live.exited.done():  # died while we attached
            self._died(kernel, proc.live.exited.result())

    def _detach(self, kernel: Kernel) -> KernelProcess | None:
        proc, kernel.process = kernel.process, None
        if proc is not None:
            self.by_sandbox.pop(proc.sandbox_id, None)
        self._close_channels(kernel)
        return proc

    def _close_channels(self, kernel: Kernel) -> None:
        """Close the daemon's sockets to the kernel process; clients stay, unattached.
        Clients' sockets go first: they connect through the channels' fds."""
        for client in kernel.clients:
            client.detach()
        if kernel.chans is not None:
            kernel.chans.close()
            kernel.chans = None

    async def _remove_sandbox(self, kernel: Kernel, proc: KernelProcess | None) -> None:
        if proc is None:
            return
        with contextlib.suppress(SandboxdError):
            await self.sbx.remove(kernel.owner, proc.sandbox_id, force=True)

    def interrupt(self, actor: User, kernel_id: str) -> None:
        kernel = self.get(actor, kernel_id)
        self.touch(kernel)
        live = kernel.process.live if kernel.process else None
        if live is None or not self.sbx.runtime.signal_command(live, signal.SIGINT):
            raise Conflict(f"kernel {kernel_id} is not running", reason="not-running")

    async def restart(self, actor: User, kernel_id: str) -> Kernel:
        kernel = self.get(actor, kernel_id)
        if kernel.busy_op:
            raise Conflict(
                f"kernel {kernel_id} is already in {kernel.busy_op}", reason="kernel-busy"
            )
        kernel.busy_op = "restart"
        kernel.execution_state = "restarting"
        self._broadcast(kernel, channels.status_message("restarting"))
        try:
            await self._remove_sandbox(kernel, self._detach(kernel))
            kernel.key = new_key()  # a fresh kernel process gets a fresh key
            try:
                proc, chans = await start_kernel_sandbox(
                    self.sbx, actor, kernel.request, kernel.id, kernel.key
                )
            except SandboxdError as exc:
                kernel.execution_state, kernel.reason = "dead", f"restart failed: {exc.message}"
                self._broadcast(kernel, channels.status_message("dead"))
                if exc.status >= 500:
                    metrics.kernel_event("failed")
                raise
            if kernel.dropped or kernel.id not in self.kernels:  # shut down while restarting
                chans.close()
                await self._remove_sandbox(kernel, proc)
                raise NotFound(f"no such kernel: {kernel_id}", reason="unknown-kernel")
            self._attach(kernel, proc, chans)
            self._save(kernel)
            metrics.kernel_event("restarted")
        finally:
            kernel.busy_op = ""
        return kernel

    async def shutdown(self, actor: User, kernel_id: str) -> None:
        await self._drop(self.get(actor, kernel_id), "shut down")
        metrics.kernel_event("stopped")

    async def _drop(self, kernel: Kernel, why: str) -> None:
        """Close the kernel's clients, remove its sandbox, then forget it: once it answers 404,
        its sandbox is gone too."""
        if kernel.dropped or kernel.id not in self.kernels:
            return
        kernel.dropped = True
        log.info("kernel %s of %s: %s", kernel.id, kernel.owner.name, why)
        proc = self._detach(kernel)
        for client in list(kernel.clients):
            with contextlib.suppress(Exception):
                client.close(1000, f"kernel {why}")
        kernel.clients.clear()
        try:
            await self._remove_sandbox(kernel, proc)
        finally:
            self.kernels.pop(kernel.id, None)
            self.sbx.store.delete_kernel(kernel.id)

    async def cull(self, kernel: Kernel, why: str) -> None:
        await self._drop(kernel, f"culled: {why}")
        metrics.kernel_event("culled")

    async def close(self) -> None:
        """Daemon shutdown: close sockets; kernel sandboxes keep running and are re-adopted."""
        for kernel in self.kernels.values():
            if kernel.chans is not None:
                kernel.chans.close()

    # clients ----------------------------------------------------------------------------------

    def admit_websocket(self, user: str, kernel: Kernel | None = None) -> None:
        """Refuse (429) a WebSocket beyond the per-user or per-kernel limit, before upgrading."""
        cfg = self.sbx.config
        if self.websockets.get(user, 0) >= cfg.max_websockets_per_user:
            raise QuotaExceeded(
                f"user {user} already has {cfg.max_websockets_per_user} WebSockets open",
                reason="max-websockets",
            )
        if kernel is not None and len(kernel.clients) >= cfg.max_websockets_per_kernel:
            raise QuotaExceeded(
                f"kernel {kernel.id} already has {cfg.max_websockets_per_kernel} connections",
                reason="max-websockets",
            )

    def websocket_opened(self, user: str) -> None:
        self.websockets[user] = self.websockets.get(user, 0) + 1

    def websocket_closed(self, user: str) -> None:
        left = self.websockets.get(user, 0) - 1
        if left > 0:
            self.websockets[user] = left
        else:
            self.websockets.pop(user, None)

    def connect(self, kernel: Kernel, client: ClientConnection) -> None:
        kernel.clients.add(client)
        if kernel.chans is not None:
            client.attach(kernel.chans)
        self.touch(kernel)

    def disconnect(self, kernel: Kernel, client: ClientConnection) -> None:
        kernel.clients.discard(client)
        client.detach()
        self.touch(kernel)

    def from_client(self, kernel: Kernel, client: ClientConnection, frame: bytes | str) -> None:
        try:
            parts = client.parse(frame)
        except wire.BadFrame as exc:
            log.warning("kernel %s: dropped a bad frame: %s", kernel.id, exc)
            return
        kernel.last_activity = time.time()
        try:
            client.forward(parts)
        except wire.BadFrame as exc:
            log.warning("kernel %s: dropped a bad frame: %s", kernel.id, exc)
        except Backpressure:
            metrics.resource_refusal("kernel-not-reading")
            client.close(1013, "the kernel does not take messages; try again later")

    def _broadcast(self, kernel: Kernel, parts: wire.Parts) -> None:
        for client in list(kernel.clients):
            with contextlib.suppress(Exception):
                client.deliver_parts(parts)

    # kernel events ----------------------------------------------------------------------------

    def _on_iopub(self, kernel: Kernel, msg: list[bytes]) -> None:
        chans = kernel.chans
        if chans is None:
            return
        try:
            _, body = chans.signer.verified(msg)
            header = json.loads(body[0])
        except wire.BadSignature:
            metrics.kernel_message_dropped("bad-signature")
            return
        except (wire.BadFrame, ValueError):
            metrics.kernel_message_dropped("malformed")
            return
        kernel.last_activity = time.time()
        if header.get("msg_type") == "status":
            with contextlib.suppress(ValueError, AttributeError):
                state = json.loads(body[3]).get("execution_state")
                if isinstance(state, str) and kernel.execution_state != "dead":
                    kernel.execution_state = state
        legacy: tuple[bytes | str, bool] | None = None
        v1: tuple[bytes | str, bool] | None = None
        for client in list(kernel.clients):
            try:
                if client.v1:
                    v1 = v1 or client.frame("iopub", body, header)
                    client.send(*v1)
                else:
                    legacy = legacy or client.frame("iopub", body, header)
                    client.send(*legacy)
            except Exception:
                log.debug("kernel %s: a client went away", kernel.id)

    def _on_sandbox_exit(self, spec: SandboxSpec, result: Exit) -> None:
        kernel_id = self.by_sandbox.get(spec.id)
        kernel = self.kernels.get(kernel_id) if kernel_id else None
        if kernel is None or kernel.process is None or kernel.process.sandbox_id != spec.id:
            return  # not a kernel, or one we are restarting / removing ourselves
        if result.reason == "stopped":  # stopped from outside (lifetime reached, admin stop)
            asyncio.get_running_loop().create_task(self.cull(kernel, "its sandbox was stopped"))
            return
        self._died(kernel, result)

    def _died(self, kernel: Kernel, result: Exit) -> None:
        metrics.kernel_event("oom_killed" if result.oom_killed else "died")
        kernel.execution_state = "dead"
        kernel.reason = (
            f"the kernel's memory limit was hit ({result.reason})"
            if result.oom_killed
            else f"the kernel died: {result.reason}"
        )
        log.info("kernel %s of %s is dead: %s", kernel.id, kernel.owner.name, kernel.reason)
        self._close_channels(kernel)
        self._broadcast(kernel, channels.status_message("dead"))

    # daemon restart ---------------------------------------------------------------------------

    async def recover(self) -> None:
        """Adopt the kernels whose sandboxes still run after a daemon restart, from their rows
        (the key included); clients reconnect. Rows of kernels that are gone are dropped, and so
        are kernel sandboxes without a row: a start the daemon died in (counted in the quota,
        unreachable, never to be culled)."""
        rows = self.sbx.store.kernels()
        owned = {row["sandbox"] for row in rows}
        for rec in self.sbx.store.list_sandboxes(kind="kernel", states=("running",)):
            if rec.id not in owned:
                log.warning("removing kernel sandbox %s: its start did not finish", rec.id)
                admin = self.sbx.store.get_user("admin")
                with contextlib.suppress(SandboxdError):
                    await self.sbx.remove(admin, rec.id, force=True)  # type: ignore[arg-type]
        for row in rows:
            live = self.sbx.runtime.live.get(row["sandbox"])
            owner = self.sbx.store.get_user(row["user"], missing_ok=True)
            try:
                ks = specs.get(self.sbx.config, row["kernelspec"])
            except SandboxdError:
                ks = None
            if live is None or owner is None or ks is None:
                log.warning("kernel %s is gone (sandbox %s)", row["id"], row["sandbox"])
                self.sbx.store.delete_kernel(row["id"])
                if live is not None and owner is not None:
                    with contextlib.suppress(SandboxdError):
                        await self.sbx.remove(owner, row["sandbox"], force=True)
                continue
            stored = row["request"]
            req = KernelRequest(
                owner=owner,
                kernelspec=ks,
                env=stored.get("env", {}),
                workdir=stored.get("workdir", ""),
                volumes=tuple(stored.get("volumes", ())),
                limits=stored.get("limits", {}),
            )
            kernel = Kernel(id=row["id"], request=req, creator=row["creator"], key=row["key"])
            key = row["key"].encode()
            proc = KernelProcess(sandbox_id=row["sandbox"], live=live, key=key)
            self.kernels[kernel.id] = kernel
            try:
                chans = await connect(self.sbx, live, owner.uid, key, ADOPT_TIMEOUT)
            except SandboxdError as exc:
                log.warning("kernel %s cannot be reached: %s", row["id"], exc.message)
                kernel.process = proc
                self.by_sandbox[proc.sandbox_id] = kernel.id
                kernel.execution_state = "dead"
                kernel.reason = f"unreachable after a daemon restart: {exc.message}"
                continue
            self._attach(kernel, proc, chans)
            log.info("re-adopted kernel %s (sandbox %s)", kernel.id, row["sandbox"])


def check_id(kernel_id: str) -> str:
    try:
        return str(uuid.UUID(kernel_id))
    except ValueError:
        raise InvalidRequest(f"not a kernel id: {kernel_id}", reason="bad-kernel-id") from None
