"""OCI and Docker schema 2 documents: descriptors, indexes, manifests, image configs.

Everything here is parsed from untrusted JSON (a registry or an uploaded archive) and
validated field by field; what fails is an ``InvalidImage`` naming the field. Pure functions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidImage
from .reference import DIGEST

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
#: The Accept header of a manifest request: every kind we can read, none we cannot.
ACCEPT = ", ".join((*MANIFESTS, *INDEXES))
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
}
MAX_CONFIG_BYTES = 8 * 1024 * 1024


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify(data: bytes, digest: str, size: int | None = None, what: str = "blob") -> None:
    """Refuse content whose sha256 or length is not what its descriptor says."""
    if size is not None and len(data) != size:
        raise InvalidImage(
            f"{what} {digest}: {len(data)} bytes, the descriptor says {size}",
            reason="size-mismatch",
        )
    actual = sha256_digest(data)
    if actual != digest:
        raise InvalidImage(f"{what} {digest}: content hashes to {actual}", reason="digest-mismatch")


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2): one config blob and ordered layers."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True)
class ImageConfig:
    """What a sandbox needs from the image config; ``raw`` keeps the whole document."""

    diff_ids: tuple[str, ...]
    os: str = ""
    architecture: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    user: str = ""
    exposed_ports: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "Env": list(self.env),
            "Entrypoint": list(self.entrypoint) if self.entrypoint is not None else None,
            "Cmd": list(self.cmd) if self.cmd is not None else None,
            "WorkingDir": self.working_dir,
            "User": self.user,
            "ExposedPorts": list(self.exposed_ports),
            "Labels": dict(self.labels),
        }


def _bad(what: str, why: str) -> InvalidImage:
    return InvalidImage(f"{what}: {why}", reason="bad-manifest")


def load_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(what, f"not JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise _bad(what, "not a JSON object")
    return doc


def descriptor(raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, dict):
        raise _bad(what, "a descriptor must be an object")
    digest, size, media = raw.get("digest"), raw.get("size"), raw.get("mediaType", "")
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise _bad(what, f"unsupported digest {digest!r} (sha256 only)")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _bad(what, f"bad size {size!r}")
    if not isinstance(media, str):
        raise _bad(what, "mediaType must be a string")
    plat = raw.get("platform") or {}
    notes = raw.get("annotations") or {}
    if not isinstance(plat, dict) or not isinstance(notes, dict):
        raise _bad(what, "platform and annotations must be objects")
    return Descriptor(media, digest, size, plat, {str(k): str(v) for k, v in notes.items()})


def media_type_of(doc: dict[str, Any]) -> str:
    """The document's own media type; an OCI document may leave it out (then: by shape)."""
    media = doc.get("mediaType")
    if isinstance(media, str) and media:
        return media
    if "manifests" in doc:
        return OCI_INDEX
    if "layers" in doc and "config" in doc:
        return OCI_MANIFEST
    if doc.get("schemaVersion") == 1:
        return "application/vnd.docker.distribution.manifest.v1+json"
    return ""


def parse_index(doc: dict[str, Any]) -> tuple[Descriptor, ...]:
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise _bad("index", "manifests must be a list")
    return tuple(descriptor(m, f"index.manifests[{i}]") for i, m in enumerate(entries))


def choose_platform(
    entries: tuple[Descriptor, ...], want: tuple[str, str, str]
) -> Descriptor | None:
    """The index entry for (os, arch, variant): an exact variant first, then any variant."""
    os_, arch, variant = want
    matches = [
        d
        for d in entries
        if d.media_type in (*MANIFESTS, "")
        and d.platform.get("os") == os_
        and d.platform.get("architecture") == arch
    ]
    for d in matches:
        if not variant or d.platform.get("variant", variant) == variant:
            return d
    return matches[0] if matches else None


def parse_manifest(doc: dict[str, Any], max_layers: int) -> Manifest:
    media = media_type_of(doc)
    if media not in MANIFESTS:
        raise _bad("manifest", f"unsupported manifest type {media!r}")
    if doc.get("schemaVersion") != 2:
        raise _bad("manifest", "schemaVersion must be 2")
    config = descriptor(doc.get("config"), "manifest.config")
    if config.size > MAX_CONFIG_BYTES:
        raise _bad("manifest.config", f"config of {config.size} bytes is too large")
    raw_layers = doc.get("layers")
    if not isinstance(raw_layers, list) or not raw_layers:
        raise _bad("manifest", "layers must be a non-empty list")
    if len(raw_layers) > max_layers:
        raise InvalidImage(
            f"manifest: {len(raw_layers)} layers, at most {max_layers} are allowed",
            reason="too-many-layers",
        )
    layers = tuple(descriptor(x, f"manifest.layers[{i}]") for i, x in enumerate(raw_layers))
    for i, layer in enumerate(layers):
        if layer.media_type not in LAYER_TYPES:
            raise _bad(f"manifest.layers[{i}]", f"unsupported layer type {layer.media_type!r}")
    return Manifest(media, config, layers)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise _bad(what, "expected a list of strings")
    return tuple(value)


def parse_config(doc: dict[str, Any]) -> ImageConfig:
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise _bad("config.rootfs", 'expected {"type": "layers", "diff_ids": [...]}')
    diff_ids = _strings(rootfs.get("diff_ids"), "config.rootfs.diff_ids")
    for d in diff_ids:
        if not DIGEST.fullmatch(d):
            raise _bad("config.rootfs.diff_ids", f"unsupported diff id {d!r}")
    run = doc.get("config") or {}
    if not isinstance(run, dict):
        raise _bad("config.config", "expected an object")
    entry, cmd = run.get("Entrypoint"), run.get("Cmd")
    labels = run.get("Labels") or {}
    ports = run.get("ExposedPorts") or {}
    if not isinstance(labels, dict) or not isinstance(ports, dict):
        raise _bad("config.config", "Labels and ExposedPorts must be objects")
    for key in ("WorkingDir", "User"):
        if not isinstance(run.get(key) or "", str):
            raise _bad(f"config.config.{key}", "expected a string")
    return ImageConfig(
        diff_ids=diff_ids,
        os=str(doc.get("os", "")),
        architecture=str(doc.get("architecture", "")),
        env=_strings(run.get("Env") or [], "config.config.Env"),
        entrypoint=None if entry is None else _strings(entry, "config.config.Entrypoint"),
        cmd=None if cmd is None else _strings(cmd, "config.config.Cmd"),
        working_dir=run.get("WorkingDir") or "",
        user=run.get("User") or "",
        exposed_ports=tuple(sorted(str(p) for p in ports)),
        labels={str(k): str(v) for k, v in labels.items()},
        created=str(doc.get("created", "")),
    )
