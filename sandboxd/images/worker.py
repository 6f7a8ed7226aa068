"""The unpack worker: ``python -I -m sandboxd.images.worker``, one layer per process.

Why a process and not a thread: unpacking is CPU (decompression, hashing) and many small
syscalls from Python; in the daemon it would hold the GIL against the event loop. A process
per layer also makes cancelling a pull simple (kill it) and keeps a crash, or memory a bomb
made the decompressor take, out of the daemon. The daemon bounds how many run at once.

Protocol: one JSON job on stdin, one JSON answer on stdout (``{"ok": {...}}`` or
``{"error": {"reason", "message"}}``), exit status 0 either way unless the worker itself broke.

The job: ``blob`` (a root-only file in the store's tmp dir, or an uploaded archive), a byte
range in it (``offset``, ``length``; an archive member), optionally the ``digest`` and ``size``
that range must have (checked before unpacking), the ``dest`` directory to make, the
``diff_id`` the unpacked tar must hash to, and the limits.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from .unpack import CHUNK, Limits, UnsafeLayer, unpack_file


class Range:
    """A read-only window of a file: what a layer member of an archive is."""

    def __init__(self, fh: Any, offset: int, length: int) -> None:
        self.fh = fh
        self.offset = offset
        self.length = length
        self.pos = 0
        fh.seek(offset)

    def read(self, n: int = -1) -> bytes:
        left = self.length - self.pos
        n = left if n is None or n < 0 else min(n, left)
        data = self.fh.read(n)
        self.pos += len(data)
        return data

    def seek(self, pos: int, whence: int = 0) -> int:
        if (pos, whence) != (0, 0):
            raise OSError("only a rewind is supported")
        self.fh.seek(self.offset)
        self.pos = 0
        return 0


def _check_digest(fh: Any, job: dict[str, Any]) -> None:
    digest = hashlib.sha256()
    size = 0
    while data := fh.read(CHUNK):
        digest.update(data)
        size += len(data)
    fh.seek(0)
    if job.get("size") is not None and size != job["size"]:
        raise UnsafeLayer("size-mismatch", f"blob {job['digest']}: {size} bytes, not {job['size']}")
    actual = "sha256:" + digest.hexdigest()
    if actual != job["digest"]:
        raise UnsafeLayer("digest-mismatch", f"blob {job['digest']}: content hashes to {actual}")


def run(job: dict[str, Any]) -> dict[str, Any]:
    limits = Limits(max_bytes=int(job["max_bytes"]), max_entries=int(job["max_entries"]))
    with open(job["blob"], "rb") as raw:
        length = job.get("length")
        if length is None:
            length = os.fstat(raw.fileno()).st_size - int(job.get("offset", 0))
        fh = Range(raw, int(job.get("offset", 0)), int(length))
        if job.get("digest"):
            _check_digest(fh, job)
        return unpack_file(fh, job["dest"], job.get("diff_id", ""), limits)  # type: ignore[arg-type]


def main() -> int:
    try:
        os.nice(5)  # the daemon's loop before a layer
    except OSError:
        pass
    job = json.loads(sys.stdin.read())
    try:
        answer: dict[str, Any] = {"ok": run(job)}
    except UnsafeLayer as exc:
        answer = {"error": {"reason": exc.reason, "message": exc.message}}
    except OSError as exc:
        answer = {"error": {"reason": "host-error", "message": f"unpacking failed: {exc}"}}
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
