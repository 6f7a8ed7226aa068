"""A sandbox's stdout and stderr: two FIFOs the daemon drains into one capped record log.

Why FIFOs in the run dir rather than files the sandbox appends to: the daemon copies the output,
so the log is capped at every moment (including after exit) and a flood only fills a pipe and
blocks its writer. The sandbox's end is opened ``O_RDWR``: the pipe always has a reader, so
code in the sandbox never gets SIGPIPE while the daemon restarts; the new daemon reopens the
FIFO by its path in the root-owned run dir and goes on reading. The pipe is charged to the
tenant's memory cgroup.

The log keeps both streams in order, one record per read (``HEADER``: sequence number, time,
stream, length, then the bytes), in ``<sid>.log`` and ``<sid>.log.1``: when the current file
passes half the cap it becomes ``.1`` (replacing the older), so the two never exceed the cap.
Sequence numbers let a follower (attach, ``logs -f``) join a snapshot and the live stream
without a gap or a duplicate.

On the loop: reads (non-blocking, at most ``CHUNK`` per wake-up, token-bucket rate limit per
sandbox) and fan-out to followers. In the io lane: every file write and read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import blocking

HEADER = struct.Struct("<QdBI")  # seq, unix time, stream (1 stdout, 2 stderr), length
STREAMS = {"stdout": 1, "stderr": 2}
NAMES = {1: "stdout", 2: "stderr"}
CHUNK = 65536
PIPE_SIZE = 256 * 1024
PENDING_MAX = 1024 * 1024  # bytes read but not yet on disk, before reading pauses
TAIL_KEEP = 4096  # last stderr bytes kept in memory (bwrap's set-up errors)


@dataclass(frozen=True)
class Record:
    seq: int
    time: float
    stream: int
    data: bytes


# -- FIFOs -----------------------------------------------------------------------------------


def fifo_path(directory: str, stream: str) -> str:
    return os.path.join(directory, f"{stream}.fifo")


def make_fifos(directory: str) -> None:
    for stream in STREAMS:
        os.mkfifo(fifo_path(directory, stream), 0o600)


def open_sandbox_end(directory: str, stream: str) -> int:
    """The sandbox's stdout/stderr: read-write, so the pipe never lacks a reader."""
    return os.open(fifo_path(directory, stream), os.O_RDWR | os.O_CLOEXEC)


