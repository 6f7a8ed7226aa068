"""Root filesystems: image layers, the built-in ``host`` image, volumes and the per-sandbox overlay.

The daemon prepares a plan (pure data). The launcher child, already in a private mount namespace,
mounts it (``mount_plan``): a size-capped tmpfs for the writable layer, an overlay of the image's
layers under it, then read-only binds of the host directories the image exposes, then volumes.
Because every mount lives in that private namespace, nothing is left on the host when the
sandbox's last process exits, whatever happened to the daemon.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import dataclass

from ..errors import InvalidRequest
from ..spec import SandboxSpec, Volume
from . import syscalls

HOST_IMAGE_VERSION = "4"

#: host /etc entries copied into the host image (an allow-list: never shadow, sudoers, ssh keys)
ETC_ALLOW = (
    "nsswitch.conf",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "mime.types",
    "os-release",
    "debian_version",
    "bash.bashrc",
    "profile",
    "inputrc",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "fonts",
    "locale.alias",
    "environment",
    "magic",
    "magic.mime",
    "mailcap",
    "networks",
    "shells",
    "ethertypes",
    "xattr.conf",
    "rpc",
)

#: host system directories bound read-only (symlinks among them are recreated as symlinks)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")

PASSWD = """root:x:0:0:root:/root:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
jovyan:x:1000:1000:Jupyter user:/home/jovyan:/bin/bash
"""
GROUP = "root:x:0:\nusers:x:100:\nnogroup:x:65534:\njovyan:x:1000:\n"
SANDBOX_UID = 1000
HOME = "/home/jovyan"


@dataclass(frozen=True)
class Image:
    """Ordered read-only layers (overlay lowerdirs, top first) plus host dirs bound read-only."""

    name: str
    layers: tuple[str, ...]
    binds: tuple[str, ...] = ()  # host paths bound read-only at the same path
    python: str = "python3"


@dataclass(frozen=True)
class RootfsPlan:
    """What the launcher child mounts for one sandbox; built by ``plan`` from a frozen spec."""

    root: str  # overlay mount point
    rw: str  # tmpfs mount point holding upper/ and work/
    lowers: tuple[str, ...]
    disk: int | None
    binds: tuple[str, ...]
    volumes: tuple[Volume, ...]
    uid: int
    hostname: str
    run_binds: tuple[tuple[str, str], ...] = ()  # (host dir, container path), read-write
    workdir: str = HOME  # made (owned by the tenant) if missing, as docker does
    etc_hosts: str = ""  # network files written by the network step ("" = the default)
    etc_resolv: str | None = None


def python_environments() -> tuple[str, ...]:
    """The Python installs a kernel needs: the interpreter's prefix and, if any, the venv."""
    found: list[str] = []
    for prefix in (sys.base_prefix, sys.prefix):
        real = os.path.realpath(prefix)
        if real.startswith("/usr/") or real == "/usr" or real in found:
            continue
        found.append(real)
    return tuple(found)


def _copy_etc(skeleton: str) -> None:
    etc = os.path.join(skeleton, "etc")
    for name in ETC_ALLOW:
        src = os.path.join("/etc", name)
        dst = os.path.join(etc, name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True, ignore_dangling_symlinks=True)
        elif os.path.isfile(src):
            shutil.copy2(src, dst)
    for name, text in (
        ("passwd", PASSWD),
        ("group", GROUP),
        ("hostname", "sandbox\n"),
        ("hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost\n"),
        ("resolv.conf", ""),
    ):
        with open(os.path.join(etc, name), "w") as fh:
            fh.write(text)


