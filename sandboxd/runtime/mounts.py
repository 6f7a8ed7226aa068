"""Launcher side of the root filesystem: mount a ``RootPlan`` in a private mount namespace.

Runs in the launcher helper, as root, after ``unshare(CLONE_NEWNS)``; nothing it mounts is
visible on the host, and everything goes away with the sandbox's last process.

Order, and why:
  1. the writable layer (a ``--disk``-capped tmpfs) and the overlay of the image's layers (an
     OCI image's layers first mounted idmapped on that tmpfs: ``idmap.py``);
  2. ownership of ``/`` and the home (the host image; an OCI image keeps its own, and gets its
     home and bwrap's mount points only if missing), and the files the daemon provides
     (``/etc/hosts``, …), written while the root holds only the image, so nothing of the
     tenant's is on the way;
  3. the admin's host directories, read-only;
  4. the tenant's volumes, from detached mount trees the daemon opened by fd;
  5. the per-sandbox tmpfs dirs (``/run/kernel``) with their files;
  6. the working directory, made if missing.
Every target is resolved inside the root with ``RESOLVE_IN_ROOT``: a symlink planted in a volume
or an image resolves to somewhere inside this sandbox, never to the host.
"""

from __future__ import annotations

import os

from . import idmap, safefs, syscalls
from .plan import RootPlan

BIND_ATTRS = syscalls.MOUNT_ATTR_RDONLY | syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV
ATTACH = syscalls.MOVE_MOUNT_F_EMPTY_PATH | syscalls.MOVE_MOUNT_T_EMPTY_PATH


def attach(tree: int, rootfd: int, target: str, kind: str, uid: int) -> None:
    """Attach a detached mount ``tree`` at ``target`` inside the root (made if missing)."""
    if kind == "dir":
        dest = safefs.make_dirs_in_root(rootfd, target, 0o755, uid)
    else:
        dest = safefs.make_file_in_root(rootfd, target, 0o644, uid)
    try:
        syscalls.move_mount(tree, "", dest, "", ATTACH)
    finally:
        os.close(dest)


def _overlay(p: RootPlan) -> None:
    size = f",size={p.disk}" if p.disk else ""
    syscalls.mount(
        "sbx-rw", p.rw, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, f"mode=0700{size}"
    )
    upper, work = os.path.join(p.rw, "upper"), os.path.join(p.rw, "work")
    os.mkdir(upper, 0o755)
    os.mkdir(work, 0o700)
    lowers, cwd = list(p.lowers), "/"
    if p.uid_map:  # an OCI image: idmapped clones of its layers, named 0..n-1 on the tmpfs
        cwd = os.path.join(p.rw, "lower")
        os.mkdir(cwd, 0o700)
        userns = idmap.userns_fd(p.uid_map, p.gid_map)
        try:
            lowers = idmap.mount_layers(p.lowers, cwd, userns)
        finally:
            os.close(userns)
    os.chdir(cwd)  # short relative lowerdirs: a deep image still fits the mount option
    try:
        syscalls.mount(
            "sbx-root",
            p.root,
            "overlay",
            syscalls.MS_NOSUID | syscalls.MS_NODEV,
            f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}",
        )
    finally:
        os.chdir("/")


def _own_dir(rootfd: int, path: str, uid: int) -> None:
    """The tenant owns ``path`` (made if missing); resolved inside the root."""
    fd = safefs.make_dirs_in_root(rootfd, path, 0o755, uid)
    os.close(fd)
    fd = safefs.open_in_root(rootfd, path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fchown(fd, uid, uid)
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)


def _image_dirs(rootfd: int, p: RootPlan, uid: int) -> None:
    """An OCI image keeps the owners it gives ``/`` and the home; what is missing is made:
    the home (the tenant's) and the mount points bwrap needs (root's)."""
    for path, owner in (("/proc", None), ("/dev", None), (p.home, uid)):
        try:
            os.close(safefs.open_in_root(rootfd, path, safefs.O_PATH_DIR))
        except FileNotFoundError:
            try:
                os.close(safefs.make_dirs_in_root(rootfd, path, 0o755, owner))
            except OSError:
                if path != p.home:
                    raise
                # a home the image made unmakeable (a dangling link): left as it is, as
                # docker does; a chdir there is then refused with 400 bad-workdir


def _host_binds(p: RootPlan, rootfd: int, uid: int) -> None:
    for host in p.binds:
        tree = syscalls.open_tree(
            -100,  # AT_FDCWD: the admin's own directory, in this (private) namespace
            host,
            syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC | syscalls.AT_RECURSIVE,
        )
        try:
            syscalls.mount_setattr(tree, BIND_ATTRS, recursive=True)
            attach(tree, rootfd, host, "dir", uid)
        finally:
            os.close(tree)


def _run_dirs(p: RootPlan, rootfd: int, uid: int) -> None:
    for run in p.run_dirs:
        tree = syscalls.fsmount_new(
            "tmpfs",
            {"size": str(run.size), "mode": "0700", "uid": str(uid), "gid": str(uid)},
            syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV,
        )
        try:
            for f in run.files:  # a fresh tmpfs: nothing of the tenant's is in it yet
                safefs.write_new_file(tree, f.name, f.text.encode(), f.mode, uid)
            attach(tree, rootfd, run.target, "dir", uid)
        finally:
            os.close(tree)


def build_root(p: RootPlan, uid: int) -> None:
    """Mount the sandbox's root at ``p.root`` (see the module docstring for the order)."""
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    _overlay(p)
    rootfd = os.open(p.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if p.uid_map:
            _image_dirs(rootfd, p, uid)
        else:
            os.fchown(rootfd, uid, uid)
            os.fchmod(rootfd, 0o755)
            _own_dir(rootfd, p.home, uid)
        for path, text in p.etc:
            safefs.replace_file_in_root(rootfd, path, text.encode(), 0o644)
        _host_binds(p, rootfd, uid)
        for m in p.mounts:
            attach(m.fd, rootfd, m.target, m.kind, uid)
            os.close(m.fd)
        _run_dirs(p, rootfd, uid)
        try:
            os.close(safefs.make_dirs_in_root(rootfd, p.workdir, 0o755, uid))
        except OSError:
            pass  # under a read-only bind, say: bwrap then refuses the chdir, reported as 400
    finally:
        os.close(rootfd)
