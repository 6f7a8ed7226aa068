"""What the API answers: one model per response body, for the OpenAPI document.

The handlers build plain dicts; these models say what those dicts hold. Unknown fields are
refused (``additionalProperties: false``), so the API fuzz test fails when a handler answers a
field that is not documented here. The stats fields come from the dataclasses that produce them.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, create_model

from ..errors import Reason
from ..runtime.cgroups import CgroupStats
from ..runtime.netlink import Counters
from .types import Model

Timestamp = Annotated[
    str,
    Field(
        pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$",
        description="UTC, with microseconds and a Z (as Jupyter writes them)",
    ),
]


class Error(Model):
    """Every error: a machine-readable ``reason`` and a message for people."""

    reason: Reason
    message: Annotated[str, Field(min_length=1)]


class DeviceRate(Model):
    device: Annotated[str, Field(pattern=r"^[0-9]+:[0-9]+$")]
    rate: int


class Limits(Model):
    """``spec.Limits`` as JSON (a test holds the two to the same fields)."""

    cpus: float | None
    memory: int | None
    swap: int
    pids: int | None
    disk: int | None
    io_read_bps: list[DeviceRate]
    io_write_bps: list[DeviceRate]
    io_read_iops: list[DeviceRate]
    io_write_iops: list[DeviceRate]
    memory_high: int | None = None
    cpu_weight: int | None = None


class Volume(Model):
    container: str
    read_only: bool
    name: str
    subpath: str
    host: str


class SandboxNetwork(Model):
    mode: str
    network: str | None
    address: str | None
    gateway: str | None
    mac: str | None
    joined: str | None
    ports: list[str]


class Sandbox(Model):
    id: str
    name: str
    user: str
    kind: Literal["sandbox", "kernel", "server"]
    state: Literal["created", "running", "exited"]
    command: list[str]
    profile: str
    image: str = Field(description="as asked for (`host`, a name, an id)")
    image_id: str | None = Field(description="the store's image it resolved to; null for host")
    limits: Limits
    uid: int
    pid: int | None
    network: str
    volumes: list[Volume]
    workdir: str
    created: Timestamp
    started: Timestamp | None
    finished: Timestamp | None
    exit_code: int | None
    oom_killed: bool
    reason: str = Field(description="why it exited, for people")
    labels: dict[str, str]
    ports: list[str]
    network_settings: SandboxNetwork | None = Field(description="null for none/host")


class Exit(Model):
    exit_code: int | None
    oom_killed: bool
    reason: str


class Logs(Model):
    stdout: str
    stderr: str
    truncated: bool = Field(description="older output was dropped (log_max_bytes)")


def _number_type(tp: Any) -> Any:
    return tp if tp in (int, float) else float | int | None


Stats = create_model(  # type: ignore[call-overload]
    "Stats",
    __base__=Model,
    __doc__="One sample of a running sandbox's usage; ``net_*`` only with a network.",
    id=(str, ...),
    name=(str, ...),
    user=(str, ...),
    read=(Timestamp, ...),
    cpu_percent=(float, ...),
    memory_percent=(float, ...),
    **{
        f.name: (int | float | None if "None" in str(f.type) else float | int, ...)
        for f in dataclasses.fields(CgroupStats)
    },
    **{f"net_{f.name}": (int | None, None) for f in dataclasses.fields(Counters)},
)


class User(Model):
    name: str
    uid: int
    admin: bool
    service: bool
    created: float
    token: str | None = Field(None, description="only in the answer to a create")


class Token(Model):
    token: str


class QuotaValues(Model):
    max_sandboxes: int
    max_kernels: int
    memory: int
    cpus: float


class Usage(Model):
    sandboxes: int
    kernels: int
    memory: int
    cpus: float


class Quota(Model):
    user: str
    quota: QuotaValues
    usage: Usage
    source: Literal["config", "api"]


class Status(Model):
    """The daemon's status; the counts (of every user's sandboxes) for admins only."""

    version: str
    instance: str
    cgroup_version: Literal[1, 2]
    uptime_seconds: float
    running: int | None = None
    sandboxes: int | None = None
    users: int | None = None


class Network(Model):
    name: str
    user: str
    subnet: str
    gateway: str
    bridge: str
    default: bool
    created: float
    sandboxes: dict[str, str] = Field(description="sandbox id → its address")


class VolumeInfo(Model):
    user: str
    name: str
    host: str = Field(description="where it is on the host (sandboxes bind it by name)")
    uid: int
    created: bool = Field(description="made by this request")
    mode: str
    modified: float


class ImageConfig(Model):
    Env: list[str]
    Entrypoint: list[str] | None
    Cmd: list[str] | None
    WorkingDir: str
    User: str
    ExposedPorts: list[str]
    Labels: dict[str, str]


class Image(Model):
    id: str = Field(description="sha256 of the image config")
    names: list[str]
    digests: list[str]
    manifest_digest: str
    created: str | None
    added: float
    size: int = Field(description="unpacked bytes of its layers")
    os: str
    architecture: str
    layers: list[str]
    config: ImageConfig
    source: Literal["pull", "load"]
    sandboxes: int = Field(description="sandboxes holding it")


class ImagesLoaded(Model):
    images: list[Image]


class ImageRemoval(Model):
    untagged: list[str]
    deleted: list[str]
    layers: list[str]


class ImagePrune(Model):
    images: list[str]
    layers: list[str]
    blobs: list[str]
    bytes_freed: int


class Kernel(Model):
    """Jupyter's kernel model, plus the owner and the sandbox."""

    id: Annotated[str, Field(pattern=r"^\w+-\w+-\w+-\w+-\w+$")]
    name: str
    last_activity: Timestamp
    execution_state: str
    connections: int
    reason: str | None = None
    sandbox: str | None = None
    user: str


class Kernelspec(Model):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    spec: dict[str, Any] = Field(description="kernel.json")
    resources: dict[str, str]


class Kernelspecs(Model):
    default: str | None
    kernelspecs: dict[str, Kernelspec]
