"""What clients send: request bodies and query strings, one model each.

Only the *shape* is here (types, patterns, ranges). What depends on the caller, the profile or
the host (quotas, profile maxima, volume ownership, host paths, whether a network exists) is
policy, decided by plain functions over these models in ``admission.py`` and the service.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
    model_validator,
)

from ..errors import Reason
from .types import (
    ENV_KEY_PATTERN,
    NAME_PATTERN,
    NETWORK_PATTERN,
    NO_NUL,
    USER_PATTERN,
    AbsolutePath,
    Bool,
    Count8,
    Cpus,
    Model,
    NonNegativeFloat,
    Query,
    Size0,
    Size1M,
    Size4M,
    Text,
)

MAX_COMMAND_BYTES = 128 * 1024
MAX_VOLUMES = 32
MAX_DEVICE_RULES = 16
MAX_ENV_VALUE = 65536


def _device_rule(value: str) -> str:
    if not value.startswith("/dev/") or value.count(":") != 1 or value.endswith(":"):
        raise ValueError(f"{value[:64]!r} is not /dev/DEVICE:RATE")
    return value


NAME_OR_EMPTY = NAME_PATTERN.replace("^", "^(", 1).replace("$", ")?$")
UserName = Annotated[str, Field(pattern=USER_PATTERN)]
#: ``bridge``, ``none``, ``host``, ``macvlan``, ``container:<sandbox>`` or a network name
NetworkMode = Annotated[
    str, Field(pattern=r"^(container:[A-Za-z0-9_.-]{1,64}|[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31})$")
]
#: ``[HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]``
PortSpec = Annotated[
    str,
    Field(pattern=r"^([0-9]{1,3}(\.[0-9]{1,3}){3}:)?[0-9]{1,5}:[0-9]{1,5}(/(tcp|udp))?$"),
]
#: ``SOURCE:TARGET[:ro|rw]``; SOURCE is ``NAME[/SUBPATH]`` or (admins) an absolute host path
VolumeSpec = Annotated[
    str, Field(min_length=3, max_length=4096, pattern=r"^[^:]+:[^:]+(:(ro|rw))?$")
]
#: ``/dev/DEVICE:RATE``
DeviceRule = Annotated[
    Text,
    Field(max_length=256),
    WithJsonSchema({"type": "string", "pattern": r"^/dev/[^:\x00]+:[^:\x00]+$", "maxLength": 256}),
    AfterValidator(_device_rule),
]
EnvValue = Annotated[
    Text,
    Field(max_length=MAX_ENV_VALUE),
    WithJsonSchema({"type": "string", "pattern": NO_NUL, "maxLength": MAX_ENV_VALUE}),
]
EnvKey = Annotated[str, Field(pattern=ENV_KEY_PATTERN)]
Label = Annotated[str, Field(max_length=1024)]


def _env_pairs(value: Any) -> Any:
    """``["K=V", ...]`` (docker's form) is the same as ``{"K": "V"}``."""
    if not isinstance(value, list):
        return value
    out = {}
    for item in value:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"{str(item)[:64]!r} is not KEY=VALUE")
        key, _, val = item.partition("=")
        out[key] = val
    return out


def _command_size(argv: list[str]) -> list[str]:
    if sum(len(a) for a in argv) > MAX_COMMAND_BYTES:
        raise ValueError(f"longer than {MAX_COMMAND_BYTES} bytes")
    return argv


Env = Annotated[
    dict[EnvKey, EnvValue],
    BeforeValidator(_env_pairs),
    WithJsonSchema(
        {
            "anyOf": [
                {
                    "type": "object",
                    "propertyNames": {"pattern": ENV_KEY_PATTERN},
                    "additionalProperties": {
                        "type": "string",
                        "pattern": NO_NUL,
                        "maxLength": MAX_ENV_VALUE,
                    },
                },
                {
                    "type": "array",
                    "items": {
                        "type": "string",
                        "pattern": r"^[A-Za-z_][A-Za-z0-9_]{0,255}=[^\x00]*$",
                    },
                },
            ]
        }
    ),
]


