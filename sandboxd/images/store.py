"""The image store under ``<state_dir>/images``: content-addressed, shared, reference-counted.

Layout (everything root-only, 0700 at the top)::

    index.db                  SQLite: images, names, layers, image→layer, sandbox holds, blobs
    blobs/sha256/<hex>        manifests and configs, by digest
    layers/<hex>/diff         one unpacked layer, <hex> of its diff id (the uncompressed tar)
    l/<ID>                    -> ../layers/<hex>/diff: a 12-letter name per layer, so an
                              overlay lowerdir of a deep image fits the mount option (Docker's l/)
    tmp/                      downloads and unpacks in progress; emptied at start

A layer is unpacked into ``tmp/`` and renamed into ``layers/`` only when it is complete and
its diff id checked, then linked and recorded: a failed pull leaves nothing behind, and a
crash between the steps is repaired at the next start (``recover``). Deleting works the other
way round: forget the rows, rename the directory into ``tmp/``, then remove it off the loop.

Reference counting: an image holds its layers (``image_layers``); a sandbox holds an image
(``holds``, via ``acquire``/``release``). ``prune`` removes images with no name and no hold,
then layers no image uses, then blobs nothing names. The index is touched from the daemon's
event loop only (small local writes); slow file work goes to the io lane (``blocking.run``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .. import blocking
from ..errors import Conflict, HostError, InvalidRequest, NotFound, QuotaExceeded
from . import oci
from .reference import Reference
from .reference import parse as parse_reference
from .settings import DOCKER_HUB

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,              -- sha256:<config digest>
    manifest_digest TEXT NOT NULL,
    manifest_type TEXT NOT NULL,
    config TEXT NOT NULL,             -- the config JSON as stored in blobs/
    size INTEGER NOT NULL,            -- unpacked bytes of its layers
    source TEXT NOT NULL,             -- pull | load
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS names (
    name TEXT PRIMARY KEY,            -- registry/repo:tag or registry/repo@sha256:...
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS layers (
    diff_id TEXT PRIMARY KEY,
    link TEXT UNIQUE NOT NULL,
    size INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS image_layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,        -- 0 = the bottom layer
    diff_id TEXT NOT NULL REFERENCES layers(diff_id),
    PRIMARY KEY (image_id, position)
);
CREATE TABLE IF NOT EXISTS holds (
    sandbox_id TEXT PRIMARY KEY,
    image_id TEXT NOT NULL REFERENCES images(id),
    since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL
);
"""

LINK_LETTERS = 12
log = logging.getLogger("sandboxd.images")


@dataclass(frozen=True)
class ResolvedImage:
    """What a sandbox needs to run an image (phase B): the overlay stack and the config.

    ``lowerdirs`` are absolute paths through the short links, top layer first, as overlayfs'
    ``lowerdir=`` wants them; ``links`` are the same relative to ``root`` (``l/<ID>``), for a
    mount made from a chdir into ``root`` or with ``lowerdir+`` when the option gets long.
    """

    id: str
    names: tuple[str, ...]
    root: str
    links: tuple[str, ...]
    lowerdirs: tuple[str, ...]
    config: oci.ImageConfig


@dataclass(frozen=True)
class LayerInfo:
    diff_id: str
    link: str
    size: int
    entries: int


def _hex(digest: str) -> str:
    return digest.split(":", 1)[1]


def new_link() -> str:
    return base64.b32encode(secrets.token_bytes(10)).decode()[:LINK_LETTERS]


