"""Handlers of /api/sandboxes: create, list, inspect, stop, wait, logs, stats, attach, remove."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

from tornado import websocket
from tornado.iostream import StreamBufferFullError

from .. import blocking, metrics
from ..errors import NotFound, SandboxdError, Unauthorized
from ..models.requests import ForceQuery, ListQuery, LogsQuery, StopRequest, flag
from ..models.types import validate
from ..runtime import output
from ..service import iso
from ..state import SandboxRecord
from .base import BaseHandler, expect_upgrade, summary, token_from

STATS_SAMPLE_SECONDS = 0.5  # several CFS periods, so a quota shows as its share
LOG_WRITE_CHUNK = 65536
WRITE_BUFFER = 4 << 20  # bytes queued for one slow WebSocket client before it is closed
PIPE_WRITE = 65536


class SandboxesHandler(BaseHandler):
    async def post(self) -> None:
        actor = self.current()
        rec, _ = await self.sbx.create(actor, self.body())
        self.set_header("Location", f"/api/sandboxes/{rec.id}")
        self.send(self.sbx.model(self.sbx.lookup(actor, rec.id)), 201)

    def get(self) -> None:
        actor = self.current()
        all_states = flag(self.query(ListQuery).all)
        self.send([self.sbx.model(r) for r in self.sbx.list(actor, all_states)])


class SandboxHandler(BaseHandler):
    def get(self, ref: str) -> None:
        self.send(self.sbx.model(self.sbx.lookup(self.current(), ref)))

    async def patch(self, ref: str) -> None:
        rec = await self.sbx.update_limits(self.current(), ref, self.body())
        self.send(self.sbx.model(rec))

    async def delete(self, ref: str) -> None:
        force = flag(self.query(ForceQuery).force)
        await self.sbx.remove(self.current(), ref, force=force)
        self.set_status(204)
        self.finish()


class StopHandler(BaseHandler):
    async def post(self, ref: str) -> None:
        actor = self.current()
        timeout = validate(StopRequest, self.body()).timeout
        self.send(self.sbx.model(await self.sbx.stop(actor, ref, timeout)))


class WaitHandler(BaseHandler):
    async def post(self, ref: str) -> None:
        self.send(await self.sbx.wait(self.current(), ref))


class LogsHandler(BaseHandler):
    """The kept output (capped by ``log_max_bytes``), written out in chunks as it is encoded."""

    async def get(self, ref: str) -> None:
        tail = self.query(LogsQuery).tail
        model = await self.sbx.logs(self.current(), ref, int(tail) if tail else None)
        body = await blocking.run(lambda: json.dumps(model).encode())
        self.set_status(200)
        for start in range(0, len(body), LOG_WRITE_CHUNK):
            self.write(body[start : start + LOG_WRITE_CHUNK])
            await self.flush()
        self.finish()


def _percent(part: float, whole: float | None) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


async def sampled_stats(sbx: Any, records: list[SandboxRecord]) -> list[dict[str, Any]]:
    """Two reads a short interval apart, so CPU % is a rate, as ``docker stats`` shows it."""
    t0 = time.monotonic()
    first = await sbx.stats_of(records)
    await asyncio.sleep(STATS_SAMPLE_SECONDS)
    counters = await sbx.network_counters(records)
    second = await sbx.stats_of(records)
    elapsed = time.monotonic() - t0
    out = []
    for rec in records:
        before, now = first.get(rec.id), second.get(rec.id)
        if now is None or before is None:
            continue
        used = now["cpu_usage_seconds"] - before["cpu_usage_seconds"]
        out.append(
            {
                "id": rec.id,
                "name": rec.name,
                "user": rec.user,
                "read": iso(time.time()),
                "cpu_percent": round(100.0 * used / elapsed, 2) if elapsed > 0 else 0.0,
                **now,
                "memory_percent": _percent(now["memory_usage"], now["memory_limit"]),
                **counters.get(rec.id, {}),
            }
        )
    return out


class StatsHandler(BaseHandler):
    async def get(self, ref: str) -> None:
        rec = self.sbx.lookup(self.current(), ref)
        stats = await sampled_stats(self.sbx, [rec])
        if not stats:
            raise NotFound(f"sandbox {rec.id} is not running", reason="not-running")
        self.send(stats[0])


class AllStatsHandler(BaseHandler):
    async def get(self) -> None:
        self.send(await sampled_stats(self.sbx, self.sbx.list(self.current())))


class AttachHandler(websocket.WebSocketHandler):
    """Stream a sandbox's output from the start of what is kept, take stdin, end with the exit.

    Frames out: binary ``\x01``/``\x02`` + bytes (stdout/stderr), then one JSON text frame with
    the exit. Frames in: binary ``\x00`` + bytes to the command's stdin; ``\x00`` alone closes
    it. Bounded both ways: stdin waits in a buffer of ``attach_stdin_buffer`` bytes (full: the
    attach closes with a reason), output to a client slower than the sandbox waits in at most
    ``WRITE_BUFFER`` bytes (beyond that the attach closes); nothing blocks the loop.
    """

    user: str = ""
    rec: SandboxRecord

    @property
    def sbx(self) -> Any:
        return self.settings["sandboxd"]

    @property
    def kernels(self) -> Any:
        return self.settings["kernels"]

    def _request_summary(self) -> str:
        return summary(self.request)

    def _refuse(self, exc: SandboxdError) -> None:
        self.set_status(exc.status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(exc.to_json()))

    async def get(self, *args: Any, **kwargs: Any) -> None:
        user = self.sbx.authenticate(token_from(self.request))
        if user is None:
            self._refuse(Unauthorized("a valid token is required", reason="bad-token"))
            return
        try:
            self.rec = self.sbx.lookup(user, kwargs["ref"])
            expect_upgrade(self.request)
            self.kernels.admit_websocket(user.name)
        except SandboxdError as exc:
            if exc.reason == "max-websockets":
                metrics.resource_refusal("max-websockets")
            self._refuse(exc)
            return
        self.user = user.name
        self.kernels.websocket_opened(self.user)
        try:
            await super().get(*args, **kwargs)
        finally:
            if self.get_status() != 101:  # no upgrade (a plain GET, a bad handshake): no slot
                self._release_slot()

    def check_origin(self, origin: str) -> bool:
        return True

    def open(self, ref: str) -> None:  # type: ignore[override]
        if self.ws_connection is not None:
            stream = getattr(self.ws_connection, "stream", None)
            if stream is not None:
                stream.max_write_buffer_size = WRITE_BUFFER
        self.stdin = bytearray()
        self.stdin_eof = False
        self.writing = False
        self.live = self.sbx.runtime.live.get(self.rec.id)
        self.pump_task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        with contextlib.suppress(websocket.WebSocketClosedError, asyncio.CancelledError):
            live = self.live
            if live is not None:
                records = await live.pump.snapshot(self._send_record)
            else:
                records = await blocking.run(self.sbx.runtime.log_file(self.rec.id).read)
            for rec in records:
                self._send_record(rec)
            if live is not None:
                await asyncio.shield(live.exited)
                live.pump.followers.discard(self._send_record)
            rec = self.sbx.store.get_sandbox(self.rec.id)  # the exit was recorded before we woke
            result = {
                "exit_code": rec.exit_code if rec else None,
                "oom_killed": rec.oom_killed if rec else False,
                "reason": rec.reason if rec else "removed",
            }
            await self.write_message(json.dumps(result))
            self.close()

    def _send_record(self, rec: output.Record) -> None:
        if self.ws_connection is None or self.ws_connection.is_closing():
            return
        try:
            self.write_message(bytes([rec.stream]) + rec.data, binary=True)
        except StreamBufferFullError:
            self.close(1009, "the client reads slower than the sandbox writes")

    def on_message(self, message: str | bytes) -> None:
        if not isinstance(message, bytes) or not message or message[0] != 0:
            return
        if self.ws_connection is None or self.ws_connection.is_closing():
            return  # frames that arrived after we closed: already refused once
        live = self.sbx.runtime.live.get(self.rec.id)
        if live is None or live.stdin_fd is None or self.stdin_eof:
            return
        data = message[1:]
        if not data:
            self.stdin_eof = True
        elif len(self.stdin) + len(data) > self.sbx.config.attach_stdin_buffer:
            metrics.resource_refusal("stdin-full")
            self.close(1009, "stdin buffer full: the sandbox is not reading its input")
            return
        else:
            self.stdin += data
        self._write_stdin()

    def _write_stdin(self) -> None:
        """Write what the pipe takes now; wait for it to drain with ``add_writer``."""
        live = self.sbx.runtime.live.get(self.rec.id)
        if live is None or live.stdin_fd is None:
            return
        fd = live.stdin_fd
        loop = asyncio.get_running_loop()
        while self.stdin:
            try:
                done = os.write(fd, self.stdin[:PIPE_WRITE])
            except BlockingIOError:
                break
            except OSError:  # the command closed its stdin
                self.stdin.clear()
                break
            del self.stdin[:done]
        if self.stdin and not self.writing:
            self.writing = True
            loop.add_writer(fd, self._writable)
        elif not self.stdin:
            if self.writing:
                self.writing = False
                loop.remove_writer(fd)
            if self.stdin_eof:
                live.stdin_fd = None
                os.close(fd)

    def _writable(self) -> None:
        self._write_stdin()

    def on_close(self) -> None:
        pump = getattr(self, "pump_task", None)
        if pump is not None and not pump.done():
            pump.cancel()
        live = self.sbx.runtime.live.get(self.rec.id) if hasattr(self, "rec") else None
        if live is not None:
            live.pump.followers.discard(self._send_record)
            if getattr(self, "writing", False) and live.stdin_fd is not None:
                with contextlib.suppress(ValueError, OSError):
                    asyncio.get_running_loop().remove_writer(live.stdin_fd)
        self._release_slot()

    def _release_slot(self) -> None:
        if self.user:
            self.kernels.websocket_closed(self.user)
            self.user = ""
