"""The API contract: every route, what each method takes and answers, and who may call it.

This table is the one source of the served routes (``app.routes``), the OpenAPI document
(``openapi.document``) and the authorization-matrix test. ``Access`` (in ``routing.py``) says
what each access class means for each caller.
"""

from __future__ import annotations

from ..models import requests as rq
from ..models import responses as rs
from ..models.config import QuotaPatch
from ..models.types import NETWORK_PATTERN, REF_PATTERN, USER_PATTERN, VOLUME_PATTERN
from . import images, kernels, metrics, networks, openapi, sandboxes, users, volumes
from .routing import Access, Op, Route

KERNEL_ID = r"^\w+-\w+-\w+-\w+-\w+$"
SPEC_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
RESOURCE = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
#: name[:tag], name@sha256:..., an image id or a 12+ hex prefix (names hold slashes)
IMAGE_REF = r"^[A-Za-z0-9][A-Za-z0-9_.:/@-]{0,511}$"

REF = {"ref": REF_PATTERN}
USER = {"name": USER_PATTERN}
KERNEL = {"kernel_id": KERNEL_ID}
ADMIT = (400, 403, 404, 409, 429, 500, 503)  # a create: bad input, policy, quota, the host

SANDBOXES = [
    Route(
        "/api/sandboxes",
        sandboxes.SandboxesHandler,
        {
            "get": Op(
                "The caller's sandboxes (an admin's: everyone's); running ones unless all=1",
                Access.TOKEN,
                response=list[rs.Sandbox],
                query=rq.ListQuery,
            ),
            "post": Op(
                "Create and start a sandbox; answers once its command runs",
                Access.TOKEN,
                201,
                rs.Sandbox,
                body=rq.SandboxCreate,
                errors=ADMIT,
            ),
        },
    ),
    Route(
        "/api/sandboxes/{ref}",
        sandboxes.SandboxHandler,
        {
            "get": Op("Inspect a sandbox", Access.OWNER, response=rs.Sandbox),
            "patch": Op(
                "Change cpus, memory or pids of a running sandbox",
                Access.OWNER,
                response=rs.Sandbox,
                body=rq.LimitsUpdate,
                errors=(409, 429),
            ),
            "delete": Op(
                "Remove a sandbox (force=1 kills a running one)",
                Access.OWNER,
                204,
                query=rq.ForceQuery,
                errors=(409,),
            ),
        },
        REF,
    ),
    Route(
        "/api/sandboxes/{ref}/stop",
        sandboxes.StopHandler,
        {
            "post": Op(
                "SIGTERM, a grace period, then kill the cgroup",
                Access.OWNER,
                response=rs.Sandbox,
                body=rq.StopRequest,
            )
        },
        REF,
    ),
    Route(
        "/api/sandboxes/{ref}/wait",
        sandboxes.WaitHandler,
        {"post": Op("Wait for the sandbox to exit", Access.OWNER, response=rs.Exit)},
        REF,
    ),
    Route(
        "/api/sandboxes/{ref}/logs",
        sandboxes.LogsHandler,
        {
            "get": Op(
                "The kept stdout and stderr (log_max_bytes)",
                Access.OWNER,
                response=rs.Logs,
                query=rq.LogsQuery,
            )
        },
        REF,
    ),
    Route(
        "/api/sandboxes/{ref}/stats",
        sandboxes.StatsHandler,
        {"get": Op("Resource usage of a running sandbox", Access.OWNER, response=rs.Stats)},
        REF,
    ),
    Route(
        "/api/sandboxes/{ref}/attach",
        sandboxes.AttachHandler,
        {
            "get": Op(
                "WebSocket: stdout (0x01) and stderr (0x02) frames from the start of the kept "
                "output, stdin (0x00) in, then the exit as a JSON text frame",
                Access.OWNER,
                101,
                errors=(400, 429),
                websocket=True,
            )
        },
        REF,
    ),
    Route(
        "/api/stats",
        sandboxes.AllStatsHandler,
        {
            "get": Op(
                "Stats of the caller's running sandboxes", Access.TOKEN, response=list[rs.Stats]
            )
        },
    ),
]

