"""Shared handler behaviour: token auth, JSON bodies, and errors as ``{"reason", "message"}``."""

from __future__ import annotations

import json
import logging
from typing import Any

from tornado import web

from ..errors import InvalidRequest, SandboxdError, Unauthorized
from ..service import Sandboxd
from ..state import User

log = logging.getLogger("sandboxd.api")


def token_from(request: Any) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("token", "bearer") and value.strip():
        return value.strip()
    token = request.query_arguments.get("token")
    return token[0].decode() if token else None


class BaseHandler(web.RequestHandler):
    """JSON API handler: every error leaves as JSON with the status of its class."""

    @property
    def sbx(self) -> Sandboxd:
        return self.settings["sandboxd"]

    def check_xsrf_cookie(self) -> None:  # token-authenticated API, no cookies
        return None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def current(self) -> User:
        user = self.sbx.authenticate(token_from(self.request))
        if user is None:
            header = self.request.headers.get("Authorization") or self.get_query_argument(
                "token", None
            )
            raise Unauthorized(
                "a valid token is required" if header else "no token given",
                reason="bad-token" if header else "no-token",
            )
        return user

    def body(self) -> Any:
        if not self.request.body:
            return {}
        try:
            return json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"malformed JSON body: {exc}", reason="malformed-json") from None

    def send(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, SandboxdError):
            payload = exc.to_json()
        elif isinstance(exc, web.HTTPError):
            payload = {
                "reason": exc.reason or "http-error",
                "message": exc.log_message or self._reason,
            }
        else:
            payload = {"reason": "internal-error", "message": "internal error (see daemon log)"}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(payload))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, SandboxdError):
            if e.status >= 500:
                log.error("%s %s: %s", self.request.method, self.request.path, e.message)
            if not self._finished:
                self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, SandboxdError) and value.status < 500:
            return
        super().log_exception(typ, value, tb)


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:
        from ..errors import NotFound

        raise NotFound(f"no such endpoint: {self.request.path}", reason="no-endpoint")
