"""The ``[images]`` config table: store limits, registries, credentials, the allow-list, mirrors.

``ImageSettings`` is the table's shape (validated with the rest of the config, so a bad value is
refused at load with its key, like every other setting); ``check_images`` the rules across
keys. Credentials may be given inline or, better, as ``password_file`` (read at load; the
file should be root-only).
"""

from __future__ import annotations

import platform
import re
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, Field, PrivateAttr, StrictBool, StrictStr, ValidationError

from ..errors import InvalidRequest, Reason
from ..models.types import Model, PositiveFloat, count, first_error, size

G = 1 << 30
M = 1 << 20

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


def _registry_host(value: str) -> str:
    if not _HOST.fullmatch(value):
        raise ValueError("expected a registry host[:port]")
    return value


def _mirror(value: str) -> str:
    value = value.rstrip("/")
    if value and not re.fullmatch(r"https?://[^/\s]+", value):
        raise ValueError("expected http(s)://host[:port]")
    return value


def _max_layers(value: int) -> int:
    if value > 500:
        raise ValueError("overlayfs stacks at most 500 layers")
    return value


Host = Annotated[StrictStr, AfterValidator(_registry_host)]
AllowedHost = Annotated[StrictStr, AfterValidator(lambda v: v if v == "*" else _registry_host(v))]


class RegistryTable(Model):
    """``[images.registries."HOST[:PORT]"]``: how to reach one registry."""

    insecure: StrictBool = Field(False, description="plain http (a registry on loopback or a LAN)")
    username: StrictStr = Field("", description="for registries that want a login")
    password: StrictStr = Field("", repr=False, description="better: password_file")
    password_file: StrictStr = Field("", description="read at load; should be root-only")
    mirror: Annotated[StrictStr, AfterValidator(_mirror)] = Field(
        "", description='"https://mirror.example:5000", tried before the registry'
    )
    _secret: str = PrivateAttr("")

    def model_post_init(self, context: Any) -> None:
        self._secret = self.password
        if self.password_file:
            try:
                with open(self.password_file) as fh:
                    self._secret = fh.read().strip()
            except OSError as exc:
                raise ValueError(f"password_file: cannot read: {exc.strerror}") from None


class ImageSettings(Model):
    """``[images]``: the image store's limits, where images may come from, and how."""

    max_store_bytes: size(1) = Field(50 * G, description="the whole image store")
    max_layer_bytes: size(1) = Field(
        8 * G, description="unpacked bytes of one layer (decompression bombs stop here)"
    )
    max_layer_entries: count(1) = Field(500_000, description="tar entries of one layer")
    max_blob_bytes: size(1) = Field(4 * G, description="one compressed layer as downloaded")
    max_load_bytes: size(1) = Field(
        8 * G, description="one uploaded archive (docker save, OCI layout)"
    )
    max_manifest_bytes: size(1) = Field(4 * M, description="one manifest or image config")
    max_layers: Annotated[count(1), AfterValidator(_max_layers)] = Field(
        127, description="layers of one image (overlayfs stacks at most 500)"
    )
    max_concurrent_pulls: count(1) = Field(
        4, description="pulls + loads at once; more are refused with 429"
    )
    layer_downloads: count(1) = Field(3, description="layers of one pull downloaded at once")
    unpack_workers: count(1) = Field(
        2, description="worker processes unpacking layers (off the event loop)"
    )
    timeout_seconds: PositiveFloat = Field(600.0, description="one registry request")
    unpack_timeout_seconds: PositiveFloat = Field(
        1800.0, description="one layer's unpack; the worker is killed after"
    )
    platform: Annotated[StrictStr, Field(pattern=r"^([a-z0-9]+/[a-z0-9]+(/\w+)?)?$")] = Field(
        "", description='"os/arch[/variant]", e.g. "linux/amd64"; "" = this host\'s'
    )
    default_registry: Host = Field(DOCKER_HUB, description="where a name without a host is")
    allowed_registries: tuple[AllowedHost, ...] = Field(
        (DOCKER_HUB, "ghcr.io", "quay.io"), description='registries pulls may use; "*" = any'
    )
    registries: dict[Host, RegistryTable] = Field(
        {}, description='[images.registries."HOST"] tables'
    )

    def registry(self, host: str) -> Registry:
        table = self.registries.get(host)
        if table is None:
            return Registry(host)
        return Registry(
            host=host,
            insecure=table.insecure,
            username=table.username,
            password=table._secret,
            mirror=table.mirror,
        )

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
    return InvalidRequest(f"config: {key}: {why}", reason=Reason.BAD_CONFIG)


def check_images(images: ImageSettings, where: str = "images") -> None:
    """Rules across keys of ``[images]``, refused with the key that breaks them."""
    for host, table in images.registries.items():
        if table._secret and not table.username:
            raise _bad(f"{where}.registries.{host}.username", "a password needs a username")


def parse_images(raw: Any) -> ImageSettings:
    """``[images]`` alone (the config loader validates it with the rest of the file)."""
    try:
        images = ImageSettings.model_validate(raw)
    except ValidationError as exc:
        key, why = first_error(exc)
        raise _bad(f"images.{key}", why) from None
    check_images(images)
    return images
