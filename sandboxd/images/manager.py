"""Pulls and loads end to end: policy-free orchestration over the store, registry and worker.

Who may pull is the API's decision (``api/images.py``); this class enforces the admin's
limits: the registry allow-list, the store's size, how many pulls run at once (more are
refused with 429, never queued without bound), how many layers download and unpack at once.

Concurrency: one pull per reference at a time (a second caller joins the first and gets its
progress too); one download + unpack per layer at a time across all pulls (keyed by diff id).
Downloads stream through the io lane (``RegistryClient``); unpacking runs in a worker process per
layer (``worker.py``), at most ``unpack_workers`` at once. Nothing slow runs on the loop.

Progress events are dicts, the same ones ``/api/images/pull`` streams as JSON lines:
``{"status": "resolving"|"manifest"|"waiting"|"exists"|"downloading"|"verifying"|
"extracting"|"complete"|"progress", ...}``; ``progress`` events carry ``done``, ``total`` and
``message`` ("pulling image: 3 of 5 layers") for the Hub's spawn progress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import blocking, metrics
from ..errors import Forbidden, HostError, InvalidImage, InvalidRequest, NotFound, QuotaExceeded
from ..spec import Guest
from . import archive, guest, oci, reference
from .settings import ImageSettings
from .store import ImageStore, ResolvedImage

if TYPE_CHECKING:
    import httpx

    from .registry import RegistryClient

log = logging.getLogger("sandboxd.images")

Event = dict[str, Any]
Listener = Callable[[Event], None]
#: Byte-progress events of one layer are sent at most this often.
PROGRESS_INTERVAL = 0.2
MAX_GUESTS = 1024


def progress_message(done: int, total: int) -> str:
    return f"pulling image: {done} of {total} layers"


@dataclass
class _Job:
    """A pull in progress, which later callers of the same reference join."""

    listeners: list[Listener] = field(default_factory=list)
    last: dict[str, Event] = field(default_factory=dict)  # latest event per layer (for joiners)
    task: asyncio.Task[dict[str, Any]] | None = None

    def emit(self, event: Event) -> None:
        self.last[event.get("layer") or event["status"]] = event
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a listener (a closed stream) must not break the pull
                log.exception("pull progress listener failed")


class _Progress:
    """Per-layer states and the "3 of 5" count, throttled into events."""

    def __init__(self, emit: Listener, total: int) -> None:
        self.emit = emit
        self.total = total
        self.done = 0
        self._sent: dict[str, float] = {}

    def layer(self, desc: oci.Descriptor, status: str, current: int | None = None) -> None:
        key = desc.digest[7:19]
        now = time.monotonic()
        recent = now - self._sent.get(key, 0.0) < PROGRESS_INTERVAL
        if status == "downloading" and current not in (0, desc.size) and recent:
            return
        self._sent[key] = now
        event: Event = {"status": status, "layer": key, "total": desc.size}
        if current is not None:
            event["current"] = current
        self.emit(event)

    def finished(self, desc: oci.Descriptor, status: str = "complete") -> None:
        self.done += 1
        self.layer(desc, status)
        self.summary()

    def summary(self) -> None:
        self.emit(
            {
                "status": "progress",
                "done": self.done,
                "total": self.total,
                "message": progress_message(self.done, self.total),
            }
        )


class ImageManager:
    """The images of one daemon: the store plus pulls, loads, removal and prune."""

    def __init__(self, state_dir: str, settings: Callable[[], ImageSettings]) -> None:
        self.settings = settings
        self.store = ImageStore(os.path.join(state_dir, "images"), settings().max_store_bytes)
        self.store.recover()
        self._http: httpx.AsyncClient | None = None
        self._jobs: dict[str, _Job] = {}
        self._layers: dict[str, list[Any]] = {}  # diff id -> [task, pulls waiting for it]
        self._active = 0
        self._unpack_slots = asyncio.Semaphore(settings().unpack_workers)
        self._workers: set[asyncio.subprocess.Process] = set()
        self._guests: dict[tuple[str, str], Guest] = {}  # images never change: resolved once
        self.update_metrics()

    # -- the phase B interface ------------------------------------------------------------

    def resolve(self, ref: str, check: bool = True) -> ResolvedImage:
        """``ref`` (a name, name@digest, an id) → id, lowerdirs top-first, config. 404 if absent.
        ``check=False``: the index only, no look at the disk (for the loop)."""
        return self.store.resolve(ref, self.settings().default_registry, check)

    def acquire(self, sandbox_id: str, image_id: str) -> None:
        self.store.acquire(sandbox_id, image_id)

    def release(self, sandbox_id: str) -> None:
        self.store.release(sandbox_id)

    def layer_dirs(self, image_id: str) -> tuple[str, ...]:
        """The image's layer directories, top first (from the index: check them off the loop)."""
        return self.store.resolve_id(image_id, check=False).lowerdirs

    def cached_guest(self, image: ResolvedImage) -> Guest | None:
        return self._guests.get((image.id, image.config.user))

    def guest_of(self, image: ResolvedImage) -> Guest:
        """Who the image's user is (its passwd read inside its layers). Blocking: a lane."""
        for path in image.lowerdirs:
            if not os.path.isdir(path):
                raise HostError(
                    f"image {image.id[:19]}: a layer is missing from the store; "
                    "remove the image and pull it again",
                    reason="image-broken",
                )
        found = guest.resolve(image.lowerdirs, image.config.user)
        if len(self._guests) >= MAX_GUESTS:
            self._guests.clear()
        self._guests[(image.id, image.config.user)] = found
        return found

    # -- listing --------------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        return [self.store.model(i) for i in self.store.image_ids()]

    def inspect(self, ref: str) -> dict[str, Any]:
        parsed = _parse_or_none(ref, self.settings().default_registry)
        return self.store.model(self.store.find(ref, parsed))

    # -- pull -----------------------------------------------------------------------------

    def check_registry(self, ref: str) -> reference.Reference:
        """Parse ``ref`` and refuse it (403) if its registry is not on the allow-list."""
        settings = self.settings()
        parsed = reference.parse(ref, settings.default_registry)
        if not settings.allowed(parsed.registry):
            raise Forbidden(
                f"registry {parsed.registry} is not in images.allowed_registries",
                reason="registry-denied",
            )
        return parsed

    async def pull(self, ref: str, on_event: Listener | None = None) -> dict[str, Any]:
        """Pull ``ref`` (joining a pull of it already running); the image's model."""
        parsed = self.check_registry(ref)
        key = str(parsed)
        job = self._jobs.get(key)
        if job is None:
            self._admit()
            job = _Job()
            self._jobs[key] = job
            job.task = asyncio.get_running_loop().create_task(self._run_pull(parsed, job))
            job.task.add_done_callback(lambda _: self._jobs.pop(key, None))
        elif on_event:
            for event in list(job.last.values()):
                on_event(event)
        if on_event:
            job.listeners.append(on_event)
        try:
            assert job.task is not None
            return await asyncio.shield(job.task)
        finally:
            if on_event in job.listeners:
                job.listeners.remove(on_event)

    def check_capacity(self) -> None:
        """429 ``too-many-pulls`` if ``max_concurrent_pulls`` pulls and loads are running."""
        most = self.settings().max_concurrent_pulls
        if self._active >= most:
            raise QuotaExceeded(
                f"{self._active} image pulls or loads are running (at most {most}); retry later",
                reason="too-many-pulls",
            )

    def _admit(self) -> None:
        self.check_capacity()
        self._active += 1

    async def _run_pull(self, parsed: reference.Reference, job: _Job) -> dict[str, Any]:
        began = time.monotonic()
        try:
            model = await self._pull(parsed, job.emit)
        except BaseException:
            metrics.observe_image_pull("pull", "failure", time.monotonic() - began)
            raise
        finally:
            self._active -= 1
            await self._settle()
        metrics.observe_image_pull("pull", "success", time.monotonic() - began)
        log.info("pulled %s as %s in %.1fs", parsed, model["id"], time.monotonic() - began)
        return model

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            # httpx (and what it pulls in) loads at the first pull, not at every daemon start
            from .registry import new_http_client

            self._http = new_http_client(self.settings().timeout_seconds)
        return self._http

    async def _pull(self, parsed: reference.Reference, emit: Listener) -> dict[str, Any]:
        from .registry import RegistryClient

        settings = self.settings()
        client = RegistryClient(
            self._client(),
            settings.registry(parsed.registry),
            parsed.repository,
            settings.timeout_seconds,
        )
        emit({"status": "resolving", "ref": str(parsed)})
        top = await client.manifest(parsed.reference, settings.max_manifest_bytes)
        fetched, doc = top, oci.load_json(top.data, "manifest")
        if top.media_type in oci.INDEXES:
            want = settings.target_platform()
            chosen = oci.choose_platform(oci.parse_index(doc), want)
            if chosen is None:
                raise NotFound(
                    f"{parsed}: no manifest for {'/'.join(p for p in want if p)} in the index",
                    reason="no-matching-platform",
                )
            fetched = await client.manifest(chosen.digest, settings.max_manifest_bytes)
            oci.verify(fetched.data, chosen.digest, chosen.size, "manifest")
            doc = oci.load_json(fetched.data, "manifest")
        manifest = oci.parse_manifest(doc, settings.max_layers)
        config_raw = await client.blob_bytes(manifest.config, oci.MAX_CONFIG_BYTES)
        config = _config_for(config_raw, len(manifest.layers))
        names = [parsed.tagged] if parsed.tag or not parsed.digest else []
        names.append(f"{parsed.name}@{top.digest}")

        async def fetch(desc: oci.Descriptor, diff_id: str, progress: _Progress) -> None:
            await self._layer_once(diff_id, lambda: self._download(client, desc, diff_id, progress))

        return await self._assemble(
            manifest, config, config_raw, fetched, names, "pull", emit, fetch
        )

    async def _assemble(
        self,
        manifest: oci.Manifest,
        config: oci.ImageConfig,
        config_raw: bytes,
        fetched: Any,
        names: list[str],
        source: str,
        emit: Listener,
        fetch: Callable[[oci.Descriptor, str, _Progress], Awaitable[None]],
    ) -> dict[str, Any]:
        """Get the missing layers (``fetch``), then store the blobs and record the image."""
        store = self.store
        image_id = manifest.config.digest
        pairs = list(zip(manifest.layers, config.diff_ids, strict=True))
        missing = [(d, i) for d, i in pairs if not store.has_layer(i)]
        emit({"status": "manifest", "id": image_id, "layers": len(pairs), "missing": len(missing)})
        store.max_bytes = self.settings().max_store_bytes  # follows a config reload
        store.check_room(sum(d.size for d, _ in missing), f"image {image_id[:19]}")
        try:
            return await self._assemble_pinned(
                manifest, config, config_raw, fetched, names, source, emit, fetch
            )
        except BaseException:
            # a failed pull leaves nothing behind: layers it committed that no image uses go
            store.drop_unreferenced(d for _, d in missing)
            raise

    async def _assemble_pinned(
        self,
        manifest: oci.Manifest,
        config: oci.ImageConfig,
        config_raw: bytes,
        fetched: Any,
        names: list[str],
        source: str,
        emit: Listener,
        fetch: Callable[[oci.Descriptor, str, _Progress], Awaitable[None]],
    ) -> dict[str, Any]:
        store = self.store
        image_id = manifest.config.digest
        pairs = list(zip(manifest.layers, config.diff_ids, strict=True))
        missing = [(d, i) for d, i in pairs if not store.has_layer(i)]
        progress = _Progress(emit, len(pairs))
        keep = [*config.diff_ids, image_id, *([fetched.digest] if fetched.digest else [])]
        with store.pinned(keep):
            for desc, diff_id in pairs:
                if (desc, diff_id) in missing:
                    progress.layer(desc, "waiting")
                else:
                    progress.finished(desc, "exists")
            limit = asyncio.Semaphore(self.settings().layer_downloads)

            async def one(desc: oci.Descriptor, diff_id: str) -> None:
                async with limit:
                    await fetch(desc, diff_id, progress)
                progress.finished(desc)

            try:
                async with asyncio.TaskGroup() as group:
                    for desc, diff_id in missing:
                        group.create_task(one(desc, diff_id))
            except BaseExceptionGroup as errors:
                raise _first(errors) from None
            if fetched.digest:
                await store.put_blob(fetched.digest, fetched.data)
            await store.put_blob(image_id, config_raw)
            store.add_image(
                image_id,
                fetched.digest,
                fetched.media_type,
                config_raw,
                config.diff_ids,
                names,
                source,
            )
        return store.model(image_id)

    async def _layer_once(self, diff_id: str, make: Callable[[], Awaitable[None]]) -> None:
        """Fetch + unpack a layer once, however many pulls want it at the same time; when the
        last one waiting gives up (its pull failed), the work is cancelled."""
        entry = self._layers.get(diff_id)
        if entry is None:
            task = asyncio.ensure_future(make())
            entry = self._layers[diff_id] = [task, 0]
            task.add_done_callback(lambda _: self._layers.pop(diff_id, None))
        entry[1] += 1
        try:
            await asyncio.shield(entry[0])
        finally:
            entry[1] -= 1
            if not entry[1] and not entry[0].done():
                entry[0].cancel()
                # let it clean up (kill its worker, trash its temp dir) before the error goes up
                await asyncio.wait([entry[0]])

    async def _download(
        self, client: RegistryClient, desc: oci.Descriptor, diff_id: str, progress: _Progress
    ) -> None:
        if self.store.has_layer(diff_id):
            return
        work = self.store.new_tmp()
        try:
            blob = os.path.join(work, "blob")
            progress.layer(desc, "downloading", 0)
            await client.download(desc, blob, lambda n: progress.layer(desc, "downloading", n))
            progress.layer(desc, "extracting")
            await self._unpack_into(work, {"blob": blob}, diff_id)
        except BaseException:
            self.store._to_trash(work)
            raise

    async def _unpack_into(self, work: str, job: dict[str, Any], diff_id: str) -> None:
        """Unpack in a worker into ``<work>/diff`` and commit the layer."""
        settings = self.settings()
        room = self.store.check_room(0, f"layer {diff_id[:19]}")
        job = {
            **job,
            "dest": os.path.join(work, "diff"),
            "diff_id": diff_id,
            "max_bytes": min(settings.max_layer_bytes, room),
            "max_entries": settings.max_layer_entries,
        }
        result = await self._run_worker(job)
        self.store.commit_layer(work, diff_id, result["size"], result["entries"])

    async def _run_worker(self, job: dict[str, Any]) -> dict[str, Any]:
        async with self._unpack_slots:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-I",
                "-m",
                "sandboxd.images.worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            self._workers.add(proc)
            try:
                async with asyncio.timeout(self.settings().unpack_timeout_seconds):
                    out, err = await proc.communicate(json.dumps(job).encode())
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise InvalidImage(
                    "unpacking a layer took longer than images.unpack_timeout_seconds",
                    reason="layer-too-slow",
                ) from None
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise
            finally:
                self._workers.discard(proc)
        try:
            answer = json.loads(out) if proc.returncode == 0 else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            tail = err.decode(errors="replace").strip()[-400:]
            raise HostError(
                f"the unpack worker failed ({proc.returncode}): {tail}", reason="unpack"
            )
        if "error" in answer:
            error = answer["error"]
            if error.get("reason") == "host-error":
                raise HostError(error["message"], reason="unpack")
            raise InvalidImage(error["message"], reason=error.get("reason", "unsafe-layer"))
        return answer["ok"]

    async def _settle(self) -> None:
        """After a pull, load, rm or prune: delete what went to the trash; update metrics."""
        with contextlib.suppress(Exception):
            await self.store.empty_trash()
        self.update_metrics()

    def update_metrics(self) -> None:
        counts = self.store.counts()
        metrics.image_store(counts["bytes"], counts["layers"], counts["images"])

    # -- load -----------------------------------------------------------------------------

    async def load(
        self, upload: str, tag: str | None = None, on_event: Listener | None = None
    ) -> list[dict[str, Any]]:
        """Load every image of an archive file (docker save, OCI layout tar, maybe gzip/zstd)."""
        settings = self.settings()
        names = [reference.parse(tag, settings.default_registry).tagged] if tag else []
        self._admit()
        began = time.monotonic()
        work = self.store.new_tmp()
        emit = on_event or (lambda _: None)
        try:
            tar = os.path.join(work, "archive.tar")
            unpacked = await blocking.run(
                archive.decompress_to, upload, tar, settings.max_load_bytes
            )
            path = tar if unpacked else upload
            images = await blocking.run(
                archive.read_images,
                path,
                settings.max_manifest_bytes,
                settings.target_platform(),
            )
            if names and len(images) != 1:
                raise InvalidRequest(
                    f"tag: the archive holds {len(images)} images, a tag needs exactly one"
                )
            models = [await self._load_one(path, image, names, emit) for image in images]
        except BaseException:
            metrics.observe_image_pull("load", "failure", time.monotonic() - began)
            raise
        finally:
            self._active -= 1
            self.store._to_trash(work)
            await self._settle()
        metrics.observe_image_pull("load", "success", time.monotonic() - began)
        return models

    async def _load_one(
        self, path: str, image: archive.ArchiveImage, extra: list[str], emit: Listener
    ) -> dict[str, Any]:
        settings = self.settings()
        config = _config_for(image.config_raw, len(image.layers))
        names = [_name(n, settings.default_registry) for n in image.names] + extra
        layers = tuple(
            oci.Descriptor("", layer.digest or diff_id, layer.size or layer.length)
            for layer, diff_id in zip(image.layers, config.diff_ids, strict=True)
        )
        manifest = oci.Manifest(
            image.manifest_type, oci.Descriptor("", image.image_id, len(image.config_raw)), layers
        )
        by_diff = dict(zip(config.diff_ids, image.layers, strict=True))

        async def fetch(desc: oci.Descriptor, diff_id: str, progress: _Progress) -> None:
            layer = by_diff[diff_id]

            async def make() -> None:
                if self.store.has_layer(diff_id):
                    return
                work = self.store.new_tmp()
                try:
                    progress.layer(desc, "extracting")
                    job = {
                        "blob": path,
                        "offset": layer.offset,
                        "length": layer.length,
                        "digest": layer.digest,
                        "size": layer.size,
                    }
                    await self._unpack_into(work, job, diff_id)
                except BaseException:
                    self.store._to_trash(work)
                    raise

            await self._layer_once(diff_id, make)

        fetched = archive_fetched(image)
        return await self._assemble(
            manifest, config, image.config_raw, fetched, names, "load", emit, fetch
        )

    # -- removal --------------------------------------------------------------------------

    async def remove(self, ref: str, force: bool = False) -> dict[str, Any]:
        parsed = _parse_or_none(ref, self.settings().default_registry)
        out = self.store.remove(ref, parsed, force)
        await self._settle()
        return out

    async def prune(self) -> dict[str, Any]:
        out = self.store.prune()
        await self._settle()
        return out

    async def close(self) -> None:
        for job in list(self._jobs.values()):
            if job.task:
                job.task.cancel()
        for proc in list(self._workers):
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        for job in list(self._jobs.values()):
            if job.task:
                with contextlib.suppress(BaseException):
                    await job.task
        if self._layers:
            await asyncio.wait([entry[0] for entry in self._layers.values()])
        if self._http is not None:
            await self._http.aclose()
        with contextlib.suppress(Exception):
            await self.store.empty_trash()
        self.store.close()


@dataclass(frozen=True)
class _Fetched:
    media_type: str
    digest: str
    data: bytes


def archive_fetched(image: archive.ArchiveImage) -> _Fetched:
    return _Fetched(image.manifest_type, image.manifest_digest, image.manifest_raw)


def _first(group: BaseExceptionGroup) -> BaseException:
    """The error that failed a layer (the others were cancelled because of it)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, asyncio.CancelledError):
            return exc
    return group.exceptions[0]


def _config_for(raw: bytes, layers: int) -> oci.ImageConfig:
    config = oci.parse_config(oci.load_json(raw, "config"))
    if len(config.diff_ids) != layers:
        raise InvalidImage(
            f"the config lists {len(config.diff_ids)} layers, the manifest {layers}",
            reason="bad-manifest",
        )
    return config


def _name(name: str, default_registry: str) -> str:
    return reference.parse(name, default_registry).tagged


def _parse_or_none(ref: str, default_registry: str) -> reference.Reference | None:
    try:
        return reference.parse(ref, default_registry)
    except InvalidRequest:
        return None


def for_daemon(sbx: Any) -> ImageManager:
    """The daemon's image manager (made at start by ``Sandboxd``: its holds are recovered)."""
    manager: ImageManager = sbx.images
    return manager
