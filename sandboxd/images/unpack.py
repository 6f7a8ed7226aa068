"""Unpack one image layer (a hostile tar) into a directory, as root, by file descriptor only.

The rules, each enforced here and tested by a hand-made attack in ``tests/test_image_unpack.py``:

* Every entry is created relative to a directory fd that was opened with ``openat2`` and
  ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`` from the layer's root fd. A ``..`` component is
  refused before any syscall; a symlink made by an earlier entry can never be a parent of a
  later one (ELOOP), so "symlink, then write through it" fails. The last component is always
  created with ``O_CREAT|O_EXCL|O_NOFOLLOW`` (or ``mkdirat``/``symlinkat``/``mknodat``) after
  removing whatever the layer itself put there earlier, so nothing is ever written through a
  link either.
* Symlinks are created as they are, absolute targets included (``/etc/localtime ->
  /usr/share/zoneinfo/...`` is in every Debian image): a symlink is data here. It is only ever
  resolved inside a sandbox, whose root is the overlay, never by the daemon.
* Hard links name a path inside the same layer (a leading ``/`` is the layer root, as docker
  reads it); the source is opened beneath the root and linked by fd (``linkat`` with
  ``AT_EMPTY_PATH``), so no hard link can point outside the layer.
* Whiteouts: ``.wh.NAME`` becomes the overlayfs whiteout (a 0/0 character device) and
  ``.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on its directory. Other device nodes are
  refused, as are other special types. FIFOs are allowed. xattrs from the tar are dropped
  (``trusted.overlay.*`` from a layer could redirect overlayfs lookups).
* Owners and modes are kept as in the tar, setuid/setgid bits included: the layers are only
  ever mounted ``nosuid,nodev``.
* Bounded: the decompressed stream (headers, data and padding) stops at ``max_bytes`` and the
  number of entries at ``max_entries``, so a gzip or zstd bomb ends early with an error.

The caller unpacks into a fresh temporary directory and renames it into place only on
success, so a refused layer leaves nothing behind. This module is stdlib-only but for
``zstandard``, and runs in a worker process (``worker.py``), never on the daemon's loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from typing import IO, Any

from ..runtime import safefs

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: zstd frames may ask for a huge window (memory); 128 MiB is zstd's own default limit.
ZSTD_MAX_WINDOW = 1 << 27


class UnsafeLayer(Exception):
    """The layer is refused; ``reason`` is the slug the API reports."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    max_entries: int


@dataclass
class Result:
    diff_id: str = ""
    size: int = 0  # bytes of regular file content written
    entries: int = 0
    whiteouts: int = 0
    opaque_dirs: int = 0


class _Counted:
    """A read-only stream that hashes and counts what passes and stops at ``limit`` bytes."""

    def __init__(self, raw: IO[bytes], limit: int) -> None:
        self.raw = raw
        self.limit = limit
        self.count = 0
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        want = CHUNK if n is None or n < 0 else min(n, CHUNK * 4)
        data = self.raw.read(want)
        self.count += len(data)
        if self.count > self.limit:
            raise UnsafeLayer(
                "layer-too-large",
                f"layer unpacks to more than {self.limit} bytes (the per-layer limit)",
            )
        self.hash.update(data)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


def open_decompressed(fh: IO[bytes]) -> IO[bytes]:
    """gzip, zstd or plain tar, told by the magic bytes (media types are often wrong)."""
    head = fh.read(4)
    fh.seek(0)
    if head[:2] == GZIP_MAGIC:
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    if head == ZSTD_MAGIC:
        import zstandard

        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        return dctx.stream_reader(fh, read_across_frames=True)
    return fh


def _split(name: str) -> tuple[str, str]:
    """(parent path, last component) of a tar name; ``..`` and empty names are refused."""
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise UnsafeLayer("unsafe-layer", f"path {name!r} climbs out with '..'")
    if not parts:
        return "", ""
    return "/".join(parts[:-1]), parts[-1]


