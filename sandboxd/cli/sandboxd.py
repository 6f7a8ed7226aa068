"""``sandboxd``: the daemon (``serve``) and ``cleanup`` of everything an instance made."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import shutil
import signal
import sys

from .. import __version__
from ..config import Config, load
from ..errors import SandboxdError

log = logging.getLogger("sandboxd")

BODY_TIMEOUT = 60.0  # seconds a client may take to send a request body
IDLE_CONNECTION_TIMEOUT = 120.0
NOFILE = 1 << 20  # the daemon's fd limit: ZMQ sockets, pidfds, FIFOs for every sandbox


def raise_fd_limit() -> None:
    """As many fds as the kernel allows (up to NOFILE): bounds are enforced per user instead."""
    try:
        with open("/proc/sys/fs/nr_open") as fh:
            most = min(int(fh.read()), NOFILE)
    except (OSError, ValueError):
        most = NOFILE
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (most, most))
    except (OSError, ValueError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "instance": args.instance,
        "listen": args.listen,
        "state_dir": args.state_dir,
        "run_dir": args.run_dir,
    }


async def serve(config: Config, config_path: str | None, args: argparse.Namespace) -> None:
    from tornado.httpserver import HTTPServer

    from .. import blocking
    from ..api.app import make_app
    from ..errors import HostError
    from ..runtime.syscalls import missing_features
    from ..service import Sandboxd

    missing = missing_features()
    if missing:
        raise HostError(
            f"this kernel lacks {', '.join(missing)}: sandboxd needs Linux 5.12 or newer"
        )
    blocking.tune_gil()
    blocking.prioritize_loop(config.loop_nice)
    raise_fd_limit()
    sbx = Sandboxd(config)
    token_file = sbx.bootstrap_admin()
    await sbx.recover()
    sbx.start_background()
    app = await make_app(sbx)
    server = HTTPServer(
        app,
        xheaders=False,
        max_body_size=config.max_request_body,
        body_timeout=BODY_TIMEOUT,
        idle_connection_timeout=IDLE_CONNECTION_TIMEOUT,
    )
    server.listen(config.listen_port, config.listen_host)
    url = f"http://{config.listen}"
    print(f"sandboxd {__version__} instance {config.instance} listening on {url}", flush=True)
    print(f"admin token: {token_file}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            new = load(config_path, _overrides(args))
        except SandboxdError as exc:
            log.error("config reload refused, keeping the old config: %s", exc.message)
            return
        sbx.config = new
        log.info("config reloaded from %s", new.source)

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    server.stop()
    await sbx.close()
    log.info("stopped; running sandboxes keep running and are re-adopted at the next start")


def cleanup(config: Config, purge: bool) -> int:
    """Remove every host object of an instance: processes, cgroups, run dir (and state)."""
    from ..runtime import cgroups

    driver = cgroups.probe(config.instance, claim=False)  # look, never move this process
    driver.remove_all()
    if isinstance(driver, cgroups.CgroupV2):
        driver.release()  # the sandboxes' scope, if any: systemd removes it once empty
    shutil.rmtree(config.run_dir, ignore_errors=True)
    from ..runtime import network_cleanup

    network_cleanup.cleanup_instance(config)
    if purge:
        shutil.rmtree(config.state_dir, ignore_errors=True)
    print(f"instance {config.instance}: cleaned up")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sandboxd", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("serve", "run the daemon"),
        ("cleanup", "remove everything an instance created"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="TOML config file (default: embedded defaults)")
        p.add_argument("--instance", help="instance name, the prefix of every host object")
        p.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8890)")
        p.add_argument("--state-dir", help="default /var/lib/sandboxd/<instance>")
        p.add_argument("--run-dir", help="default /run/sandboxd/<instance>")
        if name == "cleanup":
            p.add_argument("--purge", action="store_true", help="also delete the state dir")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("SANDBOXD_LOG", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if os.geteuid() != 0:
        print("sandboxd: must run as root", file=sys.stderr)
        return 1
    try:
        config = load(args.config, _overrides(args))
    except SandboxdError as exc:
        print(f"sandboxd: {exc.message}", file=sys.stderr)
        return 2
    if args.command == "cleanup":
        return cleanup(config, args.purge)
    try:
        asyncio.run(serve(config, args.config, args))
    except SandboxdError as exc:
        print(f"sandboxd: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"sandboxd: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
