"""Image references, parsed as docker does: ``[registry[:port]/]path[:tag][@sha256:hex]``.

A first component with a ``.`` or a ``:``, or ``localhost``, is a registry; otherwise the
default registry is meant (``docker.io``, where one-component names live under ``library/``).
The canonical form always names the registry, so two spellings of one image are one tag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidRequest
from .settings import DOCKER_HUB

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}")
DIGEST = re.compile(r"sha256:[a-f0-9]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9-]+)*(?::[0-9]+)?")
MAX_LENGTH = 255


@dataclass(frozen=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """``registry/repository``, no tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def tagged(self) -> str:
        """The canonical tag this reference stores under (``:latest`` if none was given)."""
        return f"{self.name}:{self.tag or 'latest'}"

    @property
    def reference(self) -> str:
        """What to ask the registry's manifest endpoint for: the digest if pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse(ref: str, default_registry: str = DOCKER_HUB) -> Reference:
    """Parse a reference; refuse anything docker would refuse (400 ``bad-reference``)."""
    if not isinstance(ref, str) or not ref or len(ref) > MAX_LENGTH:
        raise _bad(ref, "empty or too long")
    rest, digest = ref, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not DIGEST.fullmatch(digest):
            raise _bad(ref, "only sha256:<64 hex> digests are supported")
    tag = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG.fullmatch(tag):
            raise _bad(ref, f"bad tag {tag!r}")
    first, _, remainder = rest.partition("/")
    if remainder and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.fullmatch(first):
            raise _bad(ref, f"bad registry {first!r}")
        registry, path = first, remainder
    else:
        registry, path = default_registry, rest
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not _PATH.fullmatch(path):
        raise _bad(ref, "a name is lowercase letters, digits and . _ - separated by /")
    return Reference(registry, path, tag, digest)


def _bad(ref: object, why: str) -> InvalidRequest:
    return InvalidRequest(f"image reference {ref!r}: {why}", reason="bad-reference")
