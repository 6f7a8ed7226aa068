"""The ``[images]`` config table: store limits, registries, credentials, the allow-list, mirrors.

Pure parsing and validation (``config.py`` calls ``parse_images``), so a bad value is refused
at load with its key, like every other setting. Credentials may be given inline or, better,
as ``password_file`` (read at load; the file should be root-only).
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequest
from ..units import parse_size

DOCKER_HUB = "docker.io"
#: Where ``docker.io`` names are really served from (as the docker CLI does).
DOCKER_HUB_ENDPOINT = "registry-1.docker.io"
_PLATFORM = re.compile(r"[a-z0-9]+/[a-z0-9]+(/\w+)?")
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass(frozen=True)
class Registry:
    """How to reach one registry: plain HTTP or not, credentials, a mirror tried first."""

    host: str
    insecure: bool = False  # plain http (a registry on loopback or a trusted LAN)
    username: str = ""
    password: str = field(default="", repr=False)
    mirror: str = ""  # "https://mirror.example:5000" (host[:port] with a scheme)

    @property
    def endpoint(self) -> str:
        host = DOCKER_HUB_ENDPOINT if self.host == DOCKER_HUB else self.host
        return f"{'http' if self.insecure else 'https'}://{host}"

    def endpoints(self) -> tuple[str, ...]:
        """Base URLs in the order they are tried: the mirror, then the registry itself."""
        return (self.mirror, self.endpoint) if self.mirror else (self.endpoint,)


@dataclass(frozen=True)
class ImageSettings:
    max_store_bytes: int = 50 * 1024**3
    max_layer_bytes: int = 8 * 1024**3  # unpacked bytes of one layer
    max_layer_entries: int = 500_000  # tar entries of one layer
    max_blob_bytes: int = 4 * 1024**3  # one compressed blob as downloaded or loaded
    max_load_bytes: int = 8 * 1024**3  # one uploaded archive (docker save / OCI)
    max_manifest_bytes: int = 4 * 1024**2
    max_layers: int = 127  # layers of one image (overlayfs stacks at most 500 lowerdirs)
    max_concurrent_pulls: int = 4  # pulls and loads running at once; more are refused (429)
    layer_downloads: int = 3  # layers of one pull downloaded at once
    unpack_workers: int = 2  # worker processes that unpack layers
    timeout_seconds: float = 600.0  # one HTTP request to a registry, start to end
    unpack_timeout_seconds: float = 1800.0  # one layer's unpack (a worker is killed after)
    platform: str = ""  # "linux/amd64"; "" = this host's
    default_registry: str = DOCKER_HUB
    allowed_registries: tuple[str, ...] = (DOCKER_HUB, "ghcr.io", "quay.io")  # "*" = any
    registries: dict[str, Registry] = field(default_factory=dict)

    def registry(self, host: str) -> Registry:
        return self.registries.get(host) or Registry(host)

    def allowed(self, host: str) -> bool:
        return "*" in self.allowed_registries or host in self.allowed_registries

    def target_platform(self) -> tuple[str, str, str]:
        """(os, architecture, variant) the pulls resolve image indexes to."""
        if self.platform:
            parts = self.platform.split("/")
            return parts[0], parts[1], parts[2] if len(parts) > 2 else ""
        return host_platform()


def host_platform() -> tuple[str, str, str]:
    machine = platform.machine().lower()
    arch, variant = {
        "x86_64": ("amd64", ""),
        "amd64": ("amd64", ""),
        "aarch64": ("arm64", "v8"),
        "arm64": ("arm64", "v8"),
        "armv7l": ("arm", "v7"),
        "ppc64le": ("ppc64le", ""),
        "s390x": ("s390x", ""),
        "riscv64": ("riscv64", ""),
    }.get(machine, (machine, ""))
    return "linux", arch, variant


def _bad(key: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"config: {key}: {why}", reason="bad-config")


_SIZES = (
    "max_store_bytes",
    "max_layer_bytes",
    "max_blob_bytes",
    "max_load_bytes",
    "max_manifest_bytes",
)
_INTS = (
    "max_layer_entries",
    "max_layers",
    "max_concurrent_pulls",
    "layer_downloads",
    "unpack_workers",
)
_SECONDS = ("timeout_seconds", "unpack_timeout_seconds")
_REGISTRY_KEYS = {"insecure", "username", "password", "password_file", "mirror"}


def _registry(host: str, raw: Any) -> Registry:
    where = f"images.registries.{host}"
    if not isinstance(raw, dict):
        raise _bad(where, "expected a table")
    unknown = set(raw) - _REGISTRY_KEYS
    if unknown:
        raise _bad(f"{where}.{sorted(unknown)[0]}", "unknown key")
    if not _HOST.fullmatch(host):
        raise _bad(where, "expected a registry host[:port]")
    for key in ("username", "password", "password_file", "mirror"):
        if not isinstance(raw.get(key, ""), str):
            raise _bad(f"{where}.{key}", "expected a string")
    if not isinstance(raw.get("insecure", False), bool):
        raise _bad(f"{where}.insecure", "expected true or false")
    password = raw.get("password", "")
    if raw.get("password_file"):
        try:
            with open(raw["password_file"]) as fh:
                password = fh.read().strip()
        except OSError as exc:
            raise _bad(f"{where}.password_file", f"cannot read: {exc.strerror}") from None
    mirror = raw.get("mirror", "").rstrip("/")
    if mirror and not re.fullmatch(r"https?://[^/\s]+", mirror):
        raise _bad(f"{where}.mirror", "expected http(s)://host[:port]")
    if password and not raw.get("username"):
        raise _bad(f"{where}.username", "a password needs a username")
    return Registry(
        host=host,
        insecure=raw.get("insecure", False),
        username=raw.get("username", ""),
        password=password,
        mirror=mirror,
    )


def parse_images(raw: Any) -> ImageSettings:
    where = "images"
    if not isinstance(raw, dict):
        raise _bad(where, "expected a table")
    known = {*_SIZES, *_INTS, *_SECONDS, "platform", "default_registry"}
    known |= {"allowed_registries", "registries"}
    unknown = set(raw) - known
    if unknown:
        raise _bad(f"{where}.{sorted(unknown)[0]}", "unknown key")
    values: dict[str, Any] = {}
    for key in _SIZES:
        if key in raw:
            try:
                values[key] = parse_size(raw[key], what=f"{where}.{key}")
            except InvalidRequest as exc:
                raise _bad(f"{where}.{key}", exc.message) from None
            if values[key] <= 0:
                raise _bad(f"{where}.{key}", "must be positive")
    for key in _INTS:
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _bad(f"{where}.{key}", "expected a positive integer")
            values[key] = value
    if values.get("max_layers", 1) > 500:
        raise _bad(f"{where}.max_layers", "overlayfs stacks at most 500 layers")
    for key in _SECONDS:
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise _bad(f"{where}.{key}", "expected a positive number")
            values[key] = float(value)
    plat = raw.get("platform", "")
    if not isinstance(plat, str) or (plat and not _PLATFORM.fullmatch(plat)):
        raise _bad(f"{where}.platform", 'expected "os/arch[/variant]", e.g. "linux/amd64"')
    values["platform"] = plat
    default = raw.get("default_registry", DOCKER_HUB)
    if not isinstance(default, str) or not _HOST.fullmatch(default):
        raise _bad(f"{where}.default_registry", "expected a registry host[:port]")
    values["default_registry"] = default
    allowed = raw.get("allowed_registries", list(ImageSettings.allowed_registries))
    if not isinstance(allowed, list) or not all(
        isinstance(h, str) and (h == "*" or _HOST.fullmatch(h)) for h in allowed
    ):
        raise _bad(f"{where}.allowed_registries", 'expected a list of host[:port] (or "*")')
    values["allowed_registries"] = tuple(allowed)
    registries = raw.get("registries", {})
    if not isinstance(registries, dict):
        raise _bad(f"{where}.registries", "expected a table of registries")
    values["registries"] = {host: _registry(host, r) for host, r in registries.items()}
    return ImageSettings(**values)
