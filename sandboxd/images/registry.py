"""A client of the OCI distribution API (Docker Registry HTTP API v2), on httpx.

Authentication follows the registry's ``WWW-Authenticate`` challenge: none, ``Basic`` with the
admin's credentials, or ``Bearer`` (Docker Hub, ghcr.io, quay.io): a token is fetched from the
challenge's realm (with the credentials if there are any, anonymously otherwise), cached per
scope until it expires, and the request is retried once. A mirror, if configured, is tried
first for the manifest; the endpoint that served it serves the blobs too.

Nothing is trusted: manifests and configs are size-capped and read whole, then checked against
their digest; layer blobs stream to a file through the io lane (write + sha256 off the event
loop), are cut off past the descriptor's size, and are checked for size and digest at the end.
Every failure maps to the error tree here: unreachable or 5xx → ``RegistryError`` (502), an
unknown image → ``NotFound`` (``image-not-found``), content that does not match → ``InvalidImage``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from .. import blocking
from ..errors import InvalidImage, NotFound, RegistryError
from . import oci
from .settings import Registry

log = logging.getLogger("sandboxd.images")

_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')
#: Write (and hash) downloads in pieces this big, in a thread.
SINK_CHUNK = 1024 * 1024
USER_AGENT = "sandboxd"


@dataclass(frozen=True)
class Fetched:
    media_type: str
    digest: str
    data: bytes


def basic_header(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="...",service="...",scope="..."`` → ("bearer", {realm, service, scope})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE.findall(rest))


class _Sink:
    """Where a blob goes: a file, and the running sha256 of what was written."""

    def __init__(self, path: str) -> None:
        self.fh = open(path, "wb")  # noqa: SIM115 - closed by close()
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.hash.update(data)
        self.size += len(data)

    def close(self) -> None:
        self.fh.close()


class RegistryClient:
    """One registry (and its mirror), for one pull; tokens are cached on the instance."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        registry: Registry,
        repository: str,
        timeout: float,
    ) -> None:
        self.http = http
        self.registry = registry
        self.repository = repository
        self.timeout = timeout
        self.base = registry.endpoint
        self._auth: dict[str, str] = {}  # base URL -> Authorization header value
        self._expires: dict[str, float] = {}

    # -- requests with the auth dance ------------------------------------------------------

    def _url(self, base: str, kind: str, ref: str) -> str:
        return f"{base}/v2/{self.repository}/{kind}/{ref}"

    async def _send(
        self, base: str, url: str, headers: dict[str, str], stream: bool
    ) -> httpx.Response:
        for attempt in (1, 2):
            auth = self._auth.get(base)
            if auth and self._expires.get(base, float("inf")) > time.monotonic():
                headers = {**headers, "Authorization": auth}
            request = self.http.build_request("GET", url, headers=headers)
            try:
                resp = await self.http.send(request, stream=stream, follow_redirects=True)
            except httpx.HTTPError as exc:
                raise RegistryError(
                    f"registry {self.registry.host} unreachable ({base}): {exc!r}",
                    reason="registry-unreachable",
                ) from exc
            if resp.status_code != 401 or attempt == 2:
                return resp
            challenge = resp.headers.get("WWW-Authenticate", "")
            await resp.aclose()
            await self._authenticate(base, challenge)
        raise AssertionError("unreachable")

    async def _authenticate(self, base: str, challenge: str) -> None:
        scheme, params = parse_challenge(challenge)
        reg = self.registry
        if scheme == "basic":
            if not reg.username:
                raise RegistryError(
                    f"registry {reg.host} wants credentials and none are configured",
                    reason="registry-auth",
                )
            self._auth[base] = basic_header(reg.username, reg.password)
            return
        if scheme != "bearer" or not params.get("realm"):
            raise RegistryError(
                f"registry {reg.host}: unsupported auth challenge {challenge!r}",
                reason="registry-auth",
            )
        realm = params["realm"]
        if not realm.startswith(("https://", "http://")) or (
            realm.startswith("http://") and not base.startswith("http://")
        ):
            raise RegistryError(
                f"registry {reg.host}: refusing token realm {realm!r}", reason="registry-auth"
            )
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self.repository}:pull")
        auth = httpx.BasicAuth(reg.username, reg.password) if reg.username else None
        try:
            resp = await self.http.get(realm, params=query, auth=auth, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise RegistryError(
                f"token server of {reg.host} unreachable: {exc!r}", reason="registry-unreachable"
            ) from exc
        if resp.status_code in (401, 403):
            raise RegistryError(
                f"token server of {reg.host} refused the credentials (HTTP {resp.status_code})",
                reason="registry-auth",
            )
        if resp.status_code != 200 or len(resp.content) > 1024 * 1024:
            raise RegistryError(
                f"token server of {reg.host}: HTTP {resp.status_code}", reason="registry-auth"
            )
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
            expires = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(
                f"token server of {reg.host} sent no token", reason="registry-auth"
            ) from None
        self._auth[base] = f"Bearer {token}"
        self._expires[base] = time.monotonic() + max(expires - 5, 1)

    def _error(self, resp: httpx.Response, what: str) -> Exception:
        status = resp.status_code
        if status == 404:
            return NotFound(
                f"{self.registry.host}/{self.repository}: {what} not found in the registry",
                reason="image-not-found",
            )
        if status in (401, 403):
            return RegistryError(
                f"{self.registry.host}/{self.repository}: access to {what} denied "
                f"(HTTP {status}): check the credentials configured for this registry",
                reason="registry-auth",
            )
        if status == 429:
            return RegistryError(
                f"registry {self.registry.host} rate-limits us (HTTP 429)",
                reason="registry-rate-limit",
            )
        return RegistryError(f"registry {self.registry.host}: {what}: HTTP {status}")

    async def _read_capped(self, resp: httpx.Response, limit: int, what: str) -> bytes:
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > limit:
            await resp.aclose()
            raise InvalidImage(
                f"{what}: {length} bytes is over the limit of {limit}", reason="too-large"
            )
        out = bytearray()
        async for chunk in resp.aiter_bytes():
            out += chunk
            if len(out) > limit:
                await resp.aclose()
                raise InvalidImage(f"{what}: more than {limit} bytes", reason="too-large")
        return bytes(out)

    # -- the API ---------------------------------------------------------------------------

    async def manifest(self, reference: str, limit: int) -> Fetched:
        """The manifest (or index) named by a tag or digest; the digest is checked if pinned."""
        headers = {"Accept": oci.ACCEPT, "User-Agent": USER_AGENT}
        last: Exception | None = None
        for base in self.registry.endpoints():
            try:
                async with asyncio.timeout(self.timeout):
                    resp = await self._send(
                        base, self._url(base, "manifests", reference), headers, True
                    )
                    try:
                        if resp.status_code != 200:
                            raise self._error(resp, f"manifest {reference}")
                        data = await self._read_capped(resp, limit, f"manifest {reference}")
                    finally:
                        await resp.aclose()
            except TimeoutError as exc:
                last = RegistryError(
                    f"registry {self.registry.host}: timed out", reason="registry-timeout"
                )
                last.__cause__ = exc
                continue
            except (RegistryError, NotFound) as exc:
                last = exc
                if base != self.registry.endpoint:
                    log.warning("mirror %s failed (%s); trying the registry", base, exc)
                continue
            self.base = base
            digest = oci.sha256_digest(data)
            if reference.startswith("sha256:") and digest != reference:
                raise InvalidImage(
                    f"manifest {reference}: content hashes to {digest}", reason="digest-mismatch"
                )
            doc = oci.load_json(data, "manifest")
            media = resp.headers.get("Content-Type", "").split(";")[0].strip()
            return Fetched(oci.media_type_of(doc) or media, digest, data)
        assert last is not None
        raise last

    async def blob_bytes(self, desc: oci.Descriptor, limit: int) -> bytes:
        """A small blob (a config), read whole and verified."""
        if desc.size > limit:
            raise InvalidImage(
                f"blob {desc.digest}: {desc.size} bytes is too large", reason="too-large"
            )
        headers = {"User-Agent": USER_AGENT}
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._send(
                    self.base, self._url(self.base, "blobs", desc.digest), headers, True
                )
                try:
                    if resp.status_code != 200:
                        raise self._error(resp, f"blob {desc.digest}")
                    data = await self._read_capped(resp, desc.size, f"blob {desc.digest}")
                finally:
                    await resp.aclose()
        except TimeoutError as exc:
            raise RegistryError(
                f"registry {self.registry.host}: timed out", reason="registry-timeout"
            ) from exc
        oci.verify(data, desc.digest, desc.size)
        return data

    async def download(
        self, desc: oci.Descriptor, path: str, on_bytes: Callable[[int], None] | None = None
    ) -> None:
        """Stream a layer blob to ``path`` (write + hash in a thread); verify size and digest."""
        sink = await blocking.run(_Sink, path)
        headers = {"User-Agent": USER_AGENT}
        try:
            async with asyncio.timeout(self.timeout):
                resp = await self._send(
                    self.base, self._url(self.base, "blobs", desc.digest), headers, True
                )
                try:
                    if resp.status_code != 200:
                        raise self._error(resp, f"blob {desc.digest}")
                    await self._stream_into(resp, sink, desc, on_bytes)
                finally:
                    await resp.aclose()
        except TimeoutError as exc:
            raise RegistryError(
                f"registry {self.registry.host}: timed out", reason="registry-timeout"
            ) from exc
        finally:
            await blocking.run(sink.close)
        if sink.size != desc.size:
            raise InvalidImage(
                f"blob {desc.digest}: got {sink.size} bytes, the manifest says {desc.size}",
                reason="size-mismatch",
            )
        actual = "sha256:" + sink.hash.hexdigest()
        if actual != desc.digest:
            raise InvalidImage(
                f"blob {desc.digest}: content hashes to {actual}", reason="digest-mismatch"
            )

    async def _stream_into(
        self,
        resp: httpx.Response,
        sink: _Sink,
        desc: oci.Descriptor,
        on_bytes: Callable[[int], None] | None,
    ) -> None:
        buf = bytearray()
        received = 0
        async for chunk in resp.aiter_bytes():
            received += len(chunk)
            if received > desc.size:
                raise InvalidImage(
                    f"blob {desc.digest}: more than the {desc.size} bytes the manifest says",
                    reason="size-mismatch",
                )
            buf += chunk
            if len(buf) >= SINK_CHUNK:
                await blocking.run(sink.write, bytes(buf))
                buf.clear()
                if on_bytes:
                    on_bytes(received)
        if buf:
            await blocking.run(sink.write, bytes(buf))
        if on_bytes:
            on_bytes(received)


def new_http_client(timeout: float) -> httpx.AsyncClient:
    """One pooled client for all pulls; per-phase timeouts, the whole request bounded by callers."""
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=8)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(min(timeout, 60.0), connect=min(timeout, 30.0)),
        limits=limits,
        headers={"User-Agent": USER_AGENT},
        max_redirects=5,
    )


def descriptor_json(desc: oci.Descriptor) -> dict[str, Any]:
    return {"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}
