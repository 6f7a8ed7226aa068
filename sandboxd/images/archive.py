"""Read image archives: ``docker save`` output and OCI image layouts (as a tar).

An uploaded archive is hostile like a layer, but it is never extracted: its members are
indexed by name (links between members are followed inside that index only, never on disk)
and read by offset. Layers are handed to the unpack worker as byte ranges of the archive
file, with the digest and size to check first where the format gives them (OCI layouts, new
docker save); a legacy ``layer.tar`` is checked by its diff id after unpacking. Sync code:
the manager runs it in a thread.
"""

from __future__ import annotations

import gzip
import json
import posixpath
import tarfile
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import InvalidImage, TooLarge
from . import oci
from .unpack import GZIP_MAGIC, ZSTD_MAGIC, ZSTD_MAX_WINDOW

MAX_MEMBERS = 100_000
MAX_LINK_HOPS = 8


@dataclass(frozen=True)
class ArchiveLayer:
    offset: int
    length: int
    digest: str | None  # of the (compressed) blob, when the format names it
    size: int | None


@dataclass
class ArchiveImage:
    names: list[str]
    config_raw: bytes
    manifest_digest: str = ""
    manifest_type: str = ""
    manifest_raw: bytes = b""
    layers: list[ArchiveLayer] = field(default_factory=list)

    @property
    def image_id(self) -> str:
        return oci.sha256_digest(self.config_raw)


def _bad(why: str) -> InvalidImage:
    return InvalidImage(f"archive: {why}", reason="bad-archive")