def open_reader(directory: str, stream: str) -> int | None:
    try:
        fd = os.open(fifo_path(directory, stream), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return fd


# -- the capped record file (io lane) ---------------------------------------------------------


class LogFile:
    """``<base>`` and ``<base>.1``, together at most ``cap`` bytes; thread-safe."""

    def __init__(self, base: str, cap: int) -> None:
        self.base = base
        self.cap = max(cap, 2 * (HEADER.size + 1024))
        self.lock = threading.Lock()

    @property
    def half(self) -> int:
        return self.cap // 2

    def append(self, records: list[Record]) -> None:
        with self.lock:
            try:
                size = os.path.getsize(self.base)
            except FileNotFoundError:
                size = 0
            out = bytearray()
            for rec in records:
                data = rec.data[: self.half - HEADER.size]
                entry = HEADER.pack(rec.seq, rec.time, rec.stream, len(data)) + data
                if size + len(out) + len(entry) > self.half:
                    self._write(out)
                    out.clear()
                    with contextlib.suppress(FileNotFoundError):
                        os.replace(self.base, self.base + ".1")
                    size = 0
                out += entry
            self._write(out)

    def _write(self, data: bytes | bytearray) -> None:
        if not data:
            return
        fd = os.open(self.base, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)

    def read(self) -> list[Record]:
        """Every record still kept, oldest first."""
        with self.lock:
            raw = [self._slurp(self.base + ".1"), self._slurp(self.base)]
        out: list[Record] = []
        for blob in raw:
            pos = 0
            while pos + HEADER.size <= len(blob):
                seq, ts, stream, length = HEADER.unpack_from(blob, pos)
                pos += HEADER.size
                out.append(Record(seq, ts, stream, bytes(blob[pos : pos + length])))
                pos += length
        return out

    def _slurp(self, path: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                return fh.read(self.cap + CHUNK)
        except FileNotFoundError:
            return b""

    def last_seq(self) -> int:
        records = self.read()
        return records[-1].seq if records else 0

    def remove(self) -> None:
        with self.lock:
            for path in (self.base, self.base + ".1"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


# -- the pump (loop) --------------------------------------------------------------------------

Follower = Callable[[Record], None]


class OutputPump:
    """Drains one sandbox's FIFOs into its LogFile, at most ``rate`` bytes/s, and tells
    followers about every record as it is read."""

    def __init__(self, log: LogFile, rate: int, next_seq: int = 1) -> None:
        self.log = log
        self.rate = max(rate, CHUNK)
        self.tokens = float(self.rate)
        self.stamp = time.monotonic()
        self.seq = next_seq
        self.fds: dict[int, int] = {}  # stream -> fd
        self.reading = False
        self.paused_until = 0.0
        self.pending: list[Record] = []  # read, not yet handed to the writer
        self.flushing: list[Record] = []  # being written now
        self.flush_task: asyncio.Task[None] | None = None
        self.followers: set[Follower] = set()
        self.stderr_tail = b""
        self.eof = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.closed = False

    # reading --------------------------------------------------------------------------------

    def start(self, fds: dict[str, int | None]) -> None:
        for name, fd in fds.items():
            if fd is not None:
                self.fds[STREAMS[name]] = fd
        if not self.fds:
            self.eof.set()
        self._resume()

    def _resume(self) -> None:
        if self.closed or self.reading:
            return
        self.reading = True
        for stream, fd in self.fds.items():
            self.loop.add_reader(fd, self._readable, stream)

    def _pause(self, seconds: float) -> None:
        if self.reading:
            self.reading = False
            for fd in self.fds.values():
                self.loop.remove_reader(fd)
        if seconds > 0:
            self.paused_until = time.monotonic() + seconds
            self.loop.call_later(seconds, self._resume)

    def _readable(self, stream: int) -> None:
        fd = self.fds.get(stream)
        if fd is None:
            return
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_stream(stream)
            return
        self._take(stream, data)
        self._refill()
        self.tokens -= len(data)
        if self.tokens < 0:
            self._pause(-self.tokens / self.rate)
        elif self._pending_bytes() > PENDING_MAX:
            self._pause(0)  # the writer resumes us when it caught up

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(float(self.rate), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def _take(self, stream: int, data: bytes) -> None:
        rec = Record(self.seq, time.time(), stream, data)
        self.seq += 1
        if stream == 2:
            self.stderr_tail = (self.stderr_tail + data)[-TAIL_KEEP:]
        self.pending.append(rec)
        for follower in list(self.followers):
            try:
                follower(rec)
            except Exception:  # a broken follower must not stop the pump
                self.followers.discard(follower)
        self._flush()

    def _close_stream(self, stream: int) -> None:
        fd = self.fds.pop(stream)
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(fd)
        os.close(fd)
        if not self.fds:
            self.eof.set()

    def drain_now(self) -> None:
        """Read what is in the pipes right now (bounded: at most the pipes' size)."""
        for stream in list(self.fds):
            for _ in range(PIPE_SIZE // CHUNK + 1):
                fd = self.fds.get(stream)
                if fd is None:
                    break
                try:
                    data = os.read(fd, CHUNK)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    self._close_stream(stream)
                    break
                self._take(stream, data)

    # writing --------------------------------------------------------------------------------

    def _pending_bytes(self) -> int:
        return sum(len(r.data) for r in self.pending) + sum(len(r.data) for r in self.flushing)

    def _flush(self) -> None:
        if self.flush_task is None and self.pending:
            self.flush_task = self.loop.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        try:
            while self.pending:
                self.flushing, self.pending = self.pending, []
                try:
                    await blocking.run(self.log.append, self.flushing)
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                self.flushing = []
                if not self.reading and self.paused_until <= time.monotonic():
                    self._resume()
        finally:
            self.flush_task = None

    async def flushed(self) -> None:
        while self.flush_task is not None:
            await asyncio.shield(self.flush_task)

    # end --------------------------------------------------------------------------------------

    async def finish(self, timeout: float = 2.0) -> None:
        """After the sandbox ended: read to EOF (or give up after ``timeout``), then flush."""
        self._resume()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.eof.wait(), timeout)
        self.close()
        await self.flushed()

    def close(self) -> None:
        if self.closed:
            return
        self.drain_now()
        self.closed = True
        self._pause(0)
        for stream in list(self.fds):
            self._close_stream(stream)
        self.eof.set()

    # followers ------------------------------------------------------------------------------

    async def snapshot(self, follower: Follower) -> list[Record]:
        """Register ``follower`` and return every record before its first one, in order."""
        live: list[Record] = []
        self.followers.add(live.append)
        before = self.flushing + self.pending  # not on disk yet when the read starts
        try:
            on_disk = await blocking.run(self.log.read)
            known = before + on_disk + self.flushing + self.pending
        finally:
            self.followers.discard(live.append)
        self.followers.add(follower)
        out: list[Record] = []
        last = 0
        for rec in sorted(known + live, key=lambda r: r.seq):
            if rec.seq > last:
                out.append(rec)
                last = rec.seq
        return out
