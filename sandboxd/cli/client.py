"""A small typed client of the sandboxd HTTP API (docs/api.md), used by ``sandboxctl``.

Why a separate module: the CLI should only parse arguments and render output, while the
wire details (paths, query flags, the token header, how errors look) live in one place that
tests and other tools can reuse. Every failure, whether the daemon answered with an error or
could not be reached at all, comes out as one ``ApiError`` so the CLI has a single thing to
catch and print. The transport is the standard library's ``http.client`` (importing
``requests`` alone cost ~160 ms of every ``sandboxctl`` call); ``websocket`` is imported
lazily: only ``attach`` needs it.
"""

from __future__ import annotations

import http.client
import json
import re
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

if TYPE_CHECKING:
    import websocket

Json = dict[str, Any]

#: Seconds to wait for the TCP connection, and for an answer to an ordinary request.
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0


class ApiError(Exception):
    """The daemon refused or failed a request, or could not be reached (``status`` 0)."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.reason})"


def error_from_response(status: int, body: bytes | str, context: str = "") -> ApiError:
    """Build an ``ApiError`` from an error answer; a non-JSON body (a proxy's HTML page, say)
    gives ``<context>: HTTP <status>`` plus its first line if it is plain text."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        data = None
    if isinstance(data, dict) and "message" in data:
        return ApiError(status, str(data.get("reason") or f"http-{status}"), str(data["message"]))
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    first = text.strip().splitlines()[0][:200] if text.strip() else ""
    message = f"{context}: HTTP {status}" if context else f"HTTP {status}"
    if first and not first.startswith("<"):
        message += f": {first}"
    return ApiError(status, f"http-{status}", message)


def _why(exc: BaseException) -> str:
    """``Connection refused`` rather than ``[Errno 111] Connection refused``."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, socket.gaierror):
        return str(exc.args[-1])
    match = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    return match.group(1).strip() if match else str(exc)


def _ref(ref: str) -> str:
    return quote(ref, safe="")


class Client:
    """One method per endpoint of docs/api.md; methods return the decoded JSON answer."""

    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.headers: dict[str, str] = {"Accept": "application/json"}
        if token:
            self.headers["Authorization"] = f"token {token}"
        parts = urlsplit(self.url)
        self._secure = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self._conn: http.client.HTTPConnection | None = None

    # -- plumbing -------------------------------------------------------------------------

    def _connection(self, read_timeout: float | None) -> http.client.HTTPConnection:
        if self._conn is None:
            cls = http.client.HTTPSConnection if self._secure else http.client.HTTPConnection
            self._conn = cls(self._host, self._port, timeout=CONNECT_TIMEOUT)
            self._conn.connect()
        if self._conn.sock is not None:
            self._conn.sock.settimeout(read_timeout)
        return self._conn

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        read_timeout: float | None = READ_TIMEOUT,
    ) -> Any:
        """Send one request; return the decoded JSON (``None`` for an empty answer)."""
        target = self._prefix + path + (f"?{urlencode(params)}" if params else "")
        headers = dict(self.headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):  # a kept-alive connection the server closed: retry once
            try:
                conn = self._connection(read_timeout)
                conn.request(method, target, body=data, headers=headers)
                resp = conn.getresponse()
                content = resp.read()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if attempt == 2:
                    raise ApiError(
                        0, "unreachable", f"sandboxd at {self.url} closed the connection"
                    ) from exc
            except TimeoutError as exc:
                self.close()
                raise ApiError(0, "timeout", f"sandboxd at {self.url} did not answer") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise ApiError(
                    0, "unreachable", f"cannot reach sandboxd at {self.url}: {_why(exc)}"
                ) from exc
        if resp.status >= 400:
            raise error_from_response(resp.status, content, f"{method} {path}")
        if not content:
            return None
        try:
            return json.loads(content)
        except ValueError as exc:
            raise ApiError(resp.status, "bad-response", f"{path}: answer is not JSON") from exc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- sandboxes ------------------------------------------------------------------------

    def create_sandbox(self, body: Json) -> Json:
        return self.request("POST", "/api/sandboxes", body=body)

    def list_sandboxes(self, include_exited: bool = False) -> list[Json]:
        return self.request(
            "GET", "/api/sandboxes", params={"all": "1"} if include_exited else None
        )

    def get_sandbox(self, ref: str) -> Json:
        return self.request("GET", f"/api/sandboxes/{_ref(ref)}")

    def remove_sandbox(self, ref: str, force: bool = False) -> None:
        params = {"force": "1"} if force else None
        self.request("DELETE", f"/api/sandboxes/{_ref(ref)}", params=params)

    def stop_sandbox(self, ref: str, timeout: float | None = None) -> Json:
        body = {} if timeout is None else {"timeout": timeout}
        return self.request("POST", f"/api/sandboxes/{_ref(ref)}/stop", body=body)

    def wait_sandbox(self, ref: str) -> Json:
        """Block until the sandbox exits (no read timeout: a command may run for days)."""
        return self.request("POST", f"/api/sandboxes/{_ref(ref)}/wait", read_timeout=None)

    def logs(self, ref: str, tail: int | None = None) -> Json:
        params = None if tail is None else {"tail": str(tail)}
        return self.request("GET", f"/api/sandboxes/{_ref(ref)}/logs", params=params)

    def sandbox_stats(self, ref: str) -> Json:
        return self.request("GET", f"/api/sandboxes/{_ref(ref)}/stats")

    def stats(self) -> list[Json]:
        return self.request("GET", "/api/stats")

    def attach(self, ref: str) -> websocket.WebSocket:
        """Open the attach WebSocket; handshake refusals become ``ApiError`` like any request."""
        import websocket

        ws_url = "ws" + self.url[len("http") :] if self.url.startswith("http") else self.url
        header = [f"Authorization: token {self.token}"] if self.token else []
        try:
            return websocket.create_connection(
                f"{ws_url}/api/sandboxes/{_ref(ref)}/attach", header=header, timeout=None
            )
        except websocket.WebSocketBadStatusException as exc:
            body = exc.resp_body or b""
            raise error_from_response(exc.status_code, body, f"attach {ref}") from exc
        except (OSError, websocket.WebSocketException) as exc:
            raise ApiError(0, "unreachable", f"cannot attach at {self.url}: {_why(exc)}") from exc

    # -- users and quotas (admin) ---------------------------------------------------------

    def create_user(self, name: str, admin: bool = False, service: bool = False) -> Json:
        body = {"name": name, "admin": admin, "service": service}
        return self.request("POST", "/api/users", body=body)

    def list_users(self) -> list[Json]:
        return self.request("GET", "/api/users")

    def get_user(self, name: str) -> Json:
        return self.request("GET", f"/api/users/{_ref(name)}")

    def remove_user(self, name: str) -> None:
        self.request("DELETE", f"/api/users/{_ref(name)}")

    def new_token(self, name: str) -> Json:
        return self.request("POST", f"/api/users/{_ref(name)}/tokens")

    def get_quota(self, name: str) -> Json:
        return self.request("GET", f"/api/users/{_ref(name)}/quota")

    def set_quota(self, name: str, body: Json) -> Json:
        return self.request("PUT", f"/api/users/{_ref(name)}/quota", body=body)

    def reset_quota(self, name: str) -> Json | None:
        return self.request("DELETE", f"/api/users/{_ref(name)}/quota")

    # -- service --------------------------------------------------------------------------

    def status(self) -> Json:
        return self.request("GET", "/api/status")

    def whoami(self) -> Json:
        return self.request("GET", "/api/whoami")