class SandboxCreate(Model):
    """``POST /api/sandboxes``: a command to run in a new sandbox. Unset fields take the
    profile's defaults."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"command": ["true"]},
                {
                    "command": ["sh", "-c", "echo $GREETING; sleep 1"],
                    "name": "hello",
                    "memory": "64m",
                    "cpus": 0.5,
                    "env": {"GREETING": "hi"},
                    "labels": {"purpose": "example"},
                },
            ]
        }
    )
    reasons: ClassVar[dict[str, Reason]] = {
        "network": Reason.BAD_NETWORK,
        "ports": Reason.BAD_PORT,
        "volumes": Reason.BAD_VOLUME,
        # a size written as a string ("103", "1k") can be below the minimum, which the
        # document cannot say for strings: refused with a reason of its own, like volumes
        "memory": Reason.BAD_SIZE,
        "swap": Reason.BAD_SIZE,
        "disk": Reason.BAD_SIZE,
        "entrypoint": Reason.BAD_ENTRYPOINT,
    }

    command: Annotated[list[Text], AfterValidator(_command_size)] = Field(
        default_factory=list,
        description="argv to run; with an OCI image it replaces the image's Cmd (after its "
        "Entrypoint); required with the built-in `host` image (400 otherwise)",
    )
    name: Annotated[str, Field(pattern=NAME_OR_EMPTY)] | None = Field(
        None, description="unique per user, also the hostname; default `sbx-<id8>`"
    )
    profile: Annotated[str, Field(min_length=1, max_length=64)] = Field(
        "default", description="the profile the sandbox is created under"
    )
    image: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        None,
        description="`host` (built-in) or `NAME[:TAG]`, `NAME@sha256:…`, an image id; default "
        "the profile's. A missing image is pulled first if the profile has allow_pull (or an "
        "admin asks), else 404 image-not-found",
    )
    entrypoint: Annotated[list[Text], AfterValidator(_command_size)] | None = Field(
        None,
        description="replaces the image's Entrypoint and drops its Cmd (`docker run "
        "--entrypoint`); `[]` clears it",
    )
    cpus: Cpus | None = Field(None, description="cores, e.g. 0.5 (up to the profile's max_cpus)")
    memory: Size4M | None = Field(None, description="memory limit, e.g. `512m`")
    swap: Size0 | None = Field(None, description="swap beyond memory (default 0)")
    disk: Size1M | None = Field(None, description="writable layer size, e.g. `1g`")
    pids: Count8 | None = Field(None, description="most processes at once (at least 8)")
    device_read_bps: Annotated[list[DeviceRule], Field(max_length=MAX_DEVICE_RULES)] = Field(
        default_factory=list, description='per-device read rate, `"/dev/vda:1mb"`'
    )
    device_write_bps: Annotated[list[DeviceRule], Field(max_length=MAX_DEVICE_RULES)] = Field(
        default_factory=list, description="per-device write rate"
    )
    device_read_iops: Annotated[list[DeviceRule], Field(max_length=MAX_DEVICE_RULES)] = Field(
        default_factory=list, description='per-device read operations/s, `"/dev/vda:100"`'
    )
    device_write_iops: Annotated[list[DeviceRule], Field(max_length=MAX_DEVICE_RULES)] = Field(
        default_factory=list, description="per-device write operations/s"
    )
    volumes: Annotated[list[VolumeSpec], Field(max_length=MAX_VOLUMES)] = Field(
        default_factory=list,
        description="`NAME[/SUBPATH]:TARGET[:ro]` (the owner's volumes); an absolute host path "
        "as SOURCE needs an admin token",
    )
    env: Env = Field(default_factory=dict, description='`{"K": "V"}` or `["K=V"]`')
    workdir: AbsolutePath | None = Field(
        None,
        description="default `/home/jovyan` (an OCI image: its WorkingDir, else its user's home)",
    )
    stdin: Bool = Field(False, description="keep stdin open for `attach` (default: /dev/null)")
    auto_remove: Bool = Field(False, description="remove the sandbox when it exits")
    user: UserName | None = Field(
        None, description="create for that user (an admin, or a service for plain users)"
    )
    network: NetworkMode | None = Field(
        None,
        description="`bridge` (the user's default network), a network name, `none`, `host` "
        "(profiles with allow_host_network), `container:<ref>`, `macvlan`; default the "
        "profile's",
    )
    ports: Annotated[list[PortSpec], Field(max_length=64)] = Field(
        default_factory=list,
        description="`[HOSTIP:]HOSTPORT:CTRPORT[/tcp|/udp]`, bridge networks only",
    )
    labels: dict[Annotated[str, Field(max_length=256)], Label] = Field(
        default_factory=dict, description="free-form string labels"
    )


class LimitsUpdate(Model):
    """``PATCH /api/sandboxes/{ref}``: new limits of a running sandbox (at least one)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})
    reasons: ClassVar[dict[str, Reason]] = {"memory": Reason.BAD_SIZE}

    cpus: Cpus | None = None
    memory: Size4M | None = None
    pids: Count8 | None = None
    memory_high: Size0 | None = Field(
        None, description="cgroup v2 memory.high; 0 = off, else 4m up to the sandbox's memory"
    )
    cpu_weight: Annotated[StrictInt, Field(ge=1, le=10000)] | None = Field(
        None, description="cpu.weight, 1 up to the profile's (a tenant may only yield share)"
    )

    @model_validator(mode="after")
    def _some(self) -> LimitsUpdate:
        if not self.model_fields_set:
            raise ValueError(
                "expected an object with cpus, memory, pids, memory_high and/or cpu_weight"
            )
        return self


