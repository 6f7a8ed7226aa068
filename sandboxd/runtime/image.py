"""The image step: which root filesystem a sandbox gets, and the hold that keeps it.

The built-in ``host`` image is a skeleton layer plus read-only host binds (``rootfs.py``). An OCI
image was resolved at admission to an id of the store (``spec.image_id``, with the image's
Env/WorkingDir/Entrypoint/Cmd and user already applied to the spec: ``images/run.py``); here
the sandbox takes a *hold* on it (so neither ``image rm`` nor ``prune`` removes it while the
sandbox lives, and a restarted daemon knows who holds what), and hands the layer directories,
top first, with the id maps of the tenant (``idmap.py``) to the root plan. ``release`` drops the
hold: a failed start, an exit, a removal, recovery and cleanup all end there (idempotent).

The store's index is touched on the loop (small local SQLite writes, as the store does
everywhere); checking the layer directories on disk and the idmap probe run in the io lane.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Protocol

from .. import blocking
from ..errors import HostError
from ..spec import SandboxSpec
from . import idmap, rootfs
from .step import Step

if TYPE_CHECKING:
    from .sandbox import Build

log = logging.getLogger("sandboxd.runtime")


class ImageSource(Protocol):
    """What the step needs of the image manager (``images.manager.ImageManager``)."""

    def acquire(self, sandbox_id: str, image_id: str) -> None: ...

    def release(self, sandbox_id: str) -> None: ...

    def layer_dirs(self, image_id: str) -> tuple[str, ...]: ...


class IdmapSupport:
    """Whether this host can mount idmapped layers under overlayfs: probed once, in a lane."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._task: asyncio.Task[str | None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                blocking.run(idmap.probe, self.directory)
            )
            self._task.add_done_callback(_report)

    async def problem(self) -> str | None:
        """None if supported, else why not (the same answer for the daemon's lifetime)."""
        self.start()
        assert self._task is not None
        return await asyncio.shield(self._task)


def _report(task: asyncio.Task[str | None]) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        log.error("idmap probe failed: %s", task.exception())
    elif task.result():
        log.warning("OCI images cannot run on this host: %s", task.result())
    else:
        log.info("idmapped image layers work here: OCI images can run")


def _check_layers(lowers: tuple[str, ...]) -> None:
    for path in lowers:
        if not os.path.isdir(path):
            raise HostError(
                f"an image layer is missing from the store ({path}); "
                "remove the image and pull it again",
                reason="image-broken",
            )


class ImageStep(Step):
    name = "image"

    async def prepare(self, build: Build) -> None:
        spec, rt = build.spec, self.rt
        if not spec.image_id:
            build.image = rt.image(spec.image)  # the built-in host image (404 otherwise)
            return
        if rt.images is None:
            raise HostError("this daemon has no image store", reason="image-store")
        why = await rt.idmap.problem()
        if why:
            raise HostError(f"cannot run image {spec.image}: {why}", reason="idmap-unsupported")
        rt.images.acquire(spec.id, spec.image_id)  # 404 image-not-found if it went meanwhile
        lowers = rt.images.layer_dirs(spec.image_id)
        await blocking.run(_check_layers, lowers)
        build.image = rootfs.Image(
            name=spec.image,
            layers=lowers,
            python=None,
            uid_map=idmap.id_map(spec.guest.uid, spec.uid, rt.id_span),
            gid_map=idmap.id_map(spec.guest.gid, spec.uid, rt.id_span),
        )

    async def release(self, spec: SandboxSpec) -> None:
        if self.rt.images is not None:
            self.rt.images.release(spec.id)
