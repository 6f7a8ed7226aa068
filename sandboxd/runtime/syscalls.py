"""Thin ctypes wrappers for the syscalls Python 3.11's ``os`` lacks: mount, unshare, setns,
``openat2`` and the new mount API (``open_tree``, ``move_mount``, ``mount_setattr``, ``fsopen``,
``fsconfig``, ``fsmount``).

Stdlib only, because the launcher helper imports this module with ``python -I -S``. Each
wrapper only calls libc and raises OSError. Syscall numbers 424 and up are the same on every
Linux architecture except alpha.
"""

from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000

# openat2(2)
SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# the new mount API (Linux 5.2; mount_setattr 5.12)
SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
SYS_FSOPEN = 430
SYS_FSCONFIG = 431
SYS_FSMOUNT = 432
SYS_MOUNT_SETATTR = 442
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = 0o2000000
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_EMPTY_PATH = 0x40
FSOPEN_CLOEXEC = 0x1
FSMOUNT_CLOEXEC = 0x1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR_IDMAP = 0x100000

PR_SET_PDEATHSIG = 1


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value: str | None) -> bytes | None:
    return value.encode() if value is not None else None


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(
        _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)),
        f"mount {target}",
    )


def umount(target: str, flags: int = MNT_DETACH) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {target}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(fd, nstype), "setns")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), "prctl")


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """``openat2(2)``; EAGAIN (a concurrent rename met RESOLVE_IN_ROOT/BENEATH) is retried."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0, resolve)
    raw = path.encode()
    for _ in range(64):
        result = _libc.syscall(
            SYS_OPENAT2, dirfd, raw, ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))
        )
        if result >= 0:
            return int(result)
        err = ctypes.get_errno()
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, f"openat2 {path}: {os.strerror(err)}", path)
    raise OSError(errno.EAGAIN, f"openat2 {path}: kept racing with renames", path)


def open_tree(dirfd: int, path: str, flags: int) -> int:
    return _check(
        _libc.syscall(SYS_OPEN_TREE, dirfd, path.encode(), ctypes.c_uint(flags)), "open_tree"
    )


def move_mount(from_fd: int, from_path: str, to_fd: int, to_path: str, flags: int) -> None:
    _check(
        _libc.syscall(
            SYS_MOVE_MOUNT,
            from_fd,
            from_path.encode(),
            to_fd,
            to_path.encode(),
            ctypes.c_uint(flags),
        ),
        "move_mount",
    )


def mount_setattr(fd: int, attr_set: int, userns_fd: int = 0, recursive: bool = False) -> None:
    attr = _MountAttr(attr_set, 0, 0, userns_fd)
    flags = AT_EMPTY_PATH | (AT_RECURSIVE if recursive else 0)
    _check(
        _libc.syscall(
            SYS_MOUNT_SETATTR,
            fd,
            b"",
            ctypes.c_uint(flags),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        "mount_setattr",
    )


def fsmount_new(fstype: str, options: dict[str, str], attrs: int) -> int:
    """A new, detached filesystem mount (``fsopen`` → ``fsconfig`` → ``fsmount``); its fd."""
    fs = _check(_libc.syscall(SYS_FSOPEN, fstype.encode(), ctypes.c_uint(FSOPEN_CLOEXEC)), "fsopen")
    try:
        for key, value in options.items():
            _check(
                _libc.syscall(
                    SYS_FSCONFIG, fs, FSCONFIG_SET_STRING, key.encode(), value.encode(), 0
                ),
                f"fsconfig {key}",
            )
        _check(_libc.syscall(SYS_FSCONFIG, fs, FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig")
        return _check(
            _libc.syscall(SYS_FSMOUNT, fs, ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs)),
            "fsmount",
        )
    finally:
        os.close(fs)


def missing_features() -> list[str]:
    """System calls sandboxd needs that this kernel lacks (Linux 5.12 has them all)."""
    missing = []
    for name, number in (
        ("openat2", SYS_OPENAT2),
        ("open_tree", SYS_OPEN_TREE),
        ("move_mount", SYS_MOVE_MOUNT),
        ("fsopen", SYS_FSOPEN),
        ("mount_setattr", SYS_MOUNT_SETATTR),
    ):
        # invalid arguments: a kernel that has the call answers EBADF/EINVAL/EFAULT, not ENOSYS
        if _libc.syscall(number, -1, None, 0, None, 0) < 0 and ctypes.get_errno() == errno.ENOSYS:
            missing.append(name)
    return missing
