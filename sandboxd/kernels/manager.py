"""Kernel lifecycle: the Jupyter kernel models, their sandboxes, clients, activity and death.

Kernel ids are UUIDs (jupyter_server's routes need that shape); each maps to the sandbox that
currently runs it. Restart replaces the sandbox (a fresh kernel process in a fresh sandbox with
the same id, limits and environment), so a kernel that died of OOM comes back the same way.
Kernels live in memory; after a daemon restart ``recover`` adopts the kernel sandboxes that are
still running from their labels and connection files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import Conflict, InvalidRequest, NotFound, SandboxdError
from ..runtime.sandbox import Exit
from ..service import Sandboxd, iso
from ..spec import SandboxSpec
from ..state import User
from . import channels, specs, wire
from .bridge import ClientConnection
from .launch import KernelProcess, start_kernel_sandbox
from .request import KernelRequest, parse

log = logging.getLogger("sandboxd.kernels")


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
        sbx.exit_listeners.append(self._on_sandbox_exit)

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
        proc, chans = await start_kernel_sandbox(self.sbx, actor, req, kernel.id)
        self.kernels[kernel.id] = kernel
        self._attach(kernel, proc, chans)
        return kernel

    def _attach(self, kernel: Kernel, proc: KernelProcess, chans: channels.KernelChannels) -> None:
        kernel.process, kernel.chans = proc, chans
        self.by_sandbox[proc.sandbox_id] = kernel.id
        chans.iopub.on_recv(lambda msg: self._on_iopub(kernel, msg))
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
        """Close the daemon's sockets to the kernel process; clients stay, unattached."""
        if kernel.chans is not None:
            kernel.chans.close()
            kernel.chans = None
        for client in kernel.clients:
            client.detach()

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
            try:
                proc, chans = await start_kernel_sandbox(self.sbx, actor, kernel.request, kernel.id)
            except SandboxdError as exc:
                kernel.execution_state, kernel.reason = "dead", f"restart failed: {exc.message}"
                self._broadcast(kernel, channels.status_message("dead"))
                raise
            if kernel.id not in self.kernels:  # shut down while restarting
                chans.close()
                await self._remove_sandbox(kernel, proc)
                raise NotFound(f"no such kernel: {kernel_id}", reason="unknown-kernel")
            self._attach(kernel, proc, chans)
        finally:
            kernel.busy_op = ""
        return kernel

    async def shutdown(self, actor: User, kernel_id: str) -> None:
        await self._drop(self.get(actor, kernel_id), "shut down")

    async def _drop(self, kernel: Kernel, why: str) -> None:
        """Forget the kernel (it answers 404 from now on), close its clients, remove its sandbox."""
        if self.kernels.pop(kernel.id, None) is None:
            return
        log.info("kernel %s of %s: %s", kernel.id, kernel.owner.name, why)
        proc = self._detach(kernel)
        for client in list(kernel.clients):
            with contextlib.suppress(Exception):
                client.close(1000, f"kernel {why}")
        kernel.clients.clear()
        await self._remove_sandbox(kernel, proc)

    async def cull(self, kernel: Kernel, why: str) -> None:
        await self._drop(kernel, f"culled: {why}")

    async def close(self) -> None:
        """Daemon shutdown: close sockets; kernel sandboxes keep running and are re-adopted."""
        for kernel in self.kernels.values():
            if kernel.chans is not None:
                kernel.chans.close()

    # clients ----------------------------------------------------------------------------------

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
        client.forward(parts)

    def _broadcast(self, kernel: Kernel, parts: wire.Parts) -> None:
        for client in list(kernel.clients):
            with contextlib.suppress(Exception):
                client.deliver_parts(parts)

    # kernel events ----------------------------------------------------------------------------

    def _on_iopub(self, kernel: Kernel, msg: list[bytes]) -> None:
        try:
            _, body = wire.split_zmq(msg)
            header = json.loads(body[0])
        except (wire.BadFrame, ValueError):
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

    def recover(self) -> None:
        """Adopt kernel sandboxes still running after a daemon restart (their clients reconnect)."""
        for rec in self.sbx.store.list_sandboxes(kind="kernel", states=("running",)):
            labels = dict(rec.spec.get("labels", ()))
            live = self.sbx.runtime.live.get(rec.id)
            kernel_id = labels.get("kernel_id", "")
            host_dir = os.path.join(self.sbx.runtime.directory(rec.id), "kernel")
            try:
                with open(os.path.join(host_dir, channels.CONNECTION_FILE)) as fh:
                    key = json.load(fh)["key"].encode()
                owner = self.sbx.store.get_user(rec.user)
                ks = specs.get(self.sbx.config, labels.get("kernelspec", ""))
            except (OSError, ValueError, KeyError, SandboxdError):
                log.warning("kernel sandbox %s cannot be adopted; leaving it", rec.id)
                continue
            if live is None or owner is None or not kernel_id:
                continue
            env = {k: v for k, v in rec.spec.get("env", ()) if k.startswith("KERNEL_")}
            env.pop("KERNEL_ID", None)
            req = KernelRequest(
                owner=owner,
                kernelspec=ks,
                env=env,
                workdir=rec.spec.get("workdir", ""),
                volumes=tuple(
                    f"{v['host']}:{v['container']}" + (":ro" if v["read_only"] else "")
                    for v in rec.spec.get("volumes", ())
                ),
                limits={},
            )
            kernel = Kernel(id=kernel_id, request=req, creator=owner.name)
            self.kernels[kernel_id] = kernel
            proc = KernelProcess(sandbox_id=rec.id, live=live, host_dir=host_dir, key=key)
            self._attach(kernel, proc, channels.KernelChannels(host_dir, key, lambda m: None))
            log.info("re-adopted kernel %s (sandbox %s)", kernel_id, rec.id)


def check_id(kernel_id: str) -> str:
    try:
        return str(uuid.UUID(kernel_id))
    except ValueError:
        raise InvalidRequest(f"not a kernel id: {kernel_id}", reason="bad-kernel-id") from None
