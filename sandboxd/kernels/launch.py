"""Start one kernel sandbox: the single entry point a warm pool will call ahead of time.

``start_kernel_sandbox(sbx, actor, request, kernel_id)`` admits (quota, profile), writes the
connection file (fresh key from ``secrets``, 0600, owned by the tenant), starts ipykernel in its
own sandbox and returns once the kernel answered ``kernel_info``. If anything fails, the
sandbox is removed before the error propagates: never a half-made kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from dataclasses import dataclass
from typing import Any

from ..errors import LaunchError, SandboxdError
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
    host_dir: str  # <run_dir>/<sandbox>/kernel
    key: bytes


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
        "workdir": req.workdir,
        "volumes": list(req.volumes),
        "labels": {"kernel_id": kernel_id, "kernelspec": ks.name},
        **req.limits,
    }
    if ks.sandbox.get("image"):
        body["image"] = ks.sandbox["image"]
    return body


async def start_kernel_sandbox(
    sbx: Sandboxd, actor: User, req: KernelRequest, kernel_id: str
) -> tuple[KernelProcess, channels.KernelChannels]:
    """Start a kernel for (user, kernelspec, env); ready to take messages when it returns.

    ``on_iopub`` is attached later by the caller through ``KernelChannels.iopub.on_recv``.
    """
    key = secrets.token_hex(32)
    info = channels.connection_info(f"{channels.KERNEL_DIR}/kernel-ipc", key, req.kernelspec.name)

    def prepare(directory: str) -> None:
        channels.write_connection_file(os.path.join(directory, "kernel"), info, req.owner.uid)

    rec, live = await sbx.create(
        actor,
        sandbox_body(req, kernel_id),
        kind="kernel",
        owner=req.owner,
        extra_dirs=("kernel",),
        prepare=prepare,
    )
    proc = KernelProcess(
        sandbox_id=rec.id,
        live=live,
        host_dir=os.path.join(live.directory, "kernel"),
        key=key.encode(),
    )
    chans = channels.KernelChannels(proc.host_dir, proc.key, lambda msg: None)
    try:
        await chans.kernel_info(asyncio.shield(live.exited), _ready_timeout(req.env))
    except BaseException as exc:
        chans.close()
        detail = ""
        if isinstance(exc, SandboxdError):
            tail = sbx.logs(req.owner, rec.id, tail=5).get("stderr", "").strip()
            detail = f": {tail.splitlines()[-1]}" if tail else ""
        with contextlib.suppress(SandboxdError):
            await sbx.remove(req.owner, rec.id, force=True)
        if isinstance(exc, SandboxdError):
            raise LaunchError(exc.message + detail, reason=exc.reason) from None
        raise
    return proc, chans