class ImageStore:
    """One instance's image store; see the module docstring for the layout and the rules."""

    def __init__(self, root: str, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        for sub in ("", "blobs/sha256", "layers", "l", "tmp"):
            os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)
        self.db = sqlite3.connect(os.path.join(root, "index.db"), isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.execute("PRAGMA journal_mode = WAL")
        # no fsync per commit (holds are written on the loop at every start and release); a
        # crash of the process loses nothing, a power cut at most the last holds (no sandbox
        # survives one anyway), as the state database does
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.executescript(SCHEMA)
        self._trash: list[str] = []
        self._pins: dict[str, int] = {}  # layers and blobs a pull in progress will need

    @contextlib.contextmanager
    def pinned(self, digests: Iterable[str]) -> Iterator[None]:
        """Keep ``digests`` (diff ids, blob digests) from prune while an image is assembled."""
        digests = list(digests)
        for d in digests:
            self._pins[d] = self._pins.get(d, 0) + 1
        try:
            yield
        finally:
            for d in digests:
                self._pins[d] -= 1
                if not self._pins[d]:
                    del self._pins[d]

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def close(self) -> None:
        self.db.close()

    # -- start-up repair ------------------------------------------------------------------

    def recover(self) -> list[str]:
        """Make disk and index agree after a crash; returns what was moved to the trash."""
        moved = [self._to_trash(self.path("tmp", n)) for n in os.listdir(self.path("tmp"))]
        known = {_hex(r["diff_id"]): r for r in self.db.execute("SELECT diff_id, link FROM layers")}
        for name in os.listdir(self.path("layers")):
            if name not in known:  # renamed into place, never recorded
                moved.append(self._to_trash(self.path("layers", name)))
        used = {r["diff_id"] for r in self.db.execute("SELECT diff_id FROM image_layers")}
        for hexid, row in known.items():
            if os.path.isdir(self.path("layers", hexid, "diff")):
                continue
            if row["diff_id"] in used:  # kept, so its images fail clearly until removed
                log.error("image layer %s is missing from %s", row["diff_id"], self.root)
            else:
                self.db.execute("DELETE FROM layers WHERE diff_id = ?", (row["diff_id"],))
        links = {r["link"]: _hex(r["diff_id"]) for r in self.db.execute("SELECT * FROM layers")}
        for name in os.listdir(self.path("l")):
            if links.get(name) is None or os.readlink(self.path("l", name)) != _target(links[name]):
                os.unlink(self.path("l", name))
        for link, hexid in links.items():
            if not os.path.islink(self.path("l", link)) and os.path.isdir(
                self.path("layers", hexid)
            ):
                os.symlink(_target(hexid), self.path("l", link))
        for row in self.db.execute("SELECT digest FROM blobs").fetchall():
            if not os.path.exists(self.blob_path(row["digest"])):
                self.db.execute("DELETE FROM blobs WHERE digest = ?", (row["digest"],))
        return [m for m in moved if m]

    def _to_trash(self, path: str) -> str:
        """Rename ``path`` out of the way (atomic); it is deleted later by ``empty_trash``."""
        dest = self.path("tmp", f"trash-{secrets.token_hex(6)}")
        try:
            os.rename(path, dest)
        except FileNotFoundError:
            return ""
        self._trash.append(dest)
        return dest

    async def empty_trash(self) -> None:
        trash, self._trash = self._trash, []
        if trash:
            await blocking.run(_remove_all, trash)

    # -- blobs (manifests, configs) --------------------------------------------------------

    def blob_path(self, digest: str) -> str:
        return self.path("blobs", "sha256", _hex(digest))

    async def put_blob(self, digest: str, data: bytes) -> None:
        oci.verify(data, digest)
        await blocking.run(_write_atomic, self.blob_path(digest), data, self.path("tmp"))
        self.db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?)", (digest, len(data)))

    # -- layers -----------------------------------------------------------------------------

    def has_layer(self, diff_id: str) -> bool:
        row = self.db.execute("SELECT 1 FROM layers WHERE diff_id = ?", (diff_id,)).fetchone()
        return row is not None

    def layer(self, diff_id: str) -> LayerInfo | None:
        row = self.db.execute("SELECT * FROM layers WHERE diff_id = ?", (diff_id,)).fetchone()
        return LayerInfo(row["diff_id"], row["link"], row["size"], row["entries"]) if row else None

    def layer_dir(self, diff_id: str) -> str:
        return self.path("layers", _hex(diff_id), "diff")

    def new_tmp(self) -> str:
        """A fresh directory under ``tmp/`` for one download or unpack (root-only)."""
        path = self.path("tmp", secrets.token_hex(8))
        os.mkdir(path, 0o700)
        return path

    def commit_layer(self, work: str, diff_id: str, size: int, entries: int) -> LayerInfo:
        """Move ``<work>/diff`` (a complete, verified unpack) into place and record it.

        If another pull committed the same layer meanwhile, ours is thrown away: same diff id,
        same content."""
        existing = self.layer(diff_id)
        if existing is not None:
            self._to_trash(work)
            return existing
        for name in os.listdir(work):
            if name != "diff":
                self._to_trash(os.path.join(work, name))
        dest = self.path("layers", _hex(diff_id))
        try:
            os.rename(work, dest)
        except OSError:
            if not os.path.isdir(os.path.join(dest, "diff")):
                raise
            self._to_trash(work)
        link = new_link()
        while self.db.execute("SELECT 1 FROM layers WHERE link = ?", (link,)).fetchone():
            link = new_link()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path("l", link))
        os.symlink(_target(_hex(diff_id)), self.path("l", link))
        self.db.execute(
            "INSERT INTO layers VALUES (?, ?, ?, ?, ?)", (diff_id, link, size, entries, time.time())
        )
        return LayerInfo(diff_id, link, size, entries)

    # -- images and names -----------------------------------------------------------------

    def add_image(
        self,
        image_id: str,
        manifest_digest: str,
        manifest_type: str,
        config_raw: bytes,
        diff_ids: Iterable[str],
        names: Iterable[str],
        source: str,
    ) -> None:
        """Record an image whose layers and blobs are all in place, and point ``names`` at it
        (a name that pointed at another image moves, as ``docker pull`` retags)."""
        diff_ids = list(diff_ids)
        size = 0
        for diff_id in diff_ids:
            layer = self.layer(diff_id)
            if layer is None:
                raise HostError(f"layer {diff_id} is not in the store", reason="image-store")
            size += layer.size
        with self.db:
            self.db.execute("BEGIN")
            if not self.db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone():
                self.db.execute(
                    "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        image_id,
                        manifest_digest,
                        manifest_type,
                        config_raw.decode(),
                        size,
                        source,
                        time.time(),
                    ),
                )
                self.db.executemany(
                    "INSERT INTO image_layers VALUES (?, ?, ?)",
                    [(image_id, i, d) for i, d in enumerate(diff_ids)],
                )
            for name in names:
                self.db.execute("INSERT OR REPLACE INTO names VALUES (?, ?)", (name, image_id))

    def find(self, ref: str, parsed: Reference | None) -> str:
        """The image id a user's reference means: a name, ``name@digest``, an id or its prefix."""
        return self._lookup(ref, parsed)[0]

    def _lookup(self, ref: str, parsed: Reference | None) -> tuple[str, str | None]:
        """(image id, the name it was found by, or None when found by id)."""
        if parsed is not None:
            name = self._name_for(parsed)
            row = self.db.execute("SELECT image_id FROM names WHERE name = ?", (name,)).fetchone()
            if row:
                return str(row["image_id"]), name
            if parsed.digest:  # name@digest of an image pulled under a tag only
                row = self.db.execute(
                    "SELECT id FROM images WHERE manifest_digest = ? AND id IN "
                    "(SELECT image_id FROM names WHERE name LIKE ?)",
                    (parsed.digest, f"{parsed.name}:%"),
                ).fetchone()
                if row:
                    return str(row["id"]), None
        prefix = ref.removeprefix("sha256:")
        if len(prefix) >= 12 and all(c in "0123456789abcdef" for c in prefix):
            rows = self.db.execute(
                "SELECT id FROM images WHERE id LIKE ?", (f"sha256:{prefix}%",)
            ).fetchall()
            if len(rows) == 1:
                return str(rows[0]["id"]), None
        raise NotFound(f"no such image: {ref}", reason="image-not-found")

    def names_of(self, image_id: str) -> list[str]:
        rows = self.db.execute(
            "SELECT name FROM names WHERE image_id = ? ORDER BY name", (image_id,)
        )
        return [r["name"] for r in rows]

    def diff_ids_of(self, image_id: str) -> list[str]:
        rows = self.db.execute(
            "SELECT diff_id FROM image_layers WHERE image_id = ? ORDER BY position", (image_id,)
        )
        return [r["diff_id"] for r in rows]

    def image_ids(self) -> list[str]:
        return [r["id"] for r in self.db.execute("SELECT id FROM images ORDER BY created")]

    def resolve(
        self, ref: str, default_registry: str = DOCKER_HUB, check: bool = True
    ) -> ResolvedImage:
        """Phase B's entry: a reference (name, name@digest, id, id prefix) → the image's id,
        its overlay lowerdirs (absolute, top first) and its config. 404 ``image-not-found``.
        ``check=False`` reads the index only (the caller checks the directories off the loop)."""
        try:
            parsed: Reference | None = parse_reference(ref, default_registry)
        except InvalidRequest:
            parsed = None
        return self.resolve_id(self.find(ref, parsed), check)

    def resolve_id(self, image_id: str, check: bool = True) -> ResolvedImage:
        row = self.db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise NotFound(f"no such image: {image_id}", reason="image-not-found")
        links = []
        for diff_id in reversed(self.diff_ids_of(image_id)):
            layer = self.layer(diff_id)
            if layer is None or (check and not os.path.isdir(self.layer_dir(diff_id))):
                raise HostError(
                    f"image {image_id}: layer {diff_id} is missing from the store; "
                    "remove the image and pull it again",
                    reason="image-broken",
                )
            links.append(f"l/{layer.link}")
        config = oci.parse_config(json.loads(row["config"]))
        return ResolvedImage(
            id=image_id,
            names=tuple(self.names_of(image_id)),
            root=self.root,
            links=tuple(links),
            lowerdirs=tuple(self.path(link) for link in links),
            config=config,
        )

    def model(self, image_id: str) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        if row is None:
            raise NotFound(f"no such image: {image_id}", reason="image-not-found")
        raw = json.loads(row["config"])
        config = oci.parse_config(raw)
        names = self.names_of(image_id)
        holds = self.db.execute(
            "SELECT COUNT(*) FROM holds WHERE image_id = ?", (image_id,)
        ).fetchone()[0]
        return {
            "id": image_id,
            "names": [n for n in names if "@" not in n],
            "digests": [n for n in names if "@" in n],
            "manifest_digest": row["manifest_digest"],
            "created": config.created or None,
            "added": row["created"],
            "size": row["size"],
            "os": config.os,
            "architecture": config.architecture,
            "layers": self.diff_ids_of(image_id),
            "config": config.to_json(),
            "source": row["source"],
            "sandboxes": holds,
        }

    # -- holds (called by the sandbox lifecycle) -------------------------------------------

    def acquire(self, sandbox_id: str, image_id: str) -> None:
        """``sandbox_id`` uses ``image_id`` from now on: neither rm nor prune will take it."""
        if not self.db.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone():
            raise NotFound(f"no such image: {image_id}", reason="image-not-found")
        self.db.execute(
            "INSERT OR REPLACE INTO holds VALUES (?, ?, ?)", (sandbox_id, image_id, time.time())
        )

    def release(self, sandbox_id: str) -> None:
        """The sandbox is gone; idempotent (a second release, or one for no hold, is a no-op)."""
        self.db.execute("DELETE FROM holds WHERE sandbox_id = ?", (sandbox_id,))

    def holds(self) -> dict[str, str]:
        return {r["sandbox_id"]: r["image_id"] for r in self.db.execute("SELECT * FROM holds")}

    # -- removal and garbage collection ---------------------------------------------------

    def remove(self, ref: str, parsed: Reference | None, force: bool = False) -> dict[str, Any]:
        """``docker rmi``: drop a name (or, given an id, all names); the image goes with its
        last name unless a sandbox holds it (409, or with ``force`` it stays, nameless, until
        released and pruned). Layers no other image uses go with it."""
        image_id, by_name = self._lookup(ref, parsed)
        names = self.names_of(image_id)
        drop = [by_name] if by_name else names
        last = set(drop) >= {n for n in names if "@" not in n}
        held = self.db.execute(
            "SELECT COUNT(*) FROM holds WHERE image_id = ?", (image_id,)
        ).fetchone()[0]
        if last and held and not force:
            raise Conflict(
                f"image {image_id[:19]} is used by {held} sandbox(es); remove them or force",
                reason="image-in-use",
            )
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("DELETE FROM names WHERE name = ?", [(n,) for n in drop])
            # a digest name of an image that has lost all its tags goes too (docker does)
            if last:
                self.db.execute("DELETE FROM names WHERE image_id = ?", (image_id,))
        out: dict[str, Any] = {"untagged": drop, "deleted": [], "layers": []}
        if last and not held:
            out["deleted"].append(image_id)
            self._delete_image(image_id)
            out["layers"] = self._delete_unused_layers()
        return out

    def _name_for(self, parsed: Reference) -> str:
        return f"{parsed.name}@{parsed.digest}" if parsed.digest else parsed.tagged

    def _delete_image(self, image_id: str) -> None:
        self.db.execute("DELETE FROM images WHERE id = ?", (image_id,))

    def _delete_unused_layers(self) -> list[str]:
        rows = self.db.execute(
            "SELECT diff_id FROM layers WHERE diff_id NOT IN (SELECT diff_id FROM image_layers)"
        ).fetchall()
        return self._delete_layers([r["diff_id"] for r in rows])

    def _delete_layers(self, diff_ids: list[str]) -> list[str]:
        gone = []
        for diff_id in diff_ids:
            layer = self.layer(diff_id)
            if layer is None or diff_id in self._pins:
                continue
            self.db.execute("DELETE FROM layers WHERE diff_id = ?", (diff_id,))
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path("l", layer.link))
            self._to_trash(self.path("layers", _hex(diff_id)))
            gone.append(diff_id)
        return gone

    def drop_unreferenced(self, diff_ids: Iterable[str]) -> list[str]:
        """Delete those of ``diff_ids`` that no image uses and no pull has pinned."""
        wanted = set(diff_ids)
        rows = self.db.execute(
            "SELECT diff_id FROM layers WHERE diff_id NOT IN (SELECT diff_id FROM image_layers)"
        ).fetchall()
        return self._delete_layers([r["diff_id"] for r in rows if r["diff_id"] in wanted])

    def _delete_unused_blobs(self) -> list[str]:
        used: set[str] = set()
        for row in self.db.execute("SELECT id, manifest_digest FROM images"):
            used.update((row["id"], row["manifest_digest"]))
        gone = [r["digest"] for r in self.db.execute("SELECT digest FROM blobs")]
        gone = [d for d in gone if d not in used and d not in self._pins]
        for digest in gone:
            self.db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
            self._to_trash(self.blob_path(digest))
        return gone

    def prune(self) -> dict[str, Any]:
        """Remove every image with no name and no hold, then what nothing uses any more."""
        freed = self.used_bytes()
        dangling = [
            r["id"]
            for r in self.db.execute(
                "SELECT id FROM images WHERE id NOT IN (SELECT image_id FROM names) "
                "AND id NOT IN (SELECT image_id FROM holds)"
            )
        ]
        for image_id in dangling:
            self._delete_image(image_id)
        layers = self._delete_unused_layers()
        blobs = self._delete_unused_blobs()
        return {
            "images": dangling,
            "layers": layers,
            "blobs": blobs,
            "bytes_freed": freed - self.used_bytes(),
        }

    # -- size -----------------------------------------------------------------------------

    def used_bytes(self) -> int:
        layers = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM layers").fetchone()[0]
        blobs = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0]
        return int(layers) + int(blobs)

    def check_room(self, more: int = 0, what: str = "this image") -> int:
        """Bytes left under ``max_bytes`` after ``more``; 429 ``image-store-full`` if none."""
        left = self.max_bytes - self.used_bytes() - more
        if left <= 0:
            raise QuotaExceeded(
                f"the image store is full ({self.used_bytes()} of {self.max_bytes} bytes); "
                f"{what} does not fit: prune or remove images",
                reason="image-store-full",
            )
        return left

    def counts(self) -> dict[str, int]:
        one = self.db.execute
        return {
            "images": one("SELECT COUNT(*) FROM images").fetchone()[0],
            "layers": one("SELECT COUNT(*) FROM layers").fetchone()[0],
            "bytes": self.used_bytes(),
        }


def _target(hexid: str) -> str:
    return f"../layers/{hexid}/diff"


def _write_atomic(path: str, data: bytes, tmpdir: str) -> None:
    tmp = os.path.join(tmpdir, f"blob-{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    os.rename(tmp, path)


def _remove_all(paths: list[str]) -> None:
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
