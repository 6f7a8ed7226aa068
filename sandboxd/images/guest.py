"""The image's user (config ``User``) as ids: who the command runs as inside the sandbox.

``User`` is ``name|uid[:group|gid]``, resolved against the image's own ``/etc/passwd`` and
``/etc/group`` (read with ``rootview``: inside the image, never the host's) as ``docker run``
resolves it: a uid without a group takes the passwd entry's group; the home and the name come
from the entry when there is one (else ``/home/jovyan`` and ``jovyan``).

One rule of sandboxd's own: never root. An image whose user is root (or empty, which means
root) runs as uid 1000, the built-in image's ``jovyan``, with the image's entry for 1000 if it
has one; a group 0 becomes the user's own id. On the host the command always runs as the
tenant's uid: the guest ids only name the on-disk owner that is idmapped to the tenant.
Blocking: run in a lane.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InvalidImage
from ..spec import Guest
from . import rootview

DEFAULT = Guest()
MAX_ID = 65535 * 65536  # below (uid_t)-1


def _table(layers: Sequence[str], path: str) -> list[list[str]]:
    try:
        raw = rootview.read_file(layers, path)
    except OSError as exc:
        raise InvalidImage(
            f"the image's {path} cannot be read: {exc}", reason="bad-image"
        ) from None
    if raw is None:
        return []
    return [line.split(":") for line in raw.decode(errors="replace").splitlines() if ":" in line]


def _number(text: str) -> int | None:
    if text.isdigit() and int(text) <= MAX_ID:
        return int(text)
    return None


def _good_home(path: str) -> bool:
    """An absolute path the launcher may make (inside the root): no ``..``, not ``/``."""
    parts = path.split("/")
    return path.startswith("/") and len(path) < 1024 and ".." not in parts and path.strip("/") != ""


def resolve(layers: Sequence[str], user: str) -> Guest:
    """``user`` (an image's config User) in the image whose layers are ``layers`` (top first).
    422 ``bad-image-user`` for a name the image does not know."""
    name, _, group = user.partition(":")
    passwd = [e for e in _table(layers, "/etc/passwd") if len(e) >= 7]
    uid = _number(name) if name else 0
    entry = None
    if uid is None:
        entry = next((e for e in passwd if e[0] == name), None)
        if entry is None:
            raise InvalidImage(
                f"image user {name!r} is not in the image's /etc/passwd", reason="bad-image-user"
            )
        uid = _number(entry[2])
        if uid is None:
            raise InvalidImage(f"image user {name!r} has no valid uid", reason="bad-image-user")
    if uid == 0:
        uid, group = DEFAULT.uid, ""
    if entry is None or _number(entry[2]) != uid:
        entry = next((e for e in passwd if _number(e[2]) == uid), None)
    gid = _number(entry[3]) if entry else None
    if group:
        gid = _number(group)
        if gid is None:
            groups = [e for e in _table(layers, "/etc/group") if len(e) >= 3]
            found = next((e for e in groups if e[0] == group), None)
            gid = _number(found[2]) if found else None
            if gid is None:
                raise InvalidImage(
                    f"image group {group!r} is not in the image's /etc/group",
                    reason="bad-image-user",
                )
    if not gid:
        gid = uid
    home = entry[5] if entry and _good_home(entry[5]) else DEFAULT.home
    return Guest(uid=uid, gid=gid, name=entry[0] if entry else DEFAULT.name, home=home)
