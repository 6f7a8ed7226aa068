"""``GET /metrics``: Prometheus text exposition, optionally behind a token.

Access, from the config keys ``metrics_public`` and ``metrics_token``:

* ``metrics_public = true`` and no ``metrics_token``: open (the default; the daemon listens on
  loopback). Fine on a trusted host; the page names users and sandbox ids.
* ``metrics_token = "..."``: that token (``Authorization: Bearer``/``token``, or
  ``?token=``), which is read-only because it is not a user token and opens nothing else, or
  an admin token. Prometheus keeps the metrics token in ``credentials_file``.
* ``metrics_public = false`` and no ``metrics_token``: an admin token.

A user token is refused (403): the page shows every user's sandboxes.
"""

from __future__ import annotations

import hmac
import logging
import time

from tornado import web

from .. import metrics
from ..errors import Forbidden, Unauthorized
from .base import BaseHandler, token_from

log = logging.getLogger("sandboxd.metrics")


def log_request(handler: web.RequestHandler) -> None:
    """Tornado ``log_function``: observe the request, then log it as tornado would."""
    metrics.observe_request(handler)
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    logging.getLogger("tornado.access").log(
        level,
        "%d %s %.2fms",
        status,
        handler._request_summary(),
        1000.0 * handler.request.request_time(),
    )


class MetricsHandler(BaseHandler):
    def get(self) -> None:
        self._authorize()
        began = time.perf_counter()
        body = metrics.render(self.sbx)
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
