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
    │   └── QuotaExceeded              (429) over a user or profile quota, or a per-user bound
    └── HostError                      (5xx) the host failed; what was made has been released
        ├── ResourcesExhausted         (503) uids, subnets, memory or pids of the host ran out
        ├── CgroupError                (500) cgroupfs refused a write or a read
        ├── MountError                 (500) a mount or unmount failed
        ├── NetworkError               (500) netlink or nft failed
        ├── SeccompError               (500) the seccomp profile could not be compiled
        └── LaunchError                (500) bwrap or the launcher child failed

Foreign exceptions (OSError from cgroupfs, NetlinkError, a failing ``nft``) are mapped into
this tree at the boundary of the runtime module that met them, with ``raise ... from exc``.
"""

from __future__ import annotations


class SandboxdError(Exception):
    """Base class: carries an HTTP status and a reason slug."""

    status = 500
    reason = "internal-error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def to_json(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.message}


class Refused(SandboxdError):
    """Refused by policy (4xx): the request was wrong or not allowed, the host is fine."""

    status = 400
    reason = "refused"


class InvalidRequest(Refused):
    status = 400
    reason = "invalid"


class Unauthorized(Refused):
    status = 401
    reason = "unauthorized"


class Forbidden(Refused):
    status = 403
    reason = "forbidden"


class NotFound(Refused):
    status = 404
    reason = "not-found"


class Conflict(Refused):
    status = 409
    reason = "conflict"


class PayloadTooLarge(Refused):
    status = 413
    reason = "body-too-large"


class QuotaExceeded(Refused):
    status = 429
    reason = "quota"


class HostError(SandboxdError):
    """The host failed (5xx); whatever was half-made has been released."""

    status = 500
    reason = "host-error"


class ResourcesExhausted(HostError):
    status = 503
    reason = "exhausted"


class CgroupError(HostError):
    reason = "cgroup"


class MountError(HostError):
    reason = "mount"


class NetworkError(HostError):
    reason = "network"


class SeccompError(HostError):
    reason = "seccomp"


class LaunchError(HostError):
    reason = "launch"
