"""``sandboxctl top``: a live, refreshing view of running sandboxes, like ``docker stats``.

Why from ``GET /api/stats``: it is the same cgroup sample the metrics collector reads, and the
daemon already turns it into a CPU rate over a short interval, so the view needs no state of
its own and works for users (their sandboxes) and admins (everyone's). The rendering is a
pure function of one stats list so it can be tested without a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from sandboxd.units import format_size

Json = dict[str, Any]

SORT_KEYS: dict[str, Callable[[Json], float]] = {
    "cpu": lambda s: float(s.get("cpu_percent") or 0.0),
    "mem": lambda s: float(s.get("memory_usage") or 0),
    "pids": lambda s: float(s.get("pids_current") or 0),
    "io": lambda s: float((s.get("io_read_bytes") or 0) + (s.get("io_write_bytes") or 0)),
}
HEADERS = (
    "ID",
    "NAME",
    "USER",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "PIDS",
    "BLOCK I/O",
    "NET I/O",
)
CLEAR = "\x1b[H\x1b[2J"


def _size(value: Any) -> str:
    return format_size(value) if isinstance(value, (int, float)) else "-"


def row(stats: Json) -> list[str]:
    limit = stats.get("memory_limit")
    net = "-"
    rx = stats.get("network_rx_bytes", stats.get("net_rx_bytes"))
    tx = stats.get("network_tx_bytes", stats.get("net_tx_bytes"))
    if rx is not None or tx is not None:
        net = f"{_size(rx)} / {_size(tx)}"
    return [
        str(stats.get("id", ""))[:12],
        str(stats.get("name", ""))[:24],
        str(stats.get("user", "")),
        f"{float(stats.get('cpu_percent') or 0.0):.2f}%",
        f"{_size(stats.get('memory_usage'))} / {_size(limit) if limit else '-'}",
        f"{float(stats.get('memory_percent') or 0.0):.2f}%",
        f"{stats.get('pids_current', '-')}",
        f"{_size(stats.get('io_read_bytes'))} / {_size(stats.get('io_write_bytes'))}",
        net,
    ]


def render(
    stats: Sequence[Json], sort: str = "cpu", limit: int | None = None, now: float | None = None
) -> str:
    """One screen: a summary line, then the sandboxes, biggest ``sort`` first."""
    ordered = sorted(stats, key=SORT_KEYS[sort], reverse=True)
    shown = ordered[:limit] if limit else ordered
    cpu = sum(SORT_KEYS["cpu"](s) for s in stats)
    mem = sum(int(s.get("memory_usage") or 0) for s in stats)
    stamp = time.strftime("%H:%M:%S", time.localtime(now))
    head = (
        f"sandboxctl top - {stamp} - {len(stats)} running, CPU {cpu:.1f}%, "
        f"memory {format_size(mem)} - sorted by {sort}"
    )
    rows = [list(HEADERS)] + [row(s) for s in shown]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    lines = [
        "   ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    ]
    return "\n".join([head, "", *lines]) + "\n"


def run(
    fetch: Callable[[], list[Json]],
    *,
    sort: str = "cpu",
    interval: float = 2.0,
    iterations: int | None = None,
    limit: int | None = None,
    out: TextIO = sys.stdout,
    clear: bool | None = None,
) -> int:
    """Refresh every ``interval`` seconds until interrupted or ``iterations`` screens."""
    clear = out.isatty() if clear is None else clear
    shown = 0
    try:
        while iterations is None or shown < iterations:
            began = time.monotonic()
            screen = render(fetch(), sort, limit)
            out.write((CLEAR if clear else "") + screen)
            out.flush()
            shown += 1
            if iterations is None or shown < iterations:
                time.sleep(max(0.0, interval - (time.monotonic() - began)))
    except KeyboardInterrupt:
        pass
    return 0
