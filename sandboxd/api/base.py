"""Shared handler behaviour: token auth, bounded JSON bodies, errors as ``{"reason", "message"}``.

Every handler streams its request body (``stream_request_body``), so ``prepare`` runs on the
headers alone: a body whose Content-Length is over the limit gets 413 (and the connection
closes) before a byte of it is read, whoever sends it; reading stops at the limit for a chunked
body too (tornado closes it). The token is checked by each method (``current``), once the
bounded body is in: answering from ``prepare`` would drop the client's keep-alive connection.
URIs in logs have their tokens redacted.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qsl, urlencode

from tornado import web

from .. import metrics
from ..errors import InvalidRequest, PayloadTooLarge, Reason, SandboxdError, Unauthorized
from ..models.types import M, validate
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


def redacted_uri(uri: str) -> str:
    """The request URI with every ``token`` query value replaced: tokens never reach a log."""
    path, sep, query = uri.partition("?")
    if not sep:
        return uri
    pairs = parse_qsl(query, keep_blank_values=True)
    clean = [(k, "REDACTED" if k.lower() == "token" else v) for k, v in pairs]
    return path + "?" + urlencode(clean)


def summary(request: Any) -> str:
    """Tornado's request summary, with tokens redacted (it goes into warnings and errors)."""
    return f"{request.method} {redacted_uri(request.uri or '')} ({request.remote_ip})"


@web.stream_request_body
class BaseHandler(web.RequestHandler):
    """JSON API handler: every error leaves as JSON with the status of its class."""

    public = False  # True: no token needed (documented; the authorization matrix test reads it)
    body_limit: int | None = None  # bytes; None: the config's max_request_body
    actor: User | None = None

    @property
    def sbx(self) -> Sandboxd:
        return self.settings["sandboxd"]

    def _request_summary(self) -> str:
        return summary(self.request)

    def max_body(self) -> int:
        return self.body_limit or self.sbx.config.max_request_body

    def prepare(self) -> None:
        """Before the body: refuse one that is too large, and cap what will be read."""
        limit = self.max_body()
        self._chunks: list[bytes] = []
        length = self.request.headers.get("Content-Length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            self.set_header("Connection", "close")  # the body stays unread
            if not length.isdigit():
                raise InvalidRequest("Content-Length: not a number", reason="bad-request")
            metrics.resource_refusal("body-too-large")
            raise PayloadTooLarge(f"the request body is {int(length)} bytes; the limit is {limit}")
        if self.request.connection is not None:
            self.request.connection.set_max_body_size(limit)

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def check_xsrf_cookie(self) -> None:  # token-authenticated API, no cookies
        return None

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def current(self) -> User:
        if self.actor is not None:
            return self.actor
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

    def raw_body(self) -> bytes:
        return b"".join(getattr(self, "_chunks", ()))

    def body(self) -> Any:
        raw = self.raw_body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"malformed JSON body: {exc}", reason="malformed-json") from None

    def query(self, model: type[M]) -> M:
        """The query string as ``model`` (the last value of each argument); 400 if malformed."""
        args = {k: v[-1].decode(errors="replace") for k, v in self.request.query_arguments.items()}
        return validate(model, args)

    def send(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, SandboxdError):
            payload = exc.to_json()
        elif isinstance(exc, web.HTTPError):
            payload = {
                "reason": Reason.METHOD_NOT_ALLOWED if status_code == 405 else Reason.HTTP_ERROR,
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


def expect_upgrade(request: Any) -> None:
    """A WebSocket route asked without an upgrade: a JSON 400 (tornado's own is plain text)."""
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise InvalidRequest(
            "this endpoint is a WebSocket: send Upgrade: websocket", reason=Reason.NOT_WEBSOCKET
        )


class NotFoundHandler(BaseHandler):
    public = True

    def _no_endpoint(self, *args: Any, **kwargs: Any) -> None:
        from ..errors import NotFound

        raise NotFound(f"no such endpoint: {self.request.path}", reason=Reason.NO_ENDPOINT)

    get = post = put = patch = delete = head = options = _no_endpoint
