"""What every sandboxctl module shares: exit codes, the token and URL, one-line errors,
and running an action over several names as docker does (the others go on after a failure)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sandboxd.cli.client import ApiError

DEFAULT_URL = "http://127.0.0.1:8890"


DEFAULT_TOKEN_FILE = Path("/var/lib/sandboxd/sbx/admin-token")


#: Exit code when sandboxd refused or failed a ``run`` (as docker does).
EXIT_DAEMON = 125


#: Exit code of a command killed by the OOM killer (128 + SIGKILL).
EXIT_OOM = 137


EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A bad argument found after argparse (e.g. a label without ``=``)."""

    reason = "usage"


def read_token_file(path: str | Path) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as exc:
        raise UsageError(f"cannot read token file {path}: {exc.strerror or exc}") from exc


def resolve_token(
    token: str | None,
    token_file: str | None,
    env: Mapping[str, str],
    default_file: Path = DEFAULT_TOKEN_FILE,
) -> str | None:
    """Pick the token: ``--token`` > ``--token-file`` > ``$SANDBOXD_TOKEN`` >
    ``$SANDBOXD_TOKEN_FILE`` > the admin token file if it is readable > none."""
    if token:
        return token
    if token_file:
        return read_token_file(token_file)
    if env.get("SANDBOXD_TOKEN"):
        return env["SANDBOXD_TOKEN"]
    if env.get("SANDBOXD_TOKEN_FILE"):
        return read_token_file(env["SANDBOXD_TOKEN_FILE"])
    if os.access(default_file, os.R_OK):
        try:
            return default_file.read_text().strip() or None
        except OSError:
            return None
    return None


def resolve_url(url: str | None, env: Mapping[str, str]) -> str:
    return url or env.get("SANDBOXD_URL") or DEFAULT_URL


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def error_line(message: str) -> None:
    print(f"sandboxctl: error: {message}", file=sys.stderr, flush=True)


def for_each(refs: Sequence[str], action: Callable[[str], None]) -> int:
    """Apply ``action`` to every ref; report failures one line each, exit 1 if any failed."""
    failed = False
    for ref in refs:
        try:
            action(ref)
        except ApiError as exc:
            error_line(f"{ref}: {exc}")
            failed = True
    return 1 if failed else 0
