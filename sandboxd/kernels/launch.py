"""Start one kernel sandbox: the single entry point a warm pool will call ahead of time.

``start_kernel_sandbox(sbx, actor, request, kernel_id, key)`` admits (quota, profile), has the
launcher put the connection file (fresh key, 0600, owned by the tenant) into the sandbox's own
``/run/kernel`` tmpfs, starts ipykernel, opens its sockets by fd and returns once the kernel
answered ``kernel_info``. The key stays in the daemon's state; the daemon never reads it back
from the sandbox. If anything fails, the sandbox is removed before the error propagates:
never a half-made kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from .. import faults
from ..errors import LaunchError, SandboxdError
from ..runtime.plan import RunDir, RunFile
from ..runtime.sandbox import LiveSandbox
from ..service import Sandboxd
from ..state import User
from . import channels
from .request import KernelRequest

log = logging.getLogger("sandboxd.kernels")

READY_TIMEOUT = 60.0
MAX_READY_TIMEOUT = 300.0


@dataclass
class KernelProcess:
    """A running kernel sandbox and how to reach its kernel."""

    sandbox_id: str
    live: LiveSandbox | None
    key: bytes


def new_key() -> str:
    return secrets.token_hex(32)


def _ready_timeout(env: dict[str, str]) -> float:
    try:
        return min(float(env.get("KERNEL_LAUNCH_TIMEOUT", READY_TIMEOUT)), MAX_READY_TIMEOUT)
    except ValueError:
        return READY_TIMEOUT


def sandbox_body(req: KernelRequest, kernel_id: str) -> dict[str, Any]:
    """The sandbox create request for a kernel: argv from the kernelspec, env, workdir, limits."""
    ks = req.kernelspec
    conn_file = f"{channels.KERNEL_DIR}/{channels.CONNECTION_FILE}"
    argv = [str(a).replace("{connection_file}", conn_file) for a in ks.spec["argv"]]
    spec_env = {k: str(v) for k, v in (ks.spec.get("env") or {}).items()}
    body: dict[str, Any] = {
        "command": argv,
        "profile": ks.profile,
        "name": f"kernel-{kernel_id[:13]}",
        "env": {**spec_env, **req.env, "KERNEL_ID": kernel_id},
        "volumes": list(req.volumes),
        "labels": {"kernel_id": kernel_id, "kernelspec": ks.name},
        **req.limits,
    }
    if req.workdir:
        body["workdir"] = req.workdir
    if ks.sandbox.get("image"):
        body["image"] = ks.sandbox["image"]
    return body


def connection_dir(sbx: Sandboxd, req: KernelRequest, key: str) -> RunDir:
    """``/run/kernel``: a small tmpfs holding the connection file, for the launcher to make."""
    info = channels.connection_info(
        f"{channels.KERNEL_DIR}/{channels.SOCKET_PREFIX}", key, req.kernelspec.name
    )
    return RunDir(
        channels.KERNEL_DIR,
        sbx.config.kernel_run_size,
        (RunFile(channels.CONNECTION_FILE, json.dumps(info), 0o600),),
    )


async def connect(
    sbx: Sandboxd, live: LiveSandbox, uid: int, key: bytes, timeout: float
) -> channels.KernelChannels:
    """The daemon's channels to the kernel in ``live``, through fds of its own sockets."""
    sockets = await channels.open_sockets(
        lambda: sbx.runtime.root_fd(live), uid, asyncio.shield(live.exited), timeout
    )
    return channels.KernelChannels(sockets, key, lambda msg: None)


async def start_kernel_sandbox(
    sbx: Sandboxd, actor: User, req: KernelRequest, kernel_id: str, key: str
) -> tuple[KernelProcess, channels.KernelChannels]:
    """Start a kernel for (user, kernelspec, env); ready to take messages when it returns.

    The caller sets ``KernelChannels.on_iopub`` (and ``on_trouble``) once it holds the kernel.
    """
    rec, live = await sbx.create(
        actor,
        sandbox_body(req, kernel_id),
        kind="kernel",
        owner=req.owner,
        run_dirs=(connection_dir(sbx, req, key),),
    )
    faults.point("kernel:sandbox")
    proc = KernelProcess(sandbox_id=rec.id, live=live, key=key.encode())
    chans: channels.KernelChannels | None = None
    timeout = _ready_timeout(req.env)
    began = time.monotonic()
    try:
        chans = await connect(sbx, live, req.owner.uid, proc.key, timeout)
        faults.point("kernel:channels")
        await chans.kernel_info(asyncio.shield(live.exited), timeout - (time.monotonic() - began))
    except BaseException as exc:
        if chans is not None:
            chans.close()
        detail = ""
        if isinstance(exc, SandboxdError):
            with contextlib.suppress(SandboxdError):
                tail = (await sbx.logs(req.owner, rec.id, tail=5)).get("stderr", "").strip()
                detail = f": {tail.splitlines()[-1]}" if tail else ""
        with contextlib.suppress(SandboxdError):
            await sbx.remove(req.owner, rec.id, force=True)
        if isinstance(exc, SandboxdError):
            if exc.status >= 500:
                raise LaunchError(exc.message + detail, reason=exc.reason) from None
            raise
        raise
    return proc, chans
