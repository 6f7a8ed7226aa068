"""Small pieces the sandboxctl command modules share."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .client import ApiError


def each(names: Iterable[str], action: Callable[[str], None]) -> int:
    """Run ``action`` for every name, as docker does for ``rm a b c``: an error is one line on
    stderr and the others still run; the exit code is 1 if any failed."""
    import sys

    code = 0
    for name in names:
        try:
            action(name)
        except ApiError as exc:
            print(f"sandboxctl: error: {exc}", file=sys.stderr, flush=True)
            code = 1
    return code
