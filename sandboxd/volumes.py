"""Per-user persistent volumes: ``<volume root>/<user>/<name>``, owned by the user's tenant uid.

A JupyterHub (holding a *service* token) asks sandboxd to make a user's home volume instead of
writing host directories itself, so the Hub never needs root. Every step goes through directory
file descriptors opened with ``O_NOFOLLOW``: a user who can write ``<root>/<user>`` (it is theirs)
cannot make sandboxd chown or delete anything else by planting a symlink there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from typing import Any

from .config import Config
from .errors import Forbidden, InvalidRequest, NotFound
from .state import Store, User

VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def _check(actor: User, target: User) -> None:
    from .service import acts_for

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
            raise NotFound(f"no volume directory {name!r}", reason="unknown-volume") from None
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


def ensure(
    config: Config, store: Store, actor: User, user: str, name: str, root: str | None = None
) -> dict[str, Any]:
    """Make ``<root>/<user>/<name>`` if missing (0700, the user's tenant uid); idempotent."""
    target = store.get_user(user)
    assert target is not None
    _check(actor, target)
    if not VOLUME_NAME.fullmatch(name):
        raise InvalidRequest(
            f"volume name {name!r} must match {VOLUME_NAME.pattern}", reason="bad-volume"
        )
    base = _root(config, root)
    top = os.open(base, _DIR)
    try:
        existed = True
        udir = _open_dir(top, user, target.uid, create=True)
        try:
            try:
                os.close(os.open(name, _DIR, dir_fd=udir))
            except FileNotFoundError:
                existed = False
            os.close(_open_dir(udir, name, target.uid, create=True))
        finally:
            os.close(udir)
    finally:
        os.close(top)
    return {
        "user": user,
        "name": name,
        "host": os.path.join(base, user, name),
        "uid": target.uid,
        "created": not existed,
    }


def remove(
    config: Config, store: Store, actor: User, user: str, name: str, root: str | None = None
) -> None:
    """Delete ``<root>/<user>/<name>`` and everything in it (404 if it does not exist)."""
    target = store.get_user(user)
    assert target is not None
    _check(actor, target)
    if not VOLUME_NAME.fullmatch(name):
        raise InvalidRequest(
            f"volume name {name!r} must match {VOLUME_NAME.pattern}", reason="bad-volume"
        )
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
