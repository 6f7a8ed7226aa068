"""The sandbox's network namespace, as the launcher child enters it.

``none``: a fresh namespace made by the child while still root in the init user namespace, with
only ``lo`` up. ``path``: join a namespace sandboxd made and configured (bridges, veths). Either
way the namespace belongs to the init user namespace, so code in the sandbox can never
reconfigure it, even as root in its own user namespace.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from dataclasses import dataclass

from . import syscalls

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1


@dataclass(frozen=True)
class NetnsPlan:
    mode: str  # "none" | "path" | "host"
    path: str | None = None


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(sock, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | IFF_UP))


def enter(plan: NetnsPlan) -> None:
    """Launcher child: move into the sandbox's network namespace."""
    if plan.mode == "none":
        syscalls.unshare(syscalls.CLONE_NEWNET)
        loopback_up()
    elif plan.mode == "path":
        assert plan.path is not None
        fd = os.open(plan.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(fd, syscalls.CLONE_NEWNET)
        finally:
            os.close(fd)
    # "host": stay in the daemon's namespace (admin profiles only; checked at admission)
