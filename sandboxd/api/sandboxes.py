"""Handlers of /api/sandboxes: create, list, inspect, stop, wait, logs, stats, attach, remove."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

from tornado import websocket

from ..errors import InvalidRequest, NotFound, SandboxdError
from ..service import iso
from ..state import SandboxRecord
from .base import BaseHandler, token_from

STATS_SAMPLE_SECONDS = 0.5  # several CFS periods, so a quota shows as its share
ATTACH_POLL_SECONDS = 0.02


class SandboxesHandler(BaseHandler):
    async def post(self) -> None:
        actor = self.current()
        rec, _ = await self.sbx.create(actor, self.body())
        self.set_header("Location", f"/api/sandboxes/{rec.id}")
        self.send(self.sbx.model(self.sbx.lookup(actor, rec.id)), 201)

    def get(self) -> None:
        actor = self.current()
        all_states = self.get_query_argument("all", "0") in ("1", "true", "yes")
        self.send([self.sbx.model(r) for r in self.sbx.list(actor, all_states)])


class SandboxHandler(BaseHandler):
    def get(self, ref: str) -> None:
        self.send(self.sbx.model(self.sbx.lookup(self.current(), ref)))

    def patch(self, ref: str) -> None:
        self.send(self.sbx.model(self.sbx.update_limits(self.current(), ref, self.body())))

    async def delete(self, ref: str) -> None:
        force = self.get_query_argument("force", "0") in ("1", "true", "yes")
        await self.sbx.remove(self.current(), ref, force=force)
        self.set_status(204)
        self.finish()


class StopHandler(BaseHandler):
    async def post(self, ref: str) -> None:
        actor = self.current()
        body = self.body()
        timeout = body.get("timeout") if isinstance(body, dict) else None
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
        ):
            raise InvalidRequest("timeout: expected a non-negative number of seconds")
        self.send(self.sbx.model(await self.sbx.stop(actor, ref, timeout)))


class WaitHandler(BaseHandler):
    async def post(self, ref: str) -> None:
        self.send(await self.sbx.wait(self.current(), ref))


class LogsHandler(BaseHandler):
    def get(self, ref: str) -> None:
        tail = self.get_query_argument("tail", None)
        if tail is not None and not tail.isdigit():
            raise InvalidRequest("tail: expected a number of lines")
        self.send(self.sbx.logs(self.current(), ref, int(tail) if tail else None))


def _percent(part: float, whole: float | None) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


async def sampled_stats(sbx: Any, records: list[SandboxRecord]) -> list[dict[str, Any]]:
    """Two reads a short interval apart, so CPU % is a rate, as ``docker stats`` shows it."""
    first = {r.id: (time.monotonic(), sbx.raw_stats(r)) for r in records}
    await asyncio.sleep(STATS_SAMPLE_SECONDS)
    counters = sbx.network_counters(records)
    out = []
    for rec in records:
        t0, before = first[rec.id]
        now = sbx.raw_stats(rec)
        if now is None or before is None:
            continue
        elapsed = time.monotonic() - t0
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
    """Stream a sandbox's stdout/stderr from the start, take stdin, end with the exit status."""

    @property
    def sbx(self) -> Any:
        return self.settings["sandboxd"]

    async def get(self, *args: Any, **kwargs: Any) -> None:
        user = self.sbx.authenticate(token_from(self.request))
        if user is None:
            self.set_status(401)
            self.set_header("Content-Type", "application/json")
            self.finish(
                json.dumps({"reason": "unauthorized", "message": "a valid token is required"})
            )
            return
        try:
            self.rec = self.sbx.lookup(user, args[0])
        except SandboxdError as exc:
            self.set_status(exc.status)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(exc.to_json()))
            return
        await super().get(*args, **kwargs)

    def check_origin(self, origin: str) -> bool:
        return True

    def open(self, ref: str) -> None:  # type: ignore[override]
        self.offsets = {"stdout": 0, "stderr": 0}
        self.pump = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        sid = self.rec.id
        with contextlib.suppress(websocket.WebSocketClosedError, asyncio.CancelledError):
            while True:
                live = self.sbx.runtime.live.get(sid)
                self._drain()
                if live is None:
                    self._drain()
                    rec = self.sbx.store.get_sandbox(sid)
                    result = {
                        "exit_code": rec.exit_code if rec else None,
                        "oom_killed": rec.oom_killed if rec else False,
                        "reason": rec.reason if rec else "removed",
                    }
                    await self.write_message(json.dumps(result))
                    self.close()
                    return
                try:
                    await asyncio.wait_for(asyncio.shield(live.exited), ATTACH_POLL_SECONDS)
                except TimeoutError:
                    pass

    def _drain(self) -> None:
        for code, stream in ((1, "stdout"), (2, "stderr")):
            path = self.sbx.runtime.log_path(self.rec.id, stream)
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            if size < self.offsets[stream]:  # the log was capped: follow its new start
                self.offsets[stream] = 0
            if size == self.offsets[stream]:
                continue
            with open(path, "rb") as fh:
                fh.seek(self.offsets[stream])
                data = fh.read(size - self.offsets[stream])
            self.offsets[stream] += len(data)
            self.write_message(bytes([code]) + data, binary=True)

    def on_message(self, message: str | bytes) -> None:
        if not isinstance(message, bytes) or not message or message[0] != 0:
            return
        live = self.sbx.runtime.live.get(self.rec.id)
        if live is None or live.stdin_fd is None:
            return
        data = message[1:]
        if not data:
            os.close(live.stdin_fd)
            live.stdin_fd = None
            return
        try:
            os.set_blocking(live.stdin_fd, True)
            os.write(live.stdin_fd, data)
        except OSError:
            pass
        finally:
            if live.stdin_fd is not None:
                with contextlib.suppress(OSError):
                    os.set_blocking(live.stdin_fd, False)

    def on_close(self) -> None:
        pump = getattr(self, "pump", None)
        if pump is not None and not pump.done():
            pump.cancel()
