"""Handlers of /api/images: list, inspect, pull (progress streamed), load (upload), rm, prune.

Policy: every user may list and inspect the images (they are shared, like a host's docker
images). Pulling is for admins, and for users whose profile (``profile`` in the body, default
``default``, one they may use) has ``allow_pull = true``; the registry allow-list applies to
everyone. Loading an archive bypasses the registries, and removing or pruning affects every
user: admin only.

``POST /api/images/pull`` with ``"stream": true`` answers 200 at once and then one JSON object
per line (``application/x-ndjson``): the manager's progress events, and last either
``{"status": "done", "image": {...}}`` or ``{"status": "error", "reason", "message"}``.
Refusals found before the pull starts (policy, a bad reference, the allow-list, too many
pulls) are ordinary 4xx answers. Without ``stream`` the answer is the image (201) at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

from tornado.iostream import StreamClosedError

from .. import blocking
from ..errors import Forbidden, InvalidRequest, SandboxdError, TooLarge
from ..images.manager import ImageManager, for_daemon
from ..models.requests import ForceQuery, ImageLoadQuery, ImagePull, flag
from ..models.types import validate
from ..state import User
from .base import BaseHandler

#: Events a slow streaming client may fall behind by before byte progress is dropped for it.
STREAM_BACKLOG = 256


def _require_admin(actor: User, what: str) -> None:
    if not actor.admin:
        raise Forbidden(f"{what} needs an admin token", reason="not-admin")


def check_pull_allowed(handler: BaseHandler, actor: User, profile_name: Any) -> None:
    """Admins may pull; others only under a profile they may use that has ``allow_pull``."""
    if actor.admin:
        return
    if profile_name is not None and not isinstance(profile_name, str):
        raise InvalidRequest("profile: expected a profile name")
    config = handler.sbx.config
    profile = config.profile(profile_name or "default")
    allowed = config.user_profiles.get(actor.name)
    if allowed is not None and profile.name not in allowed:
        raise Forbidden(
            f"user {actor.name} may not use profile {profile.name!r}", reason="profile-denied"
        )
    if not profile.allow_pull:
        raise Forbidden(
            f"pulling images needs an admin token or a profile with allow_pull "
            f"(profile {profile.name!r} has not)",
            reason="pull-denied",
        )


class _ImageHandler(BaseHandler):
    @property
    def images(self) -> ImageManager:
        return for_daemon(self.sbx)


class ImagesHandler(_ImageHandler):
    def get(self) -> None:
        self.current()
        self.send(self.images.list())


class ImageHandler(_ImageHandler):
    def get(self, ref: str) -> None:
        self.current()
        self.send(self.images.inspect(ref))

    async def delete(self, ref: str) -> None:
        actor = self.current()
        _require_admin(actor, "removing images")
        force = flag(self.query(ForceQuery).force)
        out = await self.images.remove(ref, force=force)
        self.sbx.store.audit(actor.name, "image-rm", ref, json.dumps(out["deleted"]))
        self.send(out)


class PruneHandler(_ImageHandler):
    async def post(self) -> None:
        actor = self.current()
        _require_admin(actor, "pruning images")
        out = await self.images.prune()
        self.sbx.store.audit(actor.name, "image-prune", "", str(out["bytes_freed"]))
        self.send(out)


class PullHandler(_ImageHandler):
    _closed = False

    async def post(self) -> None:
        actor = self.current()
        req = validate(ImagePull, self.body())
        check_pull_allowed(self, actor, req.profile)
        self.images.check_registry(req.ref)
        if not req.stream:
            model = await self.images.pull(req.ref)
            self.sbx.store.audit(actor.name, "image-pull", req.ref, model["id"])
            self.send(model, 201)
            return
        await self._stream(actor, req.ref)

    async def _stream(self, actor: User, ref: str) -> None:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        def listen(event: dict[str, Any]) -> None:
            if queue.qsize() < STREAM_BACKLOG or event["status"] not in ("downloading",):
                queue.put_nowait(event)

        task = asyncio.ensure_future(self.images.pull(ref, listen))
        task.add_done_callback(lambda _: queue.put_nowait(None))
        try:
            # a refusal before the first event (too many pulls) is still a plain 4xx answer
            first = await queue.get()
        except asyncio.CancelledError:
            task.cancel()
            raise
        if first is None and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
        self.set_status(200)
        self.set_header("Content-Type", "application/x-ndjson")
        event = first
        while event is not None:
            await self._line(event)
            event = await queue.get()
        try:
            model = task.result()
        except SandboxdError as exc:
            await self._line({"status": "error", **exc.to_json()})
        except Exception:
            await self._line(
                {"status": "error", "reason": "internal-error", "message": "see the daemon log"}
            )
            raise
        else:
            self.sbx.store.audit(actor.name, "image-pull", ref, model["id"])
            await self._line({"status": "done", "image": model})
        if not self._closed:
            self.finish()

    async def _line(self, event: dict[str, Any]) -> None:
        if self._closed:
            return  # the client went away; the pull goes on (and others may be waiting)
        self.write(json.dumps(event) + "\n")
        with contextlib.suppress(StreamClosedError):
            await self.flush()

    def on_connection_close(self) -> None:
        self._closed = True


class LoadHandler(_ImageHandler):
    """``POST /api/images/load[?tag=REF]``: the body is the archive (tar, maybe gzip/zstd),
    streamed to a file in the store's tmp dir (through the io lane), at most
    ``images.max_load_bytes``."""

    _fh: Any = None
    _work: str | None = None
    _received = 0

    def max_body(self) -> int:
        return self.sbx.config.images.max_load_bytes

    async def prepare(self) -> None:
        # gigabytes may follow: who may load, and whether a slot is free, is settled before a
        # byte of the body is read (the refusal closes the connection, the body stays unread)
        try:
            actor = self.current()
            _require_admin(actor, "loading images")
            self.images.check_capacity()
        except SandboxdError:
            self.set_header("Connection", "close")
            raise
        super().prepare()  # a Content-Length over the limit: 413; caps a chunked body too
        self._work = self.images.store.new_tmp()
        self._fh = await blocking.run(open, os.path.join(self._work, "upload"), "wb")

    async def data_received(self, chunk: bytes) -> None:  # type: ignore[override]
        if self._fh is None:
            return
        self._received += len(chunk)
        if self._received > self.max_body():  # tornado stops at the limit; belt and braces
            raise TooLarge(f"the archive is over images.max_load_bytes ({self.max_body()})")
        await blocking.run(self._fh.write, chunk)

    async def post(self) -> None:
        assert self._fh is not None and self._work is not None
        await blocking.run(self._fh.close)
        actor = self.current()
        tag = self.query(ImageLoadQuery).tag
        models = await self.images.load(os.path.join(self._work, "upload"), tag=tag)
        self._cleanup()
        for model in models:
            self.sbx.store.audit(actor.name, "image-load", ",".join(model["names"]), model["id"])
        self.send({"images": models}, 201)

    def on_finish(self) -> None:
        self._cleanup()

    def on_connection_close(self) -> None:
        self._cleanup()

    def _cleanup(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None and not fh.closed:
            with contextlib.suppress(Exception):
                fh.close()
        if self._work is not None:
            store = self.images.store
            store._to_trash(self._work)
            self._work = None
            asyncio.get_running_loop().create_task(store.empty_trash())