def _make_skeleton(skeleton: str, envs: tuple[str, ...]) -> None:
    for d in (
        "etc",
        "proc",
        "dev",
        "sys",
        "run",
        "var/tmp",
        "var/lib",
        "home",
        "root",
        "mnt",
        "srv",
    ):
        os.makedirs(os.path.join(skeleton, d), mode=0o755, exist_ok=True)
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            os.symlink(os.readlink(path), os.path.join(skeleton, path.lstrip("/")))
        elif os.path.isdir(path):
            os.makedirs(os.path.join(skeleton, path.lstrip("/")), exist_ok=True)
    for env in envs:
        # every directory on the way to an environment is traversable, and nothing else is there
        os.makedirs(os.path.join(skeleton, env.lstrip("/")), exist_ok=True)
        parts = env.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            os.chmod(os.path.join(skeleton, *parts[:i]), 0o755)
    os.makedirs(os.path.join(skeleton, HOME.lstrip("/")), exist_ok=True)
    for d in ("tmp", "var/tmp"):  # after the environments: one may live under /tmp
        os.makedirs(os.path.join(skeleton, d), exist_ok=True)
        os.chmod(os.path.join(skeleton, d), 0o1777)
    _copy_etc(skeleton)


def host_image(images_dir: str) -> Image:
    """The built-in ``host`` image: a skeleton layer plus the host's system and Python dirs."""
    envs = python_environments()
    binds = tuple(p for p in SYSTEM_DIRS if os.path.isdir(p) and not os.path.islink(p)) + envs
    key = f"host-v{HOST_IMAGE_VERSION}-" + "-".join(e.strip("/").replace("/", "_") for e in envs)
    skeleton = os.path.join(images_dir, key)
    if not os.path.isdir(skeleton):
        tmp = skeleton + f".tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp, mode=0o755)
        _make_skeleton(tmp, envs)
        os.rename(tmp, skeleton)
    python = os.path.join(envs[-1], "bin", "python3") if envs else "/usr/bin/python3"
    return Image(name="host", layers=(skeleton,), binds=binds, python=python)


def empty_file(run_dir: str) -> str:
    """An empty read-only file the tenant's bwrap can reach, bound over masked /proc files."""
    path = os.path.join(run_dir, ".empty")
    if not os.path.exists(path):
        with open(path, "w"):
            pass
        os.chmod(path, 0o444)
    return path


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_volume(text: str, allowed_roots: tuple[str, ...]) -> Volume:
    """Parse ``HOST:CTR[:ro|rw]`` and refuse anything outside the admin's allowed roots.

    The host path is resolved with symlinks followed, so ``..`` and links out of a root are
    judged by where they really lead.
    """
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidRequest(f"volume {text!r}: expected HOST:CONTAINER[:ro]", reason="bad-volume")
    host, ctr = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidRequest(f"volume {text!r}: mode must be ro or rw", reason="bad-volume")
    if not os.path.isabs(host) or not os.path.isabs(ctr):
        raise InvalidRequest(f"volume {text!r}: both paths must be absolute", reason="bad-volume")
    if ".." in ctr.split("/") or os.path.normpath(ctr) in ("/", "/proc", "/dev", "/sys"):
        raise InvalidRequest(f"volume {text!r}: container path not allowed", reason="bad-volume")
    if ".." in host.split("/"):
        raise InvalidRequest(f"volume {text!r}: '..' is not allowed", reason="volume-denied")
    real = os.path.realpath(host)
    if not any(_inside(real, root) for root in allowed_roots):
        raise InvalidRequest(
            f"volume {text!r}: {host} is not under an allowed volume root", reason="volume-denied"
        )
    if not os.path.isdir(real):
        raise InvalidRequest(f"volume {text!r}: {host} is not a directory", reason="bad-volume")
    return Volume(host=real, container=os.path.normpath(ctr), read_only=mode == "ro")


def plan(
    spec: SandboxSpec, image: Image, sandbox_dir: str, extra_dirs: tuple[str, ...] = ()
) -> RootfsPlan:
    """``extra_dirs``: per-sandbox dirs under the sandbox's run dir, bound at ``/run/<name>``
    (for example the kernel's ZMQ ipc sockets and connection file)."""
    return RootfsPlan(
        root=os.path.join(sandbox_dir, "root"),
        rw=os.path.join(sandbox_dir, "rw"),
        lowers=image.layers,
        disk=spec.limits.disk,
        binds=image.binds,
        volumes=spec.volumes,
        uid=spec.uid,
        hostname=spec.name,
        run_binds=tuple((os.path.join(sandbox_dir, d), f"/run/{d}") for d in extra_dirs),
        workdir=spec.workdir,
        etc_hosts=spec.etc_hosts,
        etc_resolv=spec.etc_resolv,
    )


