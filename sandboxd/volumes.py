"""Per-user persistent volumes: ``<volume root>/<user>/<name>``, owned by the user's tenant uid,
and the opening of every volume a sandbox binds.

A volume's content is the tenant's to shape: symlinks, hard links, FIFOs, renames racing us.
So every step here goes through directory file descriptors: the configured root (the admin's)
is opened by path, and everything below it with ``openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)``.
A bind source is checked on the same fd that is then cloned into a detached mount tree
(``open_tree``) and handed to the launcher: there is no second lookup to race.

Who may bind what: a user binds only volumes under their own ``<root>/<user>/`` whose owner is
their uid (``NAME[/SUBPATH]``); an absolute host path is an admin's option only (admission
refuses it for anyone else with 403). All calls here block: the daemon runs them in a lane.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from typing import Any

from .config import Config
from .errors import Conflict, Forbidden, InvalidRequest, NotFound
from .runtime import safefs, syscalls
from .runtime.rootfs import VOLUME_NAME
from .spec import SandboxSpec, Volume
from .state import Store, User, acts_for

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
AT_FDCWD = -100
ATTACH_FLAGS = syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC | syscalls.AT_EMPTY_PATH


def _root(config: Config, wanted: str | None) -> str:
    if not config.volume_roots:
        raise InvalidRequest(
            "no volume_roots are configured: per-user volumes need one", reason="no-volume-root"
        )
    if wanted is None:
        return config.volume_roots[0]
    real = os.path.realpath(wanted)
    if real not in config.volume_roots:
        raise InvalidRequest(
            f"root: {wanted!r} is not a configured volume root", reason="volume-denied"
        )
    return real


def check_name(name: str) -> None:
    if not VOLUME_NAME.fullmatch(name):
        raise InvalidRequest(
            f"volume name {name!r} must match {VOLUME_NAME.pattern}", reason="bad-volume"
        )


def check_actor(actor: User, target: User) -> None:
    if actor.name != target.name and not acts_for(actor, target):
        raise Forbidden(
            "only the user, an admin or a service may manage these volumes", reason="not-admin"
        )


def _open_dir(parent: int, name: str, uid: int, create: bool) -> int:
    """Open (making it if asked) ``name`` under ``parent`` as a real directory owned by uid."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent)
    try:
        fd = os.open(name, _DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise NotFound(f"no volume {name!r}", reason="unknown-volume") from None
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise InvalidRequest(
                f"{name!r} is not a plain directory", reason="bad-volume"
            ) from None
        raise
    if create:
        st = os.fstat(fd)
        if st.st_uid != uid or st.st_gid != uid:
            os.fchown(fd, uid, uid)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o700)
    return fd


def _in_root(root: str, user: str, uid: int, name: str, create: bool) -> tuple[int, bool]:
    """fd of ``<root>/<user>/<name>`` and whether it was made now."""
    top = os.open(root, _DIR)
    try:
        udir = _open_dir(top, user, uid, create=create)
        try:
            existed = True
            try:
                os.close(os.open(name, _DIR, dir_fd=udir))
            except FileNotFoundError:
                existed = False
            return _open_dir(udir, name, uid, create=create), not existed
        finally:
            os.close(udir)
    finally:
        os.close(top)


def ensure(
    config: Config, store: Store, actor: User, user: str, name: str, root: str | None = None
) -> dict[str, Any]:
    """Make ``<root>/<user>/<name>`` if missing (0700, the user's tenant uid); idempotent."""
    target = store.get_user(user)
    assert target is not None
    check_actor(actor, target)
    check_name(name)
    base = _root(config, root)
    fd, created = _in_root(base, user, target.uid, name, create=True)
    try:
        return _model(base, user, name, target.uid, fd, created)
    finally:
        os.close(fd)


def _model(root: str, user: str, name: str, uid: int, fd: int, created: bool) -> dict[str, Any]:
    st = os.fstat(fd)
    return {
        "user": user,
        "name": name,
        "host": os.path.join(root, user, name),
        "uid": uid,
        "created": created,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "modified": st.st_mtime,
    }


def _find(config: Config, user: str, uid: int, name: str) -> tuple[str, int] | None:
    """(root, fd) of the user's volume ``name`` in the first root that has it."""
    for root in config.volume_roots:
        try:
            fd, _ = _in_root(root, user, uid, name, create=False)
        except NotFound:
            continue
        return root, fd
    return None


def inspect(config: Config, store: Store, actor: User, user: str, name: str) -> dict[str, Any]:
    target = store.get_user(user)
    assert target is not None
    check_actor(actor, target)
    check_name(name)
    _root(config, None)
    found = _find(config, user, target.uid, name)
    if found is None:
        raise NotFound(f"user {user} has no volume {name!r}", reason="unknown-volume")
    root, fd = found
    try:
        return _model(root, user, name, target.uid, fd, False)
    finally:
        os.close(fd)


def list_volumes(config: Config, store: Store, actor: User, user: str) -> list[dict[str, Any]]:
    """Every volume of ``user`` in every root (a root without the user's dir has none)."""
    target = store.get_user(user)
    assert target is not None
    check_actor(actor, target)
    out: list[dict[str, Any]] = []
    for root in config.volume_roots:
        top = os.open(root, _DIR)
        try:
            try:
                udir = os.open(user, _DIR, dir_fd=top)
            except OSError:
                continue
            try:
                for entry in sorted(os.listdir(udir))[:10000]:
                    if not VOLUME_NAME.fullmatch(entry):
                        continue
                    try:
                        fd = os.open(entry, _DIR, dir_fd=udir)
                    except OSError:
                        continue
                    try:
                        out.append(_model(root, user, entry, target.uid, fd, False))
                    finally:
                        os.close(fd)
            finally:
                os.close(udir)
        finally:
            os.close(top)
    return out


