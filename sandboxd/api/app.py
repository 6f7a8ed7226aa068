"""The tornado application: every route of the API in one table."""

from __future__ import annotations

from typing import Any

from tornado import web

from .. import metrics
from ..service import Sandboxd
from . import contract, kernels, openapi
from .base import NotFoundHandler
from .metrics import log_request

WEBSOCKET_MAX_MESSAGE = 16 << 20  # one frame from a client (a Jupyter message with buffers)


def routes() -> list[tuple[str, Any]]:
    """Tornado's route table, made from the contract (the same list the OpenAPI document shows)."""
    return [(route.regex(), route.handler) for route in contract.ROUTES]


async def make_app(sbx: Sandboxd) -> web.Application:
    return web.Application(
        metrics.instrument_routes(routes()),
        sandboxd=sbx,
        kernels=await kernels.setup(sbx),
        openapi=openapi.rendered(contract.ROUTES),
        log_function=log_request,
        default_handler_class=NotFoundHandler,
        websocket_ping_interval=30,
        websocket_max_message_size=WEBSOCKET_MAX_MESSAGE,
    )