USERS = [
    Route(
        "/api/users",
        users.UsersHandler,
        {
            "post": Op(
                "Add a user (a service: plain users only); answers with its first token",
                Access.SERVICE,
                201,
                rs.User,
                body=rq.UserCreate,
                errors=(409, 503),
            ),
            "get": Op("Every user", Access.ADMIN, response=list[rs.User]),
        },
    ),
    Route(
        "/api/users/{name}",
        users.UserHandler,
        {
            "get": Op("A user", Access.OWNER, response=rs.User),
            "delete": Op("Remove a user and their sandboxes", Access.ADMIN, 204),
        },
        USER,
    ),
    Route(
        "/api/users/{name}/tokens",
        users.TokensHandler,
        {"post": Op("A new token for the user", Access.SERVICE, 201, rs.Token)},
        USER,
    ),
    Route(
        "/api/users/{name}/quota",
        users.QuotaHandler,
        {
            "get": Op("Quota and usage", Access.SELF, response=rs.Quota),
            "put": Op(
                "Change a user's quota at once (stored, survives a restart)",
                Access.ADMIN,
                response=rs.Quota,
                body=QuotaPatch,
            ),
            "delete": Op("Back to the configured quota", Access.ADMIN, response=rs.Quota),
        },
        USER,
    ),
    Route(
        "/api/users/{user}/volumes",
        volumes.VolumesHandler,
        {"get": Op("The user's volumes", Access.OWNER_NAMED, response=list[rs.VolumeInfo])},
        {"user": USER_PATTERN},
    ),
    Route(
        "/api/users/{user}/volumes/{name}",
        volumes.VolumeHandler,
        {
            "get": Op(
                "Inspect a volume", Access.OWNER_NAMED, response=rs.VolumeInfo, errors=(400,)
            ),
            "put": Op(
                "Make the volume if missing (201), else answer it (200)",
                Access.OWNER_NAMED,
                response=rs.VolumeInfo,
                query=rq.VolumeQuery,
                also={201: rs.VolumeInfo},
            ),
            "delete": Op(
                "Remove the volume with its contents",
                Access.OWNER_NAMED,
                204,
                query=rq.VolumeDeleteQuery,
                errors=(409,),
            ),
        },
        {"user": USER_PATTERN, "name": VOLUME_PATTERN},
    ),
    Route(
        "/api/whoami",
        users.WhoamiHandler,
        {"get": Op("The caller", Access.TOKEN, response=rs.User)},
    ),
    Route(
        "/api/status",
        users.StatusHandler,
        {"get": Op("Daemon status", Access.TOKEN, response=rs.Status)},
    ),
]

NETWORKS = [
    Route(
        "/api/networks",
        networks.NetworksHandler,
        {
            "get": Op(
                "The caller's networks (an admin's: all; user=NAME: that user's)",
                Access.TOKEN,
                response=list[rs.Network],
                query=rq.UserQuery,
                errors=(403, 404),
            ),
            "post": Op(
                "Create a network",
                Access.TOKEN,
                201,
                rs.Network,
                body=rq.NetworkCreate,
                errors=ADMIT,
            ),
        },
    ),
    Route(
        "/api/networks/{name}",
        networks.NetworkHandler,
        {
            "get": Op(
                "Inspect a network (default: made on first use)",
                Access.OWNER_NAMED,
                response=rs.Network,
                query=rq.UserQuery,
                errors=(429, 500, 503),
            ),
            "delete": Op(
                "Remove an unused network",
                Access.OWNER_NAMED,
                204,
                query=rq.UserQuery,
                errors=(400, 409, 500),
            ),
        },
        {"name": NETWORK_PATTERN},
    ),
]

