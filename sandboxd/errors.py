"""The one error tree of sandboxd.

Every failure a client can see is a ``SandboxdError``; its ``status`` is the HTTP status the
API answers with and ``reason`` a short machine-readable slug (also a metrics label).

    SandboxdError                      (500) base class, never raised bare
    ├── Refused                        (4xx) the request is refused by policy; nothing was made
    │   ├── InvalidRequest             (400) malformed or out-of-range input
    │   ├── Unauthorized               (401) no token or an unknown token
    │   ├── Forbidden                  (403) the token may not do this
    │   ├── NotFound                   (404) unknown, or not the caller's
    │   ├── Conflict                   (409) name or port taken, wrong state
    │   ├── PayloadTooLarge            (413) a request body over the configured limit
    │   │   └── TooLarge               (413) an image archive over its configured limit
    │   ├── InvalidImage               (422) an image's content is refused (digest, unsafe layer)
    │   └── QuotaExceeded              (429) over a user or profile quota, or a per-user bound
    └── HostError                      (5xx) the host failed; what was made has been released
        ├── ResourcesExhausted         (503) uids, subnets, memory or pids of the host ran out
        ├── CgroupError                (500) cgroupfs refused a write or a read
        ├── MountError                 (500) a mount or unmount failed
        ├── NetworkError               (500) netlink or nft failed
        ├── SeccompError               (500) the seccomp profile could not be compiled
        ├── LaunchError                (500) bwrap or the launcher child failed
        └── RegistryError              (502) an image registry failed or could not be reached

Foreign exceptions (OSError from cgroupfs, NetlinkError, a failing ``nft``) are mapped into
this tree at the boundary of the runtime module that met them, with ``raise ... from exc``.

Every ``reason`` is a member of ``Reason``: the API documents the enum (``/api/openapi.json``),
metrics use it as a label, the JupyterHub spawner maps it, and a test fails when the code raises
a reason that is not a member.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Every ``reason`` slug a client can see in ``{"reason", "message"}``."""

    # defaults of the classes below
    INTERNAL_ERROR = "internal-error"
    REFUSED = "refused"
    INVALID = "invalid"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not-found"
    CONFLICT = "conflict"
    BODY_TOO_LARGE = "body-too-large"
    QUOTA = "quota"
    HOST_ERROR = "host-error"
    EXHAUSTED = "exhausted"
    CGROUP = "cgroup"
    MOUNT = "mount"
    NETWORK = "network"
    SECCOMP = "seccomp"
    LAUNCH = "launch"
    TOO_LARGE = "too-large"
    INVALID_IMAGE = "invalid-image"
    REGISTRY = "registry"
    # the request itself (400)
    BAD_REQUEST = "bad-request"
    MALFORMED_JSON = "malformed-json"
    BAD_BODY = "bad-body"
    BAD_CONFIG = "bad-config"
    BAD_COMMAND = "bad-command"
    BAD_WORKDIR = "bad-workdir"
    BAD_ENV = "bad-env"
    BAD_DEVICE = "bad-device"
    BAD_SIZE = "bad-size"
    BAD_VOLUME = "bad-volume"
    BAD_VOLUME_TARGET = "bad-volume-target"
    BAD_PORT = "bad-port"
    BAD_NETWORK = "bad-network"
    BAD_NETWORK_NAME = "bad-network-name"
    BAD_KERNEL_ID = "bad-kernel-id"
    SECCOMP_PROFILE = "seccomp-profile"
    NO_VOLUME_ROOT = "no-volume-root"
    NO_MACVLAN = "no-macvlan"
    NOT_WEBSOCKET = "not-websocket"
    # tokens (401) and permissions (403)
    NO_TOKEN = "no-token"
    BAD_TOKEN = "bad-token"
    NOT_ADMIN = "not-admin"
    ADMIN = "admin"
    PROFILE_DENIED = "profile-denied"
    HOST_NETWORK = "host-network"
    HOST_PATH_DENIED = "host-path-denied"
    VOLUME_DENIED = "volume-denied"
    # unknown or not the caller's (404)
    NO_ENDPOINT = "no-endpoint"
    UNKNOWN_SANDBOX = "unknown-sandbox"
    UNKNOWN_USER = "unknown-user"
    UNKNOWN_PROFILE = "unknown-profile"
    UNKNOWN_IMAGE = "unknown-image"
    UNKNOWN_NETWORK = "unknown-network"
    UNKNOWN_VOLUME = "unknown-volume"
    UNKNOWN_KERNEL = "unknown-kernel"
    UNKNOWN_KERNELSPEC = "unknown-kernelspec"
    UNKNOWN_RESOURCE = "unknown-resource"
    NOT_RUNNING = "not-running"
    METHOD_NOT_ALLOWED = "method-not-allowed"
    # state conflicts (409)
    NAME_TAKEN = "name-taken"
    USER_EXISTS = "user-exists"
    RUNNING = "running"
    PORT_TAKEN = "port-taken"
    NETWORK_EXISTS = "network-exists"
    NETWORK_IN_USE = "network-in-use"
    VOLUME_IN_USE = "volume-in-use"
    KERNEL_BUSY = "kernel-busy"
    # quotas and per-user bounds (429)
    MAX_SANDBOXES = "max-sandboxes"
    MAX_KERNELS = "max-kernels"
    MAX_NETWORKS = "max-networks"
    MAX_WEBSOCKETS = "max-websockets"
    MAX_VOLUMES = "max-volumes"
    STDIN_FULL = "stdin-full"  # the close reason of an attach whose stdin buffer filled up
    KERNEL_NOT_READING = "kernel-not-reading"  # a kernel channel closed: the kernel takes nothing
    MEMORY_QUOTA = "memory-quota"
    CPU_QUOTA = "cpu-quota"
    PROFILE_LIMIT = "profile-limit"
    # the host (5xx)
    UIDS_EXHAUSTED = "uids-exhausted"
    SUBNETS_EXHAUSTED = "subnets-exhausted"
    ADDRESSES_EXHAUSTED = "addresses-exhausted"
    ZMQ_SOCKETS = "zmq-sockets"
    POOL_OVERLAP = "pool-overlap"
    KERNEL_SOCKET = "kernel-socket"
    KERNEL_TIMEOUT = "kernel-timeout"
    KERNEL_DIED = "kernel-died"
    HTTP_ERROR = "http-error"
    # images (issue 13): policy, content and registries
    PULL_DENIED = "pull-denied"
    REGISTRY_DENIED = "registry-denied"
    BAD_REFERENCE = "bad-reference"
    BAD_ARCHIVE = "bad-archive"
    BAD_MANIFEST = "bad-manifest"
    SIZE_MISMATCH = "size-mismatch"
    DIGEST_MISMATCH = "digest-mismatch"
    TOO_MANY_LAYERS = "too-many-layers"
    TOO_MANY_PULLS = "too-many-pulls"
    NO_MATCHING_PLATFORM = "no-matching-platform"
    IMAGE_NOT_FOUND = "image-not-found"
    IMAGE_IN_USE = "image-in-use"
    IMAGE_STORE_FULL = "image-store-full"
    IMAGE_STORE = "image-store"
    IMAGE_BROKEN = "image-broken"
    BAD_IMAGE = "bad-image"
    BAD_IMAGE_USER = "bad-image-user"
    NO_COMMAND = "no-command"
    BAD_ENTRYPOINT = "bad-entrypoint"
    IDMAP_UNSUPPORTED = "idmap-unsupported"
    LAYER_TOO_SLOW = "layer-too-slow"
    UNPACK = "unpack"
    REGISTRY_AUTH = "registry-auth"
    REGISTRY_RATE_LIMIT = "registry-rate-limit"
    REGISTRY_UNREACHABLE = "registry-unreachable"
    REGISTRY_TIMEOUT = "registry-timeout"


