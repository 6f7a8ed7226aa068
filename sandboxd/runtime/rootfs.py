"""Root filesystems, daemon side: images (the built-in ``host`` image), volume syntax, and the
``RootPlan`` the launcher mounts (``mounts.py``) in its private mount namespace.

Because every mount lives in that private namespace, nothing is left on the host when the
sandbox's last process exits, whatever happened to the daemon.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass

from ..errors import Forbidden, InvalidRequest
from ..spec import SandboxSpec, Volume
from .plan import MountFd, RootPlan, RunDir

HOST_IMAGE_VERSION = "5"

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
#: (not /opt: what a host installs there is none of a tenant's business; a Python environment
#: under /opt is bound on its own by ``python_environments``)
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

PASSWD = """root:x:0:0:root:/root:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
jovyan:x:1000:1000:Jupyter user:/home/jovyan:/bin/bash
"""
GROUP = "root:x:0:\nusers:x:100:\nnogroup:x:65534:\njovyan:x:1000:\n"
SANDBOX_UID = 1000
HOME = "/home/jovyan"
VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")


@dataclass(frozen=True)
class Image:
    """Ordered read-only layers (overlay lowerdirs, top first) plus host dirs bound read-only.

    The built-in ``host`` image has binds and a Python; an OCI image (``runtime/image.py``)
    has only layers, mounted idmapped with ``uid_map``/``gid_map`` (``idmap.py``)."""

    name: str
    layers: tuple[str, ...]
    binds: tuple[str, ...] = ()  # host paths bound read-only at the same path
    python: str | None = "python3"  # put first on PATH (the host image's environment)
    uid_map: str = ""
    gid_map: str = ""


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
        "opt",
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


def make_mount_points(directory: str) -> None:
    """Daemon side: the run dir's mount points (nothing is mounted on the host)."""
    os.mkdir(os.path.join(directory, "root"), 0o755)
    os.mkdir(os.path.join(directory, "rw"), 0o700)


#: container paths a volume may not cover: the daemon writes there (/etc, /run/kernel), or
#: bwrap mounts its own (/proc, /dev, /sys), or it would hide the whole root
FORBIDDEN_TARGETS = ("/proc", "/dev", "/sys", "/etc", "/run/kernel")
FORBIDDEN_EXACT = ("/", "/run")


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def parse_volume(text: str) -> Volume:
    """``SOURCE:TARGET[:ro|rw]``, where SOURCE is ``NAME[/SUBPATH]`` (the owner's volume) or
    an absolute host path (admins only, checked by the caller). Pure: nothing is opened here."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise InvalidRequest(f"volume {text!r}: expected SOURCE:TARGET[:ro]", reason="bad-volume")
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidRequest(f"volume {text!r}: mode must be ro or rw", reason="bad-volume")
    if ".." in source.split("/"):
        raise Forbidden(f"volume {text!r}: '..' is not allowed in a source", reason="volume-denied")
    if not os.path.isabs(target) or ".." in target.split("/") or "\0" in target:
        raise InvalidRequest(
            f"volume {text!r}: the target must be an absolute path without '..'",
            reason="bad-volume",
        )
    target = os.path.normpath(target)
    if target in FORBIDDEN_EXACT or any(_under(target, top) for top in FORBIDDEN_TARGETS):
        raise InvalidRequest(
            f"volume {text!r}: {target} is managed by sandboxd and cannot be a volume target",
            reason="bad-volume-target",
        )
    read_only = mode == "ro"
    if source.startswith("/"):
        return Volume(container=target, read_only=read_only, host=os.path.normpath(source))
    name, _, sub = source.partition("/")
    if not VOLUME_NAME.fullmatch(name):
        raise InvalidRequest(
            f"volume {text!r}: {name!r} is not a volume name ({VOLUME_NAME.pattern})",
            reason="bad-volume",
        )
    sub = "/".join(p for p in sub.split("/") if p and p != ".")
    return Volume(container=target, read_only=read_only, name=name, subpath=sub)


def etc_files(spec: SandboxSpec, hosts: str, resolv: str | None) -> tuple[tuple[str, str], ...]:
    """The /etc files the daemon provides: hostname, hosts and (with a network) resolv.conf."""
    files = [
        ("etc/hostname", spec.name + "\n"),
        (
            "etc/hosts",
            hosts or f"127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\t{spec.name}\n",
        ),
    ]
    if resolv is not None:
        files.append(("etc/resolv.conf", resolv))
    return tuple(files)


def plan(
    spec: SandboxSpec,
    image: Image,
    sandbox_dir: str,
    *,
    mounts: tuple[MountFd, ...] = (),
    etc: tuple[tuple[str, str], ...] = (),
    run_dirs: tuple[RunDir, ...] = (),
) -> RootPlan:
    """What the launcher mounts for ``spec`` (pure)."""
    return RootPlan(
        root=os.path.join(sandbox_dir, "root"),
        rw=os.path.join(sandbox_dir, "rw"),
        lowers=image.layers,
        disk=spec.limits.disk,
        binds=image.binds,
        mounts=mounts,
        etc=etc,
        run_dirs=run_dirs,
        home=spec.guest.home,
        workdir=spec.workdir,
        uid_map=image.uid_map,
        gid_map=image.gid_map,
    )


def is_mode_ok(path: str) -> bool:
    """True if ``path`` is a directory others may traverse (needed for the tenant's bwrap)."""
    st = os.stat(path)
    return stat.S_ISDIR(st.st_mode) and bool(st.st_mode & stat.S_IXOTH)