def decompress_to(src: str, dest: str, limit: int) -> bool:
    """If ``src`` is gzip or zstd, write its tar to ``dest`` (at most ``limit`` bytes)."""
    with open(src, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        if head[:2] == GZIP_MAGIC:
            stream: IO[bytes] = gzip.GzipFile(fileobj=fh)  # type: ignore[assignment]
        elif head == ZSTD_MAGIC:
            import zstandard

            dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
            stream = dctx.stream_reader(fh, read_across_frames=True)
        else:
            return False
        written = 0
        try:
            with open(dest, "wb") as out:
                while chunk := stream.read(1024 * 1024):
                    written += len(chunk)
                    if written > limit:
                        raise TooLarge(
                            f"archive: decompresses to more than {limit} bytes", reason="too-large"
                        )
                    out.write(chunk)
        except (OSError, EOFError, ValueError) as exc:
            raise _bad(f"corrupt compressed archive: {exc}") from None
        except Exception as exc:
            if type(exc).__name__ == "ZstdError":
                raise _bad(f"corrupt compressed archive: {exc}") from None
            raise
    return True


class Archive:
    """An index of an archive's members by name; reads follow links inside the index only."""

    def __init__(self, path: str, meta_limit: int) -> None:
        self.path = path
        self.meta_limit = meta_limit
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            self.tar = tarfile.open(path, "r:")  # noqa: SIM115 - closed by close()
            for i, ti in enumerate(self.tar):
                if i >= MAX_MEMBERS:
                    raise _bad(f"more than {MAX_MEMBERS} members")
                self.members[posixpath.normpath(ti.name.lstrip("/"))] = ti
        except (tarfile.TarError, EOFError, UnicodeError, ValueError) as exc:
            raise _bad(f"not a tar archive: {exc}") from None

    def close(self) -> None:
        self.tar.close()

    def member(self, name: str) -> tarfile.TarInfo:
        """The regular file ``name`` means, following symlinks and hard links in the index."""
        name = posixpath.normpath(name.lstrip("/"))
        for _ in range(MAX_LINK_HOPS):
            ti = self.members.get(name)
            if ti is None:
                raise _bad(f"no member {name!r}")
            if ti.isreg():
                return ti
            if ti.issym():
                name = posixpath.normpath(posixpath.join(posixpath.dirname(name), ti.linkname))
            elif ti.islnk():
                name = posixpath.normpath(ti.linkname.lstrip("/"))
            else:
                raise _bad(f"member {name!r} is not a file")
            if name.startswith("../") or name == "..":
                raise _bad(f"link {ti.name!r} points out of the archive")
        raise _bad(f"too many links to reach {name!r}")

    def has(self, name: str) -> bool:
        return posixpath.normpath(name) in self.members

    def read(self, name: str, limit: int | None = None) -> bytes:
        ti = self.member(name)
        limit = limit or self.meta_limit
        if ti.size > limit:
            raise TooLarge(f"archive: {name} is {ti.size} bytes, over {limit}", reason="too-large")
        fh = self.tar.extractfile(ti)
        assert fh is not None
        return fh.read()

    def layer(self, name: str, digest: str | None, size: int | None) -> ArchiveLayer:
        ti = self.member(name)
        if ti.sparse:
            raise _bad(f"layer {name!r} is a sparse member")
        return ArchiveLayer(ti.offset_data, ti.size, digest, size)

    def blob(self, digest: str) -> str:
        return f"blobs/sha256/{digest.split(':', 1)[1]}"


def read_images(path: str, meta_limit: int, platform: tuple[str, str, str]) -> list[ArchiveImage]:
    """Every image in the archive at ``path``: docker save first, else an OCI layout."""
    archive = Archive(path, meta_limit)
    try:
        if archive.has("manifest.json"):
            return _docker_save(archive)
        if archive.has("index.json"):
            return _oci_layout(archive, platform)
        raise _bad("neither a docker save archive (manifest.json) nor an OCI layout (index.json)")
    finally:
        archive.close()


def _docker_save(archive: Archive) -> list[ArchiveImage]:
    doc = _json_list(archive.read("manifest.json"), "manifest.json")
    images = []
    for i, entry in enumerate(doc):
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise _bad(f"manifest.json[{i}]: no Config")
        layers = entry.get("Layers")
        tags = entry.get("RepoTags") or []
        if not isinstance(layers, list) or not all(isinstance(x, str) for x in layers):
            raise _bad(f"manifest.json[{i}]: Layers must be a list of paths")
        if not isinstance(tags, list) or not all(isinstance(x, str) for x in tags):
            raise _bad(f"manifest.json[{i}]: RepoTags must be a list")
        image = ArchiveImage(names=list(tags), config_raw=archive.read(entry["Config"]))
        for path in layers:
            # new docker (25+) names layers blobs/sha256/<hex>: that is their digest
            digest = (
                "sha256:" + path.rsplit("/", 1)[1] if path.startswith("blobs/sha256/") else None
            )
            image.layers.append(archive.layer(path, digest, None))
        images.append(image)
    return images


def _oci_layout(archive: Archive, platform: tuple[str, str, str]) -> list[ArchiveImage]:
    index = oci.load_json(archive.read("index.json"), "index.json")
    images = []
    for desc in oci.parse_index(index):
        name = desc.annotations.get("io.containerd.image.name") or desc.annotations.get(
            "org.opencontainers.image.ref.name", ""
        )
        manifest_desc = desc
        raw = _blob(archive, desc)
        doc = oci.load_json(raw, f"manifest {desc.digest}")
        if oci.media_type_of(doc) in oci.INDEXES:
            chosen = oci.choose_platform(oci.parse_index(doc), platform)
            if chosen is None:
                raise _bad(f"index {desc.digest} has no manifest for {'/'.join(platform)}")
            manifest_desc = chosen
            raw = _blob(archive, chosen)
            doc = oci.load_json(raw, f"manifest {chosen.digest}")
        manifest = oci.parse_manifest(doc, max_layers=500)
        image = ArchiveImage(
            names=[name] if name and ("/" in name or ":" in name) else [],
            config_raw=_blob(archive, manifest.config),
            manifest_digest=manifest_desc.digest,
            manifest_type=manifest.media_type,
            manifest_raw=raw,
        )
        for layer in manifest.layers:
            image.layers.append(archive.layer(archive.blob(layer.digest), layer.digest, layer.size))
        images.append(image)
    return images


def _blob(archive: Archive, desc: oci.Descriptor) -> bytes:
    data = archive.read(archive.blob(desc.digest))
    oci.verify(data, desc.digest, desc.size)
    return data


def _json_list(data: bytes, what: str) -> list[Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"{what}: not JSON ({exc})") from None
    if not isinstance(doc, list):
        raise _bad(f"{what}: expected a list")
    return doc