#: Refusals counted per user by ``sandboxd_admission_refusals_total`` (pre-created series).
ADMISSION_REFUSALS = (
    Reason.MAX_SANDBOXES,
    Reason.MAX_KERNELS,
    Reason.MEMORY_QUOTA,
    Reason.CPU_QUOTA,
    Reason.PROFILE_LIMIT,
    Reason.PROFILE_DENIED,
    Reason.HOST_NETWORK,
)


class SandboxdError(Exception):
    """Base class: carries an HTTP status and a reason slug."""

    status = 500
    reason: str = Reason.INTERNAL_ERROR

    def __init__(self, message: str, *, reason: Reason | str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message}


class Refused(SandboxdError):
    """Refused by policy (4xx): the request was wrong or not allowed, the host is fine."""

    status = 400
    reason = Reason.REFUSED


class InvalidRequest(Refused):
    status = 400
    reason = Reason.INVALID


class Unauthorized(Refused):
    status = 401
    reason = Reason.UNAUTHORIZED


class Forbidden(Refused):
    status = 403
    reason = Reason.FORBIDDEN


class NotFound(Refused):
    status = 404
    reason = Reason.NOT_FOUND


class Conflict(Refused):
    status = 409
    reason = Reason.CONFLICT


class PayloadTooLarge(Refused):
    status = 413
    reason = Reason.BODY_TOO_LARGE


class TooLarge(PayloadTooLarge):
    reason = Reason.TOO_LARGE


class InvalidImage(Refused):
    """Image content that is refused: a wrong digest or size, an unsafe or oversized layer."""

    status = 422
    reason = Reason.INVALID_IMAGE


class QuotaExceeded(Refused):
    status = 429
    reason = Reason.QUOTA


class HostError(SandboxdError):
    """The host failed (5xx); whatever was half-made has been released."""

    status = 500
    reason = Reason.HOST_ERROR


class ResourcesExhausted(HostError):
    status = 503
    reason = Reason.EXHAUSTED


class CgroupError(HostError):
    reason = Reason.CGROUP


class MountError(HostError):
    reason = Reason.MOUNT


class NetworkError(HostError):
    reason = Reason.NETWORK


class SeccompError(HostError):
    reason = Reason.SECCOMP


class LaunchError(HostError):
    reason = Reason.LAUNCH


class RegistryError(HostError):
    """The registry answered with an error, or could not be reached (upstream, so 502)."""

    status = 502
    reason = Reason.REGISTRY
