"""The tornado application: every route of the API in one table."""

from __future__ import annotations

from typing import Any

from tornado import web

from .. import metrics
from ..service import Sandboxd
from . import kernels, networks, openapi, sandboxes, users, volumes
from .base import NotFoundHandler
from .metrics import MetricsHandler, log_request

REF = r"([A-Za-z0-9_.-]+)"
WEBSOCKET_MAX_MESSAGE = 16 << 20  # one frame from a client (a Jupyter message with buffers)
USER = r"([a-z0-9][a-z0-9_.-]*)"


def routes() -> list[tuple[str, Any]]:
    return [
        (r"/api/sandboxes", sandboxes.SandboxesHandler),
        (rf"/api/sandboxes/{REF}", sandboxes.SandboxHandler),
        (rf"/api/sandboxes/{REF}/stop", sandboxes.StopHandler),
        (rf"/api/sandboxes/{REF}/wait", sandboxes.WaitHandler),
        (rf"/api/sandboxes/{REF}/logs", sandboxes.LogsHandler),
        (rf"/api/sandboxes/{REF}/stats", sandboxes.StatsHandler),
        (rf"/api/sandboxes/{REF}/attach", sandboxes.AttachHandler),
        (r"/api/stats", sandboxes.AllStatsHandler),
        (r"/api/users", users.UsersHandler),
        (rf"/api/users/{USER}", users.UserHandler),
        (rf"/api/users/{USER}/tokens", users.TokensHandler),
        (rf"/api/users/{USER}/quota", users.QuotaHandler),
        (r"/api/whoami", users.WhoamiHandler),
        (r"/api/status", users.StatusHandler),
        (r"/api/openapi.json", openapi.OpenApiHandler),
        *kernels.routes(),
        *networks.routes(),
        *volumes.routes(),
        (r"/metrics", MetricsHandler),
    ]


async def make_app(
    sbx: Sandboxd, extra_routes: list[tuple[str, Any]] | None = None
) -> web.Application:
    return web.Application(
        metrics.instrument_routes((extra_routes or []) + routes()),
        sandboxd=sbx,
        kernels=await kernels.setup(sbx),
        log_function=log_request,
        default_handler_class=NotFoundHandler,
        websocket_ping_interval=30,
        websocket_max_message_size=WEBSOCKET_MAX_MESSAGE,
    )
