"""Idmapped image layers: the image's user owns its files as the tenant, without a chown.

An OCI image gives files to its own user (uid 1000 ``jovyan`` in Jupyter images): its home,
``/opt/conda``. In a sandbox those must belong to the tenant, whose host uid is its own (never
1000), and layers are shared by every tenant, so they are never chowned. Instead the launcher
child mounts each layer *idmapped* (``mount_setattr(MOUNT_ATTR_IDMAP)``, Linux 5.12) with a
user namespace whose map sends the image user's on-disk uid/gid to the tenant's host uid/gid and
every other id below ``span`` to itself (root stays root), then puts the overlay over those
mounts (overlayfs takes idmapped lower layers since Linux 5.19). Through bwrap's own user
namespace (tenant → guest uid) the files then show as the image's user, and writes copy up into
the sandbox's tmpfs upper layer owned by the tenant. The shared layer is never written.

Ids at or above ``span`` (and the tenant's own) stay unmapped: a layer file owned by some other
tenant's host uid shows as ``nobody`` and cannot be written through, never as that tenant.

The user namespace is made by a short-lived helper (fork, ``unshare(CLONE_NEWUSER)``; the
parent, root, writes its maps and keeps ``/proc/<pid>/ns/user`` open). Nothing of a tenant is
resolved here: layer paths are the store's (root-only, 0700), mount points live on the
sandbox's own fresh tmpfs.

Minimum: Linux 5.19 with the image store on a filesystem that supports idmapped mounts (ext4,
xfs, btrfs; tmpfs from 6.3). ``probe`` tries exactly this once at start, in a subprocess
(``python -I -S idmap.py probe DIR``); if it fails, OCI images are refused with the reason and
the built-in ``host`` image keeps working. Stdlib only: the launcher imports this module.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

if __name__ == "__main__":  # run as a script for the probe: make the package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from sandboxd.runtime import syscalls  # noqa: E402

CLONE_NEWUSER = 0x10000000
SPAN = 65536  # on-disk ids mapped to themselves (but the guest's): what images use
LAYER_ATTRS = (
    syscalls.MOUNT_ATTR_IDMAP
    | syscalls.MOUNT_ATTR_RDONLY
    | syscalls.MOUNT_ATTR_NOSUID
    | syscalls.MOUNT_ATTR_NODEV
)
ATTACH = syscalls.MOVE_MOUNT_F_EMPTY_PATH | syscalls.MOVE_MOUNT_T_EMPTY_PATH


def id_map(guest: int, host: int, span: int = SPAN) -> str:
    """``/proc/<pid>/uid_map`` text: on-disk ``guest`` → ``host``, every other id below
    ``span`` to itself except ``host`` (so no on-disk id but the guest's becomes the tenant).
    Pure; the kernel takes at most 340 lines, this makes at most 4."""
    lines = [(guest, host, 1)]
    start = 0
    for hole in sorted({guest, host}):
        if hole >= span:
            continue
        if hole > start:
            lines.append((start, start, hole - start))
        start = hole + 1
    if start < span:
        lines.append((start, start, span - start))
    return "".join(f"{inside} {outside} {count}\n" for inside, outside, count in sorted(lines))


def userns_fd(uid_map: str, gid_map: str) -> int:
    """An fd of a new user namespace with these maps (nobody lives in it: only a mapping)."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # the helper: unshare, say so, wait until the parent has the fd
        try:
            os.close(ready_r)
            os.close(hold_w)
            syscalls.unshare(CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError("the user namespace helper failed")
        for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
            fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, text.encode())
            finally:
                os.close(fd)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(hold_w)  # the helper's read returns: it exits
        os.close(ready_r)
        os.waitpid(pid, 0)


def mount_layers(lowers: tuple[str, ...], dest: str, userns: int) -> list[str]:
    """Attach an idmapped, read-only, nosuid, nodev clone of each layer (top first) at
    ``dest/<i>``; returns the names, for ``lowerdir=`` relative to ``dest``."""
    names = []
    for i, layer in enumerate(lowers):
        name = str(i)
        os.mkdir(os.path.join(dest, name), 0o700)
        tree = syscalls.open_tree(
            -100, layer, syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC
        )
        try:
            syscalls.mount_setattr(tree, LAYER_ATTRS, userns)
            target = os.open(os.path.join(dest, name), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                syscalls.move_mount(tree, "", target, "", ATTACH)
            finally:
                os.close(target)
        finally:
            os.close(tree)
        names.append(name)
    return names


# -- the probe ---------------------------------------------------------------------------------


def _probe_in(work: str) -> None:
    """Mount one idmapped layer under an overlay (in a private mount namespace) and check that a
    file of on-disk uid 1000 shows as the mapped id and copies up with it."""
    layer, rw, root = (os.path.join(work, d) for d in ("layer", "rw", "root"))
    for d in (layer, rw, root):
        os.mkdir(d, 0o700)
    probe = os.path.join(layer, "f")
    with open(probe, "w") as fh:
        fh.write("probe\n")
    os.chown(probe, 1000, 1000)
    os.chmod(layer, 0o755)
    mapped = SPAN + 4242
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    syscalls.mount("probe", rw, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0700")
    for d in ("upper", "work", "lower"):
        os.mkdir(os.path.join(rw, d), 0o700)
    userns = userns_fd(id_map(1000, mapped), id_map(1000, mapped))
    try:
        names = mount_layers((layer,), os.path.join(rw, "lower"), userns)
    finally:
        os.close(userns)
    os.chdir(os.path.join(rw, "lower"))
    syscalls.mount(
        "probe",
        root,
        "overlay",
        syscalls.MS_NOSUID | syscalls.MS_NODEV,
        f"lowerdir={':'.join(names)},upperdir={rw}/upper,workdir={rw}/work",
    )
    os.chdir("/")
    if os.stat(os.path.join(root, "f")).st_uid != mapped:
        raise OSError("the overlay does not show the idmapped owner")
    with open(os.path.join(root, "f"), "a") as fh:
        fh.write("copied up\n")
    if os.stat(os.path.join(rw, "upper", "f")).st_uid != mapped:
        raise OSError("a copy-up does not keep the idmapped owner")


def probe_main(directory: str) -> int:
    """In a throwaway process: exit 0 if idmapped layers under overlayfs work in ``directory``
    (the store's filesystem), else print why and exit 1."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    work = tempfile.mkdtemp(prefix="idmap-probe-", dir=directory)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                _probe_in(work)
            except OSError as exc:
                sys.stdout.write(f"{exc}\n")
                sys.stdout.flush()
                os._exit(1)
            os._exit(0)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def probe(directory: str, timeout: float = 30.0) -> str | None:
    """None if this host can run idmapped image layers in ``directory``, else the reason.
    Blocking (a subprocess): run it in a lane."""
    import platform
    import subprocess

    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", os.path.abspath(__file__), "probe", directory],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the idmap probe failed to run: {exc}"
    if done.returncode == 0:
        return None
    why = done.stdout.strip() or done.stderr.strip()[-300:] or f"exit {done.returncode}"
    return (
        f"idmapped image layers under overlayfs do not work here ({why}); they need Linux "
        f">= 5.19 (this is {platform.release()}) and an image store on a filesystem with "
        "idmapped mounts (ext4, xfs, btrfs; tmpfs from 6.3)"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "probe":
        sys.exit(probe_main(sys.argv[2]))
    sys.exit(2)