def prepare(p: RootfsPlan) -> None:
    """Daemon side: the mount points exist (nothing is mounted on the host)."""
    os.makedirs(p.root, mode=0o755, exist_ok=True)
    os.makedirs(p.rw, mode=0o700, exist_ok=True)


def _chown_dir(path: str, uid: int, mode: int) -> None:
    os.makedirs(path, exist_ok=True)
    os.chown(path, uid, uid)
    os.chmod(path, mode)


def mount_plan(p: RootfsPlan) -> None:
    """Launcher child, in its private mount namespace, as root: build the sandbox's root."""
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    size = f",size={p.disk}" if p.disk else ""
    syscalls.mount(
        "sbx-rw", p.rw, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, f"mode=0700{size}"
    )
    upper, work = os.path.join(p.rw, "upper"), os.path.join(p.rw, "work")
    os.mkdir(upper, 0o755)
    os.mkdir(work, 0o700)
    syscalls.mount(
        "sbx-root",
        p.root,
        "overlay",
        syscalls.MS_NOSUID | syscalls.MS_NODEV,
        f"lowerdir={':'.join(p.lowers)},upperdir={upper},workdir={work}",
    )
    _chown_dir(p.root, p.uid, 0o755)
    _chown_dir(p.root + HOME, p.uid, 0o755)
    for host in p.binds:
        target = p.root + host
        os.makedirs(target, exist_ok=True)
        syscalls.mount(host, target, None, syscalls.MS_BIND | syscalls.MS_REC)
        syscalls.mount(
            None,
            target,
            None,
            syscalls.MS_REMOUNT
            | syscalls.MS_BIND
            | syscalls.MS_RDONLY
            | syscalls.MS_NOSUID
            | syscalls.MS_NODEV,
        )
    for vol in p.volumes:
        target = p.root + vol.container
        os.makedirs(target, exist_ok=True)
        syscalls.mount(vol.host, target, None, syscalls.MS_BIND)
        flags = syscalls.MS_NOSUID | syscalls.MS_NODEV
        if vol.read_only:
            flags |= syscalls.MS_RDONLY
        syscalls.mount(None, target, None, syscalls.MS_REMOUNT | syscalls.MS_BIND | flags)
    for host, ctr in p.run_binds:
        target = p.root + ctr
        os.makedirs(target, exist_ok=True)
        syscalls.mount(host, target, None, syscalls.MS_BIND)
        syscalls.mount(
            None,
            target,
            None,
            syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_NOSUID | syscalls.MS_NODEV,
        )
    _make_workdir(p.root, p.workdir, p.uid)
    with open(p.root + "/etc/hostname", "w") as fh:
        fh.write(p.hostname + "\n")
    with open(p.root + "/etc/hosts", "w") as fh:
        fh.write(p.etc_hosts or f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{p.hostname}\n")
    if p.etc_resolv is not None:
        with open(p.root + "/etc/resolv.conf", "w") as fh:
            fh.write(p.etc_resolv)


def _make_workdir(root: str, workdir: str, uid: int) -> None:
    """Create a missing working directory owned by the tenant; leave existing ones alone."""
    target = root + workdir
    if os.path.lexists(target):
        return
    try:
        os.makedirs(target)
    except OSError:
        return  # e.g. under a read-only bind: bwrap then refuses the chdir, reported as 400
    os.chown(target, uid, uid)


def is_mode_ok(path: str) -> bool:
    """True if ``path`` is a directory others may traverse (needed for the tenant's bwrap)."""
    st = os.stat(path)
    return stat.S_ISDIR(st.st_mode) and bool(st.st_mode & stat.S_IXOTH)
