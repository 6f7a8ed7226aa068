"""Tables and times as sandboxctl prints them (docker's shapes); pure functions, unit-tested."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sandboxd.cli.client import Json
from sandboxd.units import format_size

COMMAND_WIDTH = 30


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """Compact, one unit, like ``docker ps`` but short: ``45s``, ``3m``, ``2h``, ``5d``."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _since(value: str | None, now: datetime) -> str | None:
    when = parse_time(value)
    return None if when is None else human_duration((now - when).total_seconds())


def status_string(model: Json, now: datetime | None = None) -> str:
    """``Up 3m``, ``Created``, ``Exited (0) 2m ago``, ``Exited (137) 1h ago (OOM killed …)``."""
    now = now or datetime.now(UTC)
    state = model.get("state")
    if state == "running":
        since = _since(model.get("started"), now)
        return f"Up {since}" if since else "Up"
    if state == "created":
        return "Created"
    if state != "exited":
        return str(state or "unknown").capitalize()
    code = model.get("exit_code")
    text = f"Exited ({'?' if code is None else code})"
    ago = _since(model.get("finished"), now)
    if ago:
        text += f" {ago} ago"
    if model.get("oom_killed"):
        text += f" ({oom_reason(model.get('reason'))})"
    return text


def oom_reason(reason: str | None) -> str:
    """Say "OOM" exactly once, whether or not the daemon's reason already does."""
    if not reason:
        return "OOM killed"
    return reason if "oom" in reason.lower() else f"OOM killed: {reason}"


def truncate(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by three spaces, like docker's tables."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def ps_row(model: Json, now: datetime | None = None) -> list[str]:
    command = shlex.join(model.get("command") or [])
    return [
        str(model.get("id", ""))[:12],
        str(model.get("name", "")),
        str(model.get("user", "")),
        str(model.get("state", "")),
        status_string(model, now),
        truncate(command, COMMAND_WIDTH),
    ]


PS_HEADERS = ("ID", "NAME", "USER", "STATE", "STATUS", "COMMAND")


STATS_HEADERS = (
    "ID",
    "NAME",
    "CPU %",
    "MEM USAGE / LIMIT",
    "MEM %",
    "NET I/O",
    "BLOCK I/O",
    "PIDS",
)


def _size_or_dash(value: Any) -> str:
    return format_size(value) if isinstance(value, (int, float)) else "-"


def _percent(value: Any) -> str:
    return f"{value:.2f}%" if isinstance(value, (int, float)) else "-"


def stats_row(stats: Json) -> list[str]:
    """One ``docker stats`` line: limits that are unset show as ``-`` rather than a number."""
    memory_limit = stats.get("memory_limit")
    limit = _size_or_dash(memory_limit) if memory_limit else "-"
    pids_limit = stats.get("pids_limit")
    return [
        str(stats.get("id", ""))[:12],
        str(stats.get("name", "")),
        _percent(stats.get("cpu_percent")),
        f"{_size_or_dash(stats.get('memory_usage'))} / {limit}",
        _percent(stats.get("memory_percent")),
        _net_io(stats),
        _block_io(stats),
        f"{stats.get('pids_current', '-')} / {pids_limit if pids_limit else '-'}",
    ]


def _net_io(stats: Json) -> str:
    """Received / sent by the sandbox (its veth); ``-`` without a network of its own."""
    rx, tx = stats.get("net_rx_bytes"), stats.get("net_tx_bytes")
    if rx is None and tx is None:
        return "-"
    return f"{_size_or_dash(rx)} / {_size_or_dash(tx)}"


def _block_io(stats: Json) -> str:
    read, write = stats.get("io_read_bytes"), stats.get("io_write_bytes")
    return f"{_size_or_dash(read)} / {_size_or_dash(write)}"


def stats_table(stats: Sequence[Json]) -> str:
    return format_table(STATS_HEADERS, [stats_row(s) for s in stats])


def _limit(value: Any, size: bool = False) -> str:
    if value is None:
        return "unlimited"
    return format_size(value) if size and isinstance(value, (int, float)) else str(value)


def yes_no(flag: Any) -> str:
    return "yes" if flag else "no"


def quota_table(model: Json) -> str:
    quota, usage = model.get("quota") or {}, model.get("usage") or {}
    rows = [
        ["sandboxes", _limit(usage.get("sandboxes")), _limit(quota.get("max_sandboxes"))],
        ["kernels", _limit(usage.get("kernels")), _limit(quota.get("max_kernels"))],
        ["memory", _limit(usage.get("memory"), True), _limit(quota.get("memory"), True)],
        ["cpus", _limit(usage.get("cpus")), _limit(quota.get("cpus"))],
        ["pids", "-", _limit(quota.get("pids"))],
    ]
    title = f"user {model.get('user', '?')} (quota from {model.get('source', '?')})"
    return title + "\n" + format_table(("RESOURCE", "USAGE", "QUOTA"), rows)