def remove(
    config: Config, store: Store, actor: User, user: str, name: str, root: str | None = None
) -> None:
    """Delete ``<root>/<user>/<name>`` and everything in it (404 if it does not exist)."""
    target = store.get_user(user)
    assert target is not None
    check_actor(actor, target)
    check_name(name)
    top = os.open(_root(config, root), _DIR)
    try:
        udir = _open_dir(top, user, target.uid, create=False)
        try:
            os.close(_open_dir(udir, name, target.uid, create=False))
            shutil.rmtree(name, dir_fd=udir)  # fd-based, does not follow symlinks
        finally:
            os.close(udir)
    finally:
        os.close(top)


# -- bind sources -----------------------------------------------------------------------------


def open_mounts(config: Config, spec: SandboxSpec) -> list[tuple[int, str]]:
    """Every volume of ``spec`` as a detached mount tree fd and its kind ("dir"/"file").

    Named volumes are made if missing (as ``docker run -v name:/x`` does). On any refusal the
    trees opened so far are closed and the error says which volume and why.
    """
    opened: list[tuple[int, str]] = []
    try:
        for vol in spec.volumes:
            opened.append(_open_source(config, spec, vol))
    except BaseException:
        for fd, _ in opened:
            os.close(fd)
        raise
    return opened


def _refuse_kind(vol: Volume, kind: str) -> None:
    if kind == "symlink":
        raise Forbidden(
            f"volume {vol.text()!r}: the source is a symlink; sandboxd never follows links in "
            "a volume",
            reason="volume-denied",
        )
    if kind not in ("dir", "file"):
        raise InvalidRequest(
            f"volume {vol.text()!r}: the source is a {kind}; only directories and regular "
            "files can be bound",
            reason="bad-volume",
        )


def _open_source(config: Config, spec: SandboxSpec, vol: Volume) -> tuple[int, str]:
    try:
        if vol.host:
            fd = syscalls.openat2(
                AT_FDCWD,
                vol.host,
                os.O_PATH | os.O_NOFOLLOW,
                0,
                syscalls.RESOLVE_NO_SYMLINKS | syscalls.RESOLVE_NO_MAGICLINKS,
            )
        else:
            fd = _open_named(config, spec, vol)
    except OSError as exc:
        raise _refusal(vol, exc) from None
    try:
        kind = safefs.kind_of(fd)
        _refuse_kind(vol, kind)
        if not vol.host and os.fstat(fd).st_uid != spec.uid:
            raise Forbidden(
                f"volume {vol.text()!r}: {vol.source} does not belong to user {spec.user}",
                reason="volume-denied",
            )
        tree = syscalls.open_tree(fd, "", ATTACH_FLAGS)
    except OSError as exc:
        raise _refusal(vol, exc) from None
    finally:
        os.close(fd)
    try:
        attrs = syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV
        if vol.read_only:
            attrs |= syscalls.MOUNT_ATTR_RDONLY
        syscalls.mount_setattr(tree, attrs)
    except BaseException:
        os.close(tree)
        raise
    return tree, kind


def _open_named(config: Config, spec: SandboxSpec, vol: Volume) -> int:
    if not config.volume_roots:
        raise InvalidRequest(
            f"volume {vol.text()!r}: no volume_roots are configured", reason="no-volume-root"
        )
    found = _find(config, spec.user, spec.uid, vol.name)
    if found is None:
        fd, _ = _in_root(config.volume_roots[0], spec.user, spec.uid, vol.name, create=True)
    else:
        fd = found[1]
    try:
        st = os.fstat(fd)
        if st.st_uid != spec.uid:
            raise Forbidden(
                f"volume {vol.text()!r}: volume {vol.name} is not owned by user {spec.user}",
                reason="volume-denied",
            )
        return safefs.open_beneath(fd, vol.subpath or ".")
    finally:
        os.close(fd)


def _refusal(vol: Volume, exc: OSError) -> Exception:
    what = f"volume {vol.text()!r}"
    if exc.errno in (errno.ELOOP, errno.EXDEV):
        return Forbidden(
            f"{what}: a symlink on the way; sandboxd never follows links in a volume",
            reason="volume-denied",
        )
    if exc.errno == errno.ENOENT:
        return InvalidRequest(f"{what}: {vol.source} does not exist", reason="bad-volume")
    if exc.errno == errno.ENOTDIR:
        return InvalidRequest(f"{what}: a path component is not a directory", reason="bad-volume")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return Forbidden(f"{what}: permission denied", reason="volume-denied")
    return InvalidRequest(f"{what}: {exc.strerror or exc}", reason="bad-volume")


def in_use(store: Store, user: str, name: str) -> list[str]:
    """Ids of the user's active sandboxes that bind volume ``name``."""
    busy = []
    for rec in store.list_sandboxes(user=user, states=("created", "running")):
        for vol in rec.spec.get("volumes", ()):
            if vol.get("name") == name and not vol.get("host"):
                busy.append(rec.id)
    return busy


def check_unused(store: Store, user: str, name: str) -> None:
    busy = in_use(store, user, name)
    if busy:
        raise Conflict(
            f"volume {name!r} is in use by sandbox {', '.join(busy)}; stop it or use force",
            reason="volume-in-use",
        )
