"""``GET /metrics``: Prometheus text exposition, optionally behind a token.

Access, from the config keys ``metrics_public`` and ``metrics_token``:

* ``metrics_public = false`` (the default) and no ``metrics_token``: an admin token. The page
  names every user and sandbox id, so it is not public unless the admin says so.
* ``metrics_token = "..."``: that token (``Authorization: Bearer``/``token``), which is
  read-only because it is not a user token and opens nothing else, or an admin token.
  Prometheus keeps the metrics token in ``credentials_file``.
* ``metrics_public = true`` and no ``metrics_token``: open, for a trusted host.

A user token is refused (403): the page shows every user's sandboxes.
"""

from __future__ import annotations

import hmac
import logging
import time

from tornado import web

from .. import metrics
from ..errors import Forbidden, Unauthorized
from .base import BaseHandler, redacted_uri, token_from

log = logging.getLogger("sandboxd.metrics")


def log_request(handler: web.RequestHandler) -> None:
    """Tornado ``log_function``: observe the request, then log it as tornado would, with any
    ``?token=`` redacted."""
    metrics.observe_request(handler)
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    logging.getLogger("tornado.access").log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        redacted_uri(request.uri or ""),
        request.remote_ip,
        1000.0 * request.request_time(),
    )


class MetricsHandler(BaseHandler):
    public = True  # authorized below, by its own rules

    async def get(self) -> None:
        self._authorize()
        began = time.perf_counter()
        body = await self.sbx.metrics_body()
        log.debug("scrape took %.1f ms", 1000 * (time.perf_counter() - began))
        self.set_header("Content-Type", metrics.CONTENT_TYPE)
        self.finish(body)

    def _authorize(self) -> None:
        config = self.sbx.config
        if config.metrics_public and not config.metrics_token:
            return
        token = token_from(self.request)
        if token is None:
            raise Unauthorized(
                "/metrics needs the metrics token or an admin token", reason="no-token"
            )
        if config.metrics_token and hmac.compare_digest(
            token.encode(), config.metrics_token.encode()
        ):
            return
        user = self.sbx.authenticate(token)
        if user is None:
            raise Unauthorized("a valid token is required", reason="bad-token")
        if not user.admin:
            raise Forbidden(
                "/metrics needs the metrics token or an admin token", reason="not-admin"
            )