class _Unpacker:
    def __init__(self, rootfd: int, limits: Limits) -> None:
        self.root = rootfd
        self.limits = limits
        self.result = Result()
        self.dir_times: list[tuple[str, int]] = []

    def entry(self, tar: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        self.result.entries += 1
        if self.result.entries > self.limits.max_entries:
            raise UnsafeLayer(
                "layer-too-large", f"layer has more than {self.limits.max_entries} entries"
            )
        parent, name = _split(ti.name)
        if not name:  # the layer root itself ("./"): its mode and owner apply to the root
            if ti.isdir():
                self._meta(self.root, ti)
            return
        if name.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, name)
            return
        pfd = safefs.make_dirs_beneath(self.root, parent)
        try:
            self._create(tar, ti, pfd, parent, name)
        finally:
            os.close(pfd)

    def _whiteout(self, parent: str, name: str) -> None:
        if name == OPAQUE:
            fd = safefs.make_dirs_beneath(self.root, parent)
            os.close(fd)
            safefs.set_dir_xattr(self.root, parent or ".", "trusted.overlay.opaque", b"y")
            self.result.opaque_dirs += 1
            return
        if name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs metadata (.wh..wh.plnk and friends): meaningless for overlayfs
        target = name[len(WHITEOUT_PREFIX) :]
        if target in ("", ".", ".."):  # ".wh.." would name the directory, ".wh..." its parent
            raise UnsafeLayer("unsafe-layer", f"whiteout {parent}/{name!r} names no entry")
        pfd = safefs.make_dirs_beneath(self.root, parent)
        try:
            safefs.remove_entry(pfd, target)
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=pfd)
        finally:
            os.close(pfd)
        self.result.whiteouts += 1

    def _create(
        self, tar: tarfile.TarFile, ti: tarfile.TarInfo, pfd: int, parent: str, name: str
    ) -> None:
        if ti.isdir():
            try:
                fd = safefs.open_beneath(pfd, name, os.O_RDONLY | os.O_DIRECTORY)
            except OSError as exc:
                if exc.errno != errno.ENOENT:  # a file, a symlink: the directory replaces it
                    safefs.remove_entry(pfd, name)
                os.mkdir(name, 0o700, dir_fd=pfd)
                fd = safefs.open_beneath(pfd, name, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._meta(fd, ti)
            finally:
                os.close(fd)
            self.dir_times.append((f"{parent}/{name}" if parent else name, int(ti.mtime)))
            return
        if ti.islnk() and _split(ti.linkname.lstrip("/")) == (parent, name):
            return  # a hard link to itself (GNU tar, a file listed twice): already there
        safefs.remove_entry(pfd, name)  # tar semantics: a later entry replaces an earlier one
        if ti.isreg():
            self._file(tar, ti, pfd, name)
        elif ti.issym():
            os.symlink(ti.linkname, name, dir_fd=pfd)
            os.chown(name, ti.uid, ti.gid, dir_fd=pfd, follow_symlinks=False)
            os.utime(name, (ti.mtime, ti.mtime), dir_fd=pfd, follow_symlinks=False)
        elif ti.islnk():
            source = ti.linkname.lstrip("/")
            _split(source)  # refuses '..'
            try:
                safefs.link_beneath(self.root, source, pfd, name)
            except OSError as exc:
                raise UnsafeLayer(
                    "unsafe-layer",
                    f"hard link {ti.name!r} -> {ti.linkname!r}: not an entry of this layer "
                    f"({exc.strerror})",
                ) from None
        elif ti.ischr() and ti.devmajor == 0 and ti.devminor == 0:
            os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd)  # an overlay whiteout
            self.result.whiteouts += 1
        elif ti.isfifo():
            os.mkfifo(name, 0o600, dir_fd=pfd)
            fd = safefs.open_beneath(pfd, name, os.O_PATH)
            try:
                os.chown(f"/proc/self/fd/{fd}", ti.uid, ti.gid)
                os.chmod(f"/proc/self/fd/{fd}", ti.mode & 0o7777)
            finally:
                os.close(fd)
        elif ti.isdev():
            raise UnsafeLayer(
                "unsafe-layer",
                f"device node {ti.name!r} ({ti.devmajor}:{ti.devminor}) is refused",
            )
        else:
            raise UnsafeLayer("unsafe-layer", f"entry {ti.name!r} has unsupported type {ti.type!r}")

    def _file(self, tar: tarfile.TarFile, ti: tarfile.TarInfo, pfd: int, name: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=pfd)
        try:
            src = tar.extractfile(ti)
            if src is not None:
                while True:
                    data = src.read(CHUNK)
                    if not data:
                        break
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    self.result.size += len(data)
            self._meta(fd, ti)
            os.utime(fd, (ti.mtime, ti.mtime))
        finally:
            os.close(fd)

    @staticmethod
    def _meta(fd: int, ti: tarfile.TarInfo) -> None:
        os.fchown(fd, ti.uid, ti.gid)  # before the mode: chown clears setuid/setgid
        os.fchmod(fd, ti.mode & 0o7777)

    def finish(self) -> None:
        """Directory mtimes last: every entry made inside a directory changed it."""
        for path, mtime in reversed(self.dir_times):
            with contextlib.suppress(OSError):  # replaced later by a non-directory
                fd = safefs.open_beneath(self.root, path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.utime(fd, (mtime, mtime))
                finally:
                    os.close(fd)


def unpack(stream: IO[bytes], rootfd: int, limits: Limits) -> Result:
    """Unpack an uncompressed tar stream below ``rootfd``; returns its diff id and counts.

    Raises ``UnsafeLayer`` for anything refused; what was written so far stays below
    ``rootfd`` for the caller to delete."""
    counted = _Counted(stream, limits.max_bytes)
    unpacker = _Unpacker(rootfd, limits)
    try:
        with tarfile.open(fileobj=counted, mode="r|") as tar:  # type: ignore[call-overload]
            for ti in tar:
                unpacker.entry(tar, ti)
        counted.drain()
    except UnsafeLayer:
        raise
    except Exception as exc:
        raise _classify(exc) from None
    unpacker.finish()
    unpacker.result.diff_id = "sha256:" + counted.hash.hexdigest()
    return unpacker.result


def _classify(exc: Exception) -> Exception:
    """Map what unpacking met to ``UnsafeLayer``; a host failure (ENOSPC, EIO) stays as it is."""
    import zlib

    import zstandard

    if isinstance(exc, (tarfile.TarError, EOFError, UnicodeError, zlib.error, zstandard.ZstdError)):
        return UnsafeLayer("bad-layer", f"not a valid (compressed) tar stream: {exc}")
    if isinstance(exc, ValueError):  # an embedded NUL in a name, and the like
        return UnsafeLayer("bad-layer", f"bad entry: {exc}")
    if isinstance(exc, OSError):
        if exc.errno is None:  # gzip.BadGzipFile
            return UnsafeLayer("bad-layer", f"not a valid compressed stream: {exc}")
        if exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR):
            return UnsafeLayer(
                "unsafe-layer", f"an entry's path goes through a link or a non-directory: {exc}"
            )
        if exc.errno in (errno.ENAMETOOLONG, errno.EINVAL):
            return UnsafeLayer("bad-layer", f"bad entry name: {exc}")
    return exc


def run_job(blob_path: str, dest: str, diff_id: str, limits: Limits) -> dict[str, Any]:
    """Unpack the blob file at ``blob_path`` into ``dest`` (see ``unpack_file``)."""
    with open(blob_path, "rb") as fh:
        return unpack_file(fh, dest, diff_id, limits)


def unpack_file(fh: IO[bytes], dest: str, diff_id: str, limits: Limits) -> dict[str, Any]:
    """Make ``dest`` (it must not exist), unpack the (compressed) layer ``fh`` into it, check
    the diff id. On any failure ``dest`` is removed before the error (``UnsafeLayer``) goes up."""
    os.mkdir(dest, 0o700)
    try:
        rootfd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fchmod(rootfd, 0o755)  # a "./" entry in the tar may change it
            try:
                result = unpack(open_decompressed(fh), rootfd, limits)
            except UnsafeLayer:
                raise
            except Exception as exc:
                raise _classify(exc) from None
        finally:
            os.close(rootfd)
        if diff_id and result.diff_id != diff_id:
            raise UnsafeLayer(
                "digest-mismatch",
                f"layer content hashes to {result.diff_id}, the image config says {diff_id}",
            )
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return dataclasses.asdict(result)
