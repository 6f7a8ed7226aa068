"""Read a file of an image as its sandboxes will see it: its layers merged as overlayfs merges
them, without mounting anything.

Used for the few files the daemon itself must read before a sandbox exists (``/etc/passwd`` and
``/etc/group``, to know the image's user). The layers are root-owned and read-only, but their
content is hostile: ``/etc/passwd`` may be a symlink to ``/etc/shadow`` of the host, or to
``../../../../state.db``. So every step opens exactly one name in a directory fd with
``O_NOFOLLOW`` (no path is ever resolved by the kernel), symlinks are followed by us, inside
the image (an absolute target restarts at the image's root, ``..`` stops there), and what is
read is bounded (symlinks followed, names looked at, bytes).

The overlay rules: the topmost layer holding a name decides what it is; a whiteout (a 0/0
character device) hides it; a directory merges with the same directory of lower layers until
one of them holds a non-directory or a whiteout there, or until an opaque directory
(``trusted.overlay.opaque=y``). Blocking: run in a lane.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Sequence

MAX_LINKS = 40
MAX_STEPS = 4096
OPAQUE = "trusted.overlay.opaque"


class _Walk:
    def __init__(self, layers: Sequence[str]) -> None:
        self.fds: list[int] = []
        self.steps = 0
        self.roots = [
            self._keep(os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) for p in layers
        ]

    def _keep(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _opaque(self, fd: int) -> bool:
        try:
            return os.getxattr(fd, OPAQUE) == b"y"
        except OSError:
            return False

    def entry(self, dirs: list[int], name: str) -> tuple[str, list[int]] | None:
        """``name`` in the merged directory ``dirs`` (its layers' fds, top first):
        ("dir", the merged child's fds) or (kind, [the fd of the topmost parent holding it])."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise OSError(errno.ELOOP, "too many path steps")
        children: list[int] = []
        for fd in dirs:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # a whiteout: hidden from here down
                break
            if not children and not is_dir:
                kind = "link" if stat.S_ISLNK(st.st_mode) else "file"
                return kind, [fd]
            if not is_dir:  # a lower non-directory under a directory: not merged
                break
            child = self._keep(
                os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            )
            children.append(child)
            if self._opaque(child):
                break
        return ("dir", children) if children else None


def read_file(layers: Sequence[str], path: str, limit: int = 1 << 20) -> bytes | None:
    """The content of ``path`` in the image whose layer directories are ``layers`` (top first),
    following symlinks inside the image; None if it does not exist or is not a regular file.
    OSError for a loop, too many steps, or a file over ``limit`` bytes."""
    walk = _Walk(layers)
    try:
        stack: list[list[int]] = [walk.roots]  # merged directories from the root down
        todo = [p for p in path.split("/") if p and p != "."]
        links = 0
        while todo:
            name = todo.pop(0)
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            found = walk.entry(stack[-1], name)
            if found is None:
                return None
            kind, fds = found
            if kind == "dir":
                stack.append(fds)
                continue
            if kind == "link":
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, f"too many symlinks in {path}")
                target = os.readlink(name, dir_fd=fds[0])
                if target.startswith("/"):
                    del stack[1:]
                todo = [p for p in target.split("/") if p and p != "."] + todo
                continue
            if todo:  # a file in the middle of the path
                return None
            return _read_regular(fds[0], name, limit)
        return None  # the path names a directory
    finally:
        walk.close()


def _read_regular(dirfd: int, name: str, limit: int) -> bytes | None:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=dirfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"{name} is larger than {limit} bytes")
        chunks, size = [], 0
        while size <= limit:
            data = os.read(fd, 65536)
            if not data:
                break
            chunks.append(data)
            size += len(data)
        if size > limit:
            raise OSError(errno.EFBIG, f"{name} is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)
