"""Bounded thread lanes for blocking work, so nothing slow runs on the event loop.

sandboxd serves every user from one asyncio loop; a syscall that waits (cgroupfs, netlink,
``nft``, removing a tree, reading a capped log) stalls every WebSocket while it runs. Such
calls go through ``run`` (the ``io`` lane, several threads) or ``run_net`` (the ``net`` lane,
one thread: pyroute2 sockets and the nft table are changed by one writer at a time, in order).

Each lane admits at most ``max_pending`` calls at once; a caller beyond that waits on the loop
(back-pressure, never an unbounded queue). ``depth()`` feeds the queue-depth gauge.

The daemon also lowers the interpreter's switch interval (``tune_gil``): a worker thread running
Python code would otherwise keep the loop from the GIL for up to 5 ms at a time. And the loop's
thread may run at a higher CPU priority than the rest (``prioritize_loop``): on a host busy
starting sandboxes, the thread every user's requests wait on still wakes when it should. Lane
threads (and what they start) run at the normal priority.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

SWITCH_INTERVAL = 0.0005


class Lane:
    def __init__(self, name: str, workers: int, max_pending: int) -> None:
        self.name = name
        self.executor = ThreadPoolExecutor(
            workers, thread_name_prefix=f"sbx-{name}", initializer=normal_priority
        )
        self.max_pending = max_pending
        self.waiting = 0  # submitted, not yet started
        self.running = 0
        self._count = threading.Lock()
        self._slots: asyncio.Semaphore | None = None

    async def run(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_pending)
        async with self._slots:
            self.waiting += 1
            state = {"started": False, "abandoned": False}

            def call() -> R:
                with self._count:
                    state["started"] = True
                    if not state["abandoned"]:
                        self.waiting -= 1
                    self.running += 1
                try:
                    return fn(*args, **kwargs)
                finally:
                    with self._count:
                        self.running -= 1

            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self.executor, functools.partial(call))
            finally:
                with self._count:
                    if not state["started"]:  # cancelled before it ran
                        state["abandoned"] = True
                        self.waiting -= 1


_LANES: dict[str, Lane] = {}


def lane(name: str) -> Lane:
    if name not in _LANES:
        workers, pending = {"io": (8, 256), "net": (1, 256)}[name]
        _LANES[name] = Lane(name, workers, pending)
    return _LANES[name]


async def run(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a blocking call on the io lane."""
    return await lane("io").run(fn, *args, **kwargs)


async def run_net(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run a network change (netlink, nft) on the single net lane, in submission order."""
    return await lane("net").run(fn, *args, **kwargs)


def depth() -> dict[str, tuple[int, int]]:
    """(waiting, running) per lane, for the metrics."""
    return {name: (ln.waiting, ln.running) for name, ln in _LANES.items()}


def tune_gil() -> None:
    sys.setswitchinterval(SWITCH_INTERVAL)


def prioritize_loop(nice: int) -> None:
    """Give the calling thread (the loop's) the nice value ``nice`` (Linux: per thread)."""
    if nice:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


def normal_priority() -> None:
    """The calling thread back to nice 0 (threads inherit their creator's value)."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 0)


def at_normal_priority(fn: Callable[[], R]) -> R:
    """Run ``fn`` in a short-lived thread at nice 0, so threads it starts (ZMQ's I/O thread)
    do not inherit the loop's priority."""
    box: list[R] = []

    def run() -> None:
        normal_priority()
        box.append(fn())

    thread = threading.Thread(target=run, name="sbx-normal")
    thread.start()
    thread.join()
    return box[0]
