"""Try syscalls inside a sandbox and print ``name errno`` lines (0 = the call succeeded).

Modelled on bubblewrap's tests/try-syscall.c. Standard library only, x86_64 numbers, so it runs
under the same interpreter inside the sandbox. Every call gets harmless or invalid arguments
chosen so that, if the filter lets it through, the kernel answers something other than EPERM
where it can (EFAULT from a NULL pointer, EBADF from fd -1, EINVAL from bad flags), and nothing
is ever really mounted, rebooted, swapped off or loaded, even when the call is allowed.

Usage: syscall_probe.py NAME...   (``all`` = every probe; ``proc-status`` prints the
``Seccomp`` and ``NoNewPrivs`` fields of /proc/self/status as ``Seccomp N`` lines).
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
from collections.abc import Callable

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

BAD = 1  # an address that is never mapped: copy_from_user fails with EFAULT
NULL = 0
SIGCHLD = 17
CLONE_NEWUSER = 0x10000000
AF_ALG, AF_VSOCK = 38, 40
INVALID_FLAGS = 0x7FFFFFFF

# name -> (x86_64 number, arguments). Each argument list is safe even if the call is allowed.
SYSCALLS: dict[str, tuple[int, tuple[int, ...]]] = {
    "getpid": (39, ()),
    "uname": (63, (NULL,)),  # EFAULT if allowed
    "mount": (165, (NULL, NULL, NULL, 0, NULL)),  # EFAULT: NULL target
    "umount2": (166, (NULL, INVALID_FLAGS)),  # EINVAL: bad flags
    "pivot_root": (155, (NULL, NULL)),
    "unshare": (272, (INVALID_FLAGS,)),  # EINVAL: bad flags
    "setns": (308, (-1, 0)),  # EBADF
    "clone3": (435, (NULL, 0)),  # EINVAL: size 0 (ENOSYS when filtered)
    "kexec_load": (246, (0, 0, NULL, INVALID_FLAGS)),
    "kexec_file_load": (320, (-1, -1, 0, NULL, INVALID_FLAGS)),
    "init_module": (175, (NULL, 0, NULL)),
    "finit_module": (313, (-1, NULL, INVALID_FLAGS)),
    "delete_module": (176, (NULL, 0)),
    "bpf": (321, (-1, NULL, 0)),
    "perf_event_open": (298, (NULL, 0, -1, -1, 0)),  # EFAULT: NULL attr
    "keyctl": (250, (-1, 0, 0, 0, 0)),  # EOPNOTSUPP: bad command
    "add_key": (248, (NULL, NULL, NULL, 0, 0)),  # EFAULT
    "request_key": (249, (NULL, NULL, NULL, 0)),  # EFAULT
    "io_uring_setup": (425, (0, NULL)),
    "io_uring_enter": (426, (-1, 0, 0, 0, NULL, 0)),  # EBADF
    "io_uring_register": (427, (-1, 0, NULL, 0)),  # EBADF
    "userfaultfd": (323, (INVALID_FLAGS,)),  # EINVAL
    "reboot": (169, (0, 0, 0, NULL)),  # bad magic: EINVAL even with CAP_SYS_BOOT
    "swapon": (167, (BAD, 0)),
    "swapoff": (168, (BAD,)),
    "settimeofday": (164, (BAD, BAD)),  # EFAULT, never NULL,NULL (a successful no-op)
    "clock_settime": (227, (-1, BAD)),  # EINVAL: bad clock
    "acct": (163, (BAD,)),  # never NULL: that would switch accounting off
    "quotactl": (179, (0, BAD, 0, BAD)),
    "open_by_handle_at": (304, (-1, NULL, 0)),
    "ptrace": (101, (0x4206, 0, 0, 0)),  # PTRACE_SEIZE pid 0: ESRCH
    "process_vm_readv": (310, (0, NULL, 0, NULL, 0, 0)),
    "personality": (135, (0x0040000,)),  # ADDR_NO_RANDOMIZE: not in the allowed values
    "personality:query": (135, (0xFFFFFFFF,)),
    "chroot": (161, (NULL,)),  # EFAULT
    "sethostname": (170, (NULL, INVALID_FLAGS)),
    "syslog": (103, (-1, NULL, 0)),  # EINVAL: bad type
    "iopl": (172, (INVALID_FLAGS,)),
    "ioperm": (173, (0, 0, 0)),
    "kcmp": (312, (-1, -1, -1, 0, 0)),
    "pidfd_getfd": (438, (-1, -1, 0)),  # EBADF
    "fsopen": (430, (NULL, 0)),
    "open_tree": (428, (-1, NULL, INVALID_FLAGS)),
    "move_mount": (429, (-1, NULL, -1, NULL, INVALID_FLAGS)),
    "mount_setattr": (442, (-1, NULL, INVALID_FLAGS, NULL, 0)),
    "mbind": (237, (NULL, 0, -1, NULL, 0, INVALID_FLAGS)),
    "set_mempolicy": (238, (-1, NULL, 0)),
    "lookup_dcookie": (212, (0, NULL, 0)),
    "fanotify_init": (300, (INVALID_FLAGS, 0)),
    "vhangup": (153, ()),
    "memfd_create": (319, (NULL, 0)),  # EFAULT if allowed
    "modify_ldt": (154, (-1, NULL, 0)),
}
# Probes that hand back a new fd on success; close it so nothing leaks between probes.
FD_RETURNING = {"memfd_create", "io_uring_setup", "fsopen", "open_tree", "userfaultfd"}
FD_RETURNING |= {"perf_event_open", "bpf", "fanotify_init", "pidfd_getfd"}


def _raw(nr: int, args: tuple[int, ...]) -> tuple[int, int]:
    """syscall(2) through libc: (return value, errno or 0)."""
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) for a in args))
    return ret, (ctypes.get_errno() if ret == -1 else 0)


def _plain(name: str) -> int:
    nr, args = SYSCALLS[name]
    ret, err = _raw(nr, args)
    if ret >= 0 and name in FD_RETURNING:
        os.close(ret)
    return err


def _socket(family: int, kind: int) -> int:
    ret, err = _raw(41, (family, kind, 0))
    if ret >= 0:
        os.close(ret)
    return err


def _clone_newuser() -> int:
    """Raw clone with CLONE_NEWUSER: the child (0) exits at once, the parent reaps it."""
    ret, err = _raw(56, (CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0))
    if ret == 0:
        os._exit(0)
    if ret > 0:
        os.waitpid(ret, 0)
    return err


def _fork() -> int:
    try:
        pid = os.fork()
    except OSError as exc:
        return exc.errno or -1
    if pid == 0:
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return 0 if os.waitstatus_to_exitcode(status) == 0 else -1


def _open() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            fh.read()
    except OSError as exc:
        return exc.errno or -1
    return 0


def _py_socket(family: int, kind: int) -> int:
    try:
        socket.socket(family, kind).close()
    except OSError as exc:
        return exc.errno or -1
    return 0


SPECIAL: dict[str, Callable[[], int]] = {
    "socket:alg": lambda: _socket(AF_ALG, socket.SOCK_SEQPACKET),
    "socket:vsock": lambda: _socket(AF_VSOCK, socket.SOCK_STREAM),
    "socket:inet": lambda: _py_socket(socket.AF_INET, socket.SOCK_STREAM),
    "socket:unix": lambda: _py_socket(socket.AF_UNIX, socket.SOCK_STREAM),
    "clone:newuser": _clone_newuser,
    "fork": _fork,
    "open": _open,
}


def probe(name: str) -> int:
    """errno of one named probe (0 = success)."""
    if name in SPECIAL:
        return SPECIAL[name]()
    return _plain(name)


def proc_status() -> dict[str, str]:
    """The seccomp-related fields of /proc/self/status, read after the filter is in place."""
    fields = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Seccomp", "NoNewPrivs"):
                fields[key] = value.strip()
    return fields


def main(argv: list[str]) -> int:
    names = [n for arg in argv for n in ([*SYSCALLS, *SPECIAL] if arg == "all" else [arg])]
    for name in names:
        if name == "proc-status":
            for key, value in proc_status().items():
                print(key, value, flush=True)
            continue
        if name not in SYSCALLS and name not in SPECIAL:
            print(f"unknown probe {name!r}", file=sys.stderr)
            return 2
        print(name, probe(name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