class StopRequest(Model):
    """``POST /api/sandboxes/{ref}/stop``: SIGTERM, then the cgroup is killed after ``timeout``."""

    timeout: NonNegativeFloat | None = Field(
        None, description="seconds of grace (default the config's stop_grace_seconds)"
    )


class UserCreate(Model):
    """``POST /api/users``: a new user and its first token."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "alice"}]})

    name: UserName
    admin: Bool = False
    service: Bool = Field(
        False, description="a service token (a JupyterHub) manages plain users' resources"
    )


class NetworkCreate(Model):
    """``POST /api/networks``: a new bridge network of the caller (or of ``user``)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "lab"}]})

    reasons: ClassVar[dict[str, Reason]] = {"name": Reason.BAD_NETWORK_NAME}

    name: Annotated[str, Field(pattern=NETWORK_PATTERN)]
    user: UserName | None = Field(None, description="an admin or service: another user's")


class KernelStart(Model):
    """``POST /api/kernels`` (Jupyter gateway API). Other fields (``path``, ...) are ignored, as
    jupyter_server's gateway does."""

    model_config = ConfigDict(extra="ignore")
    reasons: ClassVar[dict[str, Reason]] = {"name": Reason.BAD_BODY, "env": Reason.BAD_ENV}

    name: Annotated[str, Field(max_length=256)] | None = Field(
        None, description="kernelspec name; default the default kernelspec"
    )
    env: dict[str, str] | None = Field(
        None,
        description="`KERNEL_*` and the config's env_allow pass into the kernel; the rest is "
        "dropped",
    )


class KernelAction(Model):
    """``POST /api/kernels/{id}/interrupt|restart``: ``{}`` (what jupyter_server sends)."""

    model_config = ConfigDict(extra="ignore")


class ImagePull(Model):
    """``POST /api/images/pull``: an image from a registry (admins; others under a profile with
    ``allow_pull``)."""

    ref: Annotated[str, Field(min_length=1, max_length=512)] = Field(
        description="name[:tag][@sha256:...]"
    )
    profile: Annotated[str, Field(min_length=1, max_length=64)] | None = Field(
        None, description="a profile with allow_pull that the caller may use"
    )
    stream: Bool = Field(
        False, description="answer 200 with progress events, one JSON object per line"
    )


# --- query strings --------------------------------------------------------------------------

Flag = Annotated[str, Field(pattern=r"^(0|1|true|false|yes|no)$")]


def flag(value: str | None) -> bool:
    return value in ("1", "true", "yes")


class ListQuery(Query):
    all: Flag | None = Field(None, description="1: exited sandboxes too")


class ForceQuery(Query):
    force: Flag | None = Field(None, description="1: kill a running one / remove one in use")


class LogsQuery(Query):
    tail: Annotated[str, Field(pattern=r"^[0-9]{1,9}$")] | None = Field(
        None, description="only the last N lines"
    )


class UserQuery(Query):
    user: UserName | None = Field(None, description="an admin or service: another user's")


class KernelspecsQuery(Query):
    user: UserName | None = Field(
        None, description="a service or admin: the kernelspecs that user may start"
    )


class VolumeQuery(Query):
    root: AbsolutePath | None = Field(
        None, description="a configured volume root (default the first)"
    )


class VolumeDeleteQuery(VolumeQuery):
    force: Flag | None = Field(None, description="1: remove even while a sandbox binds it")


class ImageLoadQuery(Query):
    tag: Annotated[str, Field(min_length=1, max_length=512)] | None = Field(
        None, description="a name for the one image of the archive"
    )


class ChannelsQuery(Query):
    session_id: Annotated[str, Field(max_length=256)] | None = None
