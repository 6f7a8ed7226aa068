"""A sandbox's stdin: one bounded buffer drained into the pipe as the command reads.

One per sandbox, whatever the number of attaches feeding it: the fd has one writer callback on
the loop and one owner that closes it, so an attach that sends EOF cannot close the pipe under
another attach's pending write (nor leave a callback on an fd number reused later).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

PIPE_WRITE = 65536


class StdinWriter:
    def __init__(self, fd: int, limit: int) -> None:
        self.fd: int | None = fd
        self.limit = limit
        self.buffer = bytearray()
        self.eof = False
        self.writing = False
        self.loop = asyncio.get_running_loop()

    @property
    def open(self) -> bool:
        return self.fd is not None and not self.eof

    def write(self, data: bytes) -> bool:
        """Queue ``data`` for the command; False (nothing queued) when the buffer is full."""
        if not self.open:
            return True  # closed: the bytes have nowhere to go, as with a closed pipe
        if len(self.buffer) + len(data) > self.limit:
            return False
        self.buffer += data
        self._flush()
        return True

    def finish(self) -> None:
        """EOF: close the pipe once what is queued has been written."""
        self.eof = True
        self._flush()

    def _flush(self) -> None:
        fd = self.fd
        if fd is None:
            return
        while self.buffer:
            try:
                done = os.write(fd, self.buffer[:PIPE_WRITE])
            except BlockingIOError:
                break
            except OSError:  # the command closed its end: drop what waits
                self.buffer.clear()
                break
            del self.buffer[:done]
        if self.buffer and not self.writing:
            self.writing = True
            self.loop.add_writer(fd, self._flush)
        elif not self.buffer:
            self._stop_writing()
            if self.eof:
                self.close()

    def _stop_writing(self) -> None:
        if self.writing and self.fd is not None:
            self.writing = False
            with contextlib.suppress(ValueError, OSError):
                self.loop.remove_writer(self.fd)

    def close(self) -> None:
        """Close now (the sandbox ended, or EOF was drained); idempotent."""
        self._stop_writing()
        self.buffer.clear()
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
