"""Idle culling, per profile (jupyter_server's rule, reference/jupyter.md §1.5).

A kernel is culled when its profile has ``idle_timeout > 0``, it has had no execution and no
client message for that long, and (``cull_busy`` or it is not busy) and (``cull_connected`` or
no client is connected). Dead kernels are culled once idle for the timeout too. The profile is
read from the live config at every pass, so a SIGHUP reload applies at once. Lifetimes are
enforced by the daemon's housekeeping; a kernel whose sandbox was stopped that way is culled by
the manager.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .manager import Kernel, KernelManager

log = logging.getLogger("sandboxd.kernels")

INTERVAL = 1.0


def should_cull(kernel: Kernel, manager: KernelManager, now: float) -> str | None:
    profile = manager.sbx.config.profiles.get(kernel.request.kernelspec.profile)
    if profile is None or profile.idle_timeout <= 0 or kernel.busy_op:
        return None
    idle = now - kernel.last_activity
    if idle <= profile.idle_timeout:
        return None
    if kernel.execution_state == "dead":
        return f"dead and idle for {idle:.0f}s"
    if kernel.execution_state == "busy" and not profile.cull_busy:
        return None
    if kernel.clients and not profile.cull_connected:
        return None
    return f"idle for {idle:.0f}s (timeout {profile.idle_timeout:g}s)"


async def run(manager: KernelManager) -> None:
    while True:
        await asyncio.sleep(INTERVAL)
        now = time.time()
        for kernel in list(manager.kernels.values()):
            why = should_cull(kernel, manager, now)
            if why is None:
                continue
            try:
                await manager.cull(kernel, why)
            except Exception:
                log.exception("culling kernel %s failed", kernel.id)
