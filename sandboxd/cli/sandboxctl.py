"""``sandboxctl``: the docker-like command-line client of sandboxd.

Why it looks like this: people who know ``docker run/ps/stats/logs`` should feel at home, and
scripts should be able to rely on it. So ``run`` propagates the command's exit code (125 when
sandboxd itself refused or failed), every listing takes ``--json``, and every failure is one
line ``sandboxctl: error: <message> (<reason>)`` on stderr, never a traceback.

Layout: ``parser.py`` (every command and option), ``commands.py`` (sandboxes, users, quotas),
``attach.py`` (run/attach streaming), ``tables.py`` (docker-shaped tables and times),
``common.py`` (exit codes, token, errors) and one ``*_cmds.py`` per command group (network,
volume, kernel, image). The pure parts are plain functions, unit-tested without a daemon.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from sandboxd.cli.client import ApiError, Client
from sandboxd.cli.common import (
    EXIT_DAEMON,
    EXIT_INTERRUPTED,
    UsageError,
    error_line,
    resolve_token,
    resolve_url,
)
from sandboxd.cli.parser import build_parser


def _failure_code(args: argparse.Namespace) -> int:
    return EXIT_DAEMON if getattr(args, "command_name", None) == "run" else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        token = resolve_token(args.token, args.token_file, os.environ)
        client = Client(resolve_url(args.url, os.environ), token)
        return args.func(client, args)
    except (ApiError, UsageError) as exc:
        error_line(str(exc) if isinstance(exc, ApiError) else f"{exc} ({exc.reason})")
    except BrokenPipeError:
        _silence_stdout()
        return 1
    except OSError as exc:  # should be mapped by Client; never a traceback
        error_line(f"request failed: {exc} (request-failed)")
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    return _failure_code(args)


def _silence_stdout() -> None:
    """After a closed pipe (``sandboxctl ps | head``), stop Python's flush at exit failing."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
