"""Parse the sizes and rates users type (``512m``, ``1g``, ``10mb``) into integers."""

from __future__ import annotations

import re

from .errors import InvalidRequest

_SUFFIX = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?", re.IGNORECASE)

#: Anything bigger than this is a typo, not a request (1 PiB).
MAX_SIZE = 1024**5


def parse_size(value: str | int | float, what: str = "size") -> int:
    """``"512m"`` → 536870912. Accepts ints (bytes) and k/m/g/t suffixes, optional ``b``/``ib``."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{what}: expected a size, got {value!r}")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip())
        if not match:
            raise InvalidRequest(f"{what}: {value!r} is not a size (use e.g. 512m, 1g)")
        number = float(match.group(1)) * _SUFFIX[match.group(2).lower()]
    else:
        raise InvalidRequest(f"{what}: expected a size, got {type(value).__name__}")
    if number < 0 or number != number:
        raise InvalidRequest(f"{what}: must not be negative")
    if number > MAX_SIZE:
        raise InvalidRequest(f"{what}: {value!r} is absurdly large")
    return int(number)


def format_size(n: int | float) -> str:
    """Human form for tables: 1.5GiB, 64MiB, 12KiB, 100B."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:.4g}{unit}"
    return f"{int(n)}B"