KERNELS = [
    Route(
        "/api/kernelspecs",
        kernels.KernelspecsHandler,
        {
            "get": Op(
                "Kernelspecs the caller (or, for a service, user=NAME) may start",
                Access.TOKEN,
                response=rs.Kernelspecs,
                query=rq.KernelspecsQuery,
            )
        },
    ),
    Route(
        "/api/kernelspecs/{name}",
        kernels.KernelspecHandler,
        {"get": Op("One kernelspec", Access.TOKEN, response=rs.Kernelspec)},
        {"name": SPEC_NAME},
    ),
    Route(
        "/kernelspecs/{name}/{fname}",
        kernels.KernelspecResourceHandler,
        {"get": Op("A kernelspec resource (a logo)", Access.TOKEN, response="*/*")},
        {"name": SPEC_NAME, "fname": RESOURCE},
    ),
    Route(
        "/api/kernels",
        kernels.KernelsHandler,
        {
            "get": Op(
                "The caller's kernels (a service: those it started; an admin: all)",
                Access.TOKEN,
                response=list[rs.Kernel],
            ),
            "post": Op(
                "Start a kernel in its own sandbox; answers once it replied to kernel_info",
                Access.TOKEN,
                201,
                rs.Kernel,
                body=rq.KernelStart,
                errors=ADMIT,
            ),
        },
    ),
    Route(
        "/api/kernels/{kernel_id}",
        kernels.KernelHandler,
        {
            "get": Op("A kernel model", Access.OWNER, response=rs.Kernel, errors=(400,)),
            "delete": Op(
                "Shut a kernel down and remove its sandbox", Access.OWNER, 204, errors=(400,)
            ),
        },
        KERNEL,
    ),
    Route(
        "/api/kernels/{kernel_id}/{action=interrupt}",
        kernels.KernelActionHandler,
        {
            "post": Op(
                "SIGINT to the kernel", Access.OWNER, 204, body=rq.KernelAction, errors=(409,)
            )
        },
        KERNEL,
    ),
    Route(
        "/api/kernels/{kernel_id}/{action=restart}",
        kernels.KernelActionHandler,
        {
            "post": Op(
                "A fresh kernel process in a fresh sandbox, same id",
                Access.OWNER,
                response=rs.Kernel,
                body=rq.KernelAction,
                errors=(409, 429, 500, 503),
            )
        },
        KERNEL,
    ),
    Route(
        "/api/kernels/{kernel_id}/channels",
        kernels.KernelChannelsHandler,
        {
            "get": Op(
                "WebSocket: Jupyter messages (legacy framing, or v1.kernel.websocket.jupyter.org)",
                Access.OWNER,
                101,
                query=rq.ChannelsQuery,
                errors=(400, 429),
                websocket=True,
            )
        },
        KERNEL,
    ),
]

IMAGES = [
    Route(
        "/api/images",
        images.ImagesHandler,
        {
            "get": Op(
                "Images in the store (shared by all users)", Access.TOKEN, response=list[rs.Image]
            )
        },
    ),
    Route(
        "/api/images/pull",
        images.PullHandler,
        {
            "post": Op(
                "Pull an image: an admin, or (not in the default config) a user of a profile "
                "with allow_pull; 201 with the image at the end, or with stream 200 and "
                "application/x-ndjson progress ending in a done or error event",
                Access.ADMIN,
                201,
                rs.Image,
                body=rq.ImagePull,
                errors=(404, 422, 429, 502),
                also={200: "application/x-ndjson"},
            )
        },
    ),
    Route(
        "/api/images/load",
        images.LoadHandler,
        {
            "post": Op(
                "Load a docker save archive or an OCI layout tar (maybe gzip or zstd); the body "
                "is the archive, at most images.max_load_bytes; the token is checked first",
                Access.ADMIN,
                201,
                rs.ImagesLoaded,
                body="application/x-tar",
                query=rq.ImageLoadQuery,
                errors=(422, 429),
            )
        },
    ),
    Route(
        "/api/images/prune",
        images.PruneHandler,
        {
            "post": Op(
                "Remove unnamed, unheld images and the layers nothing uses",
                Access.ADMIN,
                response=rs.ImagePrune,
            )
        },
    ),
    Route(
        "/api/images/{ref}",
        images.ImageHandler,
        {
            "get": Op("Inspect an image", Access.TOKEN, response=rs.Image),
            "delete": Op(
                "Remove a name (by id: every name); force untags an image in use",
                Access.ADMIN,
                response=rs.ImageRemoval,
                query=rq.ForceQuery,
                errors=(409,),
            ),
        },
        {"ref": IMAGE_REF},
        {"ref": r"^[A-Za-z0-9_.:/@%-]{1,1536}$"},
    ),
]

SERVICE = [
    Route(
        "/api/openapi.json",
        openapi.OpenApiHandler,
        {"get": Op("This document", Access.PUBLIC, response="application/json")},
    ),
    Route(
        "/metrics",
        metrics.MetricsHandler,
        {
            "get": Op(
                "Prometheus metrics: an admin token, or the config's metrics_token, or no "
                "token with metrics_public (the access shown is the default config's)",
                Access.ADMIN,
                response="text/plain",
            )
        },
    ),
]

ROUTES: list[Route] = [*SANDBOXES, *USERS, *NETWORKS, *KERNELS, *IMAGES, *SERVICE]
