"""File operations by descriptor, for directories a tenant can write.

The rule (SECURITY.md): the daemon, running as root, never resolves a path a tenant can write.
Everything here starts from a directory file descriptor the caller trusts and resolves with
``openat2``:

* ``BENEATH``: below that directory, no symlink anywhere on the way, no ``..`` out, no magic
  links. For volumes: what the tenant made is taken as it is or refused, never followed.
* ``IN_ROOT``: as if that directory were ``/``. Symlinks are followed, but an absolute link or a
  ``..`` ends at the directory itself, never above it. For a sandbox's own root: whatever the
  tenant planted resolves to something inside its own sandbox.

Files are opened ``O_PATH`` unless their type is known, so a FIFO or a device never blocks or
acts; the type and owner are then read with ``fstat`` on the same descriptor that is used.
Stdlib only: the launcher helper imports this with ``python -I -S``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat

from . import syscalls

BENEATH = syscalls.RESOLVE_BENEATH | syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS
IN_ROOT = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
IN_ROOT_NO_SYMLINKS = IN_ROOT | syscalls.RESOLVE_NO_SYMLINKS
O_PATH_DIR = os.O_PATH | os.O_DIRECTORY


def parts(path: str) -> list[str]:
    """The components of a path; ``..`` is refused (callers never need it, so never allow it)."""
    out = [p for p in path.split("/") if p and p != "."]
    if ".." in out:
        raise OSError(errno.EINVAL, f"'..' in {path!r}", path)
    return out


def open_beneath(dirfd: int, path: str, flags: int = os.O_PATH) -> int:
    """Open ``path`` below ``dirfd`` without following any symlink (the last one included)."""
    return syscalls.openat2(dirfd, "/".join(parts(path)) or ".", flags | os.O_NOFOLLOW, 0, BENEATH)


def open_in_root(rootfd: int, path: str, flags: int = os.O_PATH, symlinks: bool = True) -> int:
    """Open ``path`` with ``rootfd`` as its ``/``; ``symlinks=False`` refuses any symlink."""
    resolve = IN_ROOT if symlinks else IN_ROOT_NO_SYMLINKS
    return syscalls.openat2(rootfd, "/".join(parts(path)) or ".", flags, 0, resolve)


def _own(fd: int, uid: int | None, mode: int) -> None:
    if uid is not None:
        os.fchown(fd, uid, uid)
    os.fchmod(fd, mode)


def make_dirs_in_root(rootfd: int, path: str, mode: int = 0o755, uid: int | None = None) -> int:
    """``mkdir -p`` inside a root; returns an O_PATH fd of the directory.

    Each missing component is made with ``mkdirat`` in a parent resolved afresh inside the root,
    then opened beneath that parent with no symlink allowed, so a rename racing us can only
    point inside the root or make us fail. Directories made here get ``mode`` and, if given,
    the owner ``uid``; existing ones are left as they are.
    """
    names = parts(path)
    current = open_in_root(rootfd, ".", O_PATH_DIR)
    try:
        for i, name in enumerate(names):
            try:
                nxt = open_in_root(rootfd, "/".join(names[: i + 1]), O_PATH_DIR)
            except FileNotFoundError:
                try:
                    os.mkdir(name, 0o700, dir_fd=current)
                except FileExistsError:
                    pass  # made meanwhile by someone else: used as it is
                else:
                    made = syscalls.openat2(
                        current, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, 0, BENEATH
                    )
                    try:
                        _own(made, uid, mode)
                    finally:
                        os.close(made)
                nxt = open_in_root(rootfd, "/".join(names[: i + 1]), O_PATH_DIR)
            os.close(current)
            current = nxt
        return current
    except BaseException:
        os.close(current)
        raise


def make_file_in_root(rootfd: int, path: str, mode: int = 0o644, uid: int | None = None) -> int:
    """An O_PATH fd of a non-directory at ``path`` inside a root, made empty if missing."""
    names = parts(path)
    if not names:
        raise OSError(errno.EISDIR, "/ is a directory")
    parent = make_dirs_in_root(rootfd, "/".join(names[:-1]), 0o755, uid)
    try:
        try:
            fd = os.open(
                names[-1],
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                0o600,
                dir_fd=parent,
            )
            try:
                _own(fd, uid, mode)
            finally:
                os.close(fd)
        except FileExistsError:
            pass
        fd = open_in_root(rootfd, path)
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EISDIR, f"{path} is a directory", path)
        return fd
    finally:
        os.close(parent)


def replace_file_in_root(
    rootfd: int, path: str, data: bytes, mode: int = 0o644, uid: int | None = None
) -> None:
    """Write a new regular file at ``path`` inside a root, replacing whatever was there
    (a symlink is replaced, not followed). For files the daemon provides, like /etc/hosts."""
    names = parts(path)
    parent = make_dirs_in_root(rootfd, "/".join(names[:-1]), 0o755)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(names[-1], dir_fd=parent)
        write_new_file(parent, names[-1], data, mode, uid)
    finally:
        os.close(parent)


def write_new_file(
    dirfd: int, name: str, data: bytes, mode: int = 0o600, uid: int | None = None
) -> None:
    """Create ``name`` in ``dirfd`` (it must not exist, not even as a symlink) and write it."""
    fd = os.open(
        name,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=dirfd,
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        _own(fd, uid, mode)
    finally:
        os.close(fd)


def kind_of(fd: int) -> str:
    """ "dir", "file" or the name of what else it is (for refusals)."""
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    for test, name in (
        (stat.S_ISLNK, "symlink"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


# -- building a tree below a directory fd (image layers) ------------------------------------
#
# A layer being unpacked is hostile: an entry may name a path through a symlink an earlier
# entry made, or a hard link to anything. Every helper below resolves with BENEATH from the
# layer's root fd, so a symlink on the way (or at the end) is ELOOP, never followed, and a
# ``..`` is refused before any syscall.


def make_dirs_beneath(rootfd: int, path: str, mode: int = 0o755) -> int:
    """``mkdir -p`` below ``rootfd`` (no symlink anywhere); an O_PATH fd of the last directory.

    Missing components are made root-owned with ``mode``; existing ones are used as they are.
    The whole path is tried first in one ``openat2`` (the common case: it exists).
    """
    names = parts(path)
    if not names:
        return os.dup(rootfd)
    try:
        return syscalls.openat2(rootfd, "/".join(names), O_PATH_DIR | os.O_NOFOLLOW, 0, BENEATH)
    except FileNotFoundError:
        pass
    current = os.dup(rootfd)
    try:
        for name in names:
            try:
                os.mkdir(name, mode, dir_fd=current)
            except FileExistsError:
                pass
            nxt = syscalls.openat2(current, name, O_PATH_DIR | os.O_NOFOLLOW, 0, BENEATH)
            os.close(current)
            current = nxt
        return current
    except BaseException:
        os.close(current)
        raise


def remove_entry(dirfd: int, name: str) -> bool:
    """Remove ``name`` in ``dirfd`` whatever it is (a directory with its contents); never
    follows a symlink (``shutil.rmtree`` with ``dir_fd`` works by fd). False if absent.
    ``name`` is one component: ``.``, ``..`` or a ``/`` would reach beyond it, and are refused."""
    if name in ("", ".", "..") or "/" in name:
        raise OSError(errno.EINVAL, f"not a name in a directory: {name!r}", name)
    try:
        os.unlink(name, dir_fd=dirfd)
    except FileNotFoundError:
        return False
    except IsADirectoryError:
        shutil.rmtree(name, dir_fd=dirfd)
    return True


def link_beneath(rootfd: int, source: str, dirfd: int, name: str) -> None:
    """Hard-link the entry at ``source`` (below ``rootfd``, no symlink on the way; a symlink at
    the end is linked itself) as ``name`` in ``dirfd``; the source is pinned by an fd first, so
    what gets linked is what was resolved beneath the root, never something outside it."""
    fd = open_beneath(rootfd, source, os.O_PATH)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EPERM, f"hard link to directory {source!r}", source)
        syscalls.link_fd(fd, dirfd, name)
    finally:
        os.close(fd)


def set_dir_xattr(rootfd: int, path: str, key: str, value: bytes) -> None:
    """Set an xattr on the directory at ``path`` below ``rootfd`` (opened with no symlinks)."""
    fd = open_beneath(rootfd, path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.setxattr(fd, key, value)
    finally:
        os.close(fd)
