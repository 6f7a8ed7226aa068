"""``sandboxd cleanup``: remove every network object an instance made in this namespace.

Works from names alone (no database, no running daemon), so it also cleans up after a crash:
the ``inet <instance>`` nft table, netns ``<instance>-<16 hex>``, and links ``<instance>br-*``,
``<instance>v*``, ``<instance>m*``. Other namespaces under the same prefix are left alone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from ..config import Config
from ..errors import SandboxdError
from . import netlink, nft

log = logging.getLogger("sandboxd.network")


def cleanup_instance(config: Config) -> list[str]:
    """Remove what is there; returns what was removed (each failure is logged, not raised)."""
    inst = config.instance
    removed: list[str] = []

    def attempt(what: str, action: Callable[..., object], *args: object) -> None:
        try:
            action(*args)
            removed.append(what)
        except SandboxdError as exc:
            log.error("cleanup: %s: %s", what, exc.message)

    attempt(f"nft table inet {inst}", nft.remove, inst)  # idempotent: add, then delete
    for name in netlink.list_netns(f"{inst}-"):
        if re.fullmatch(r"[0-9a-f]{16}", name[len(inst) + 1 :]):
            attempt(f"netns {name}", netlink.remove_netns, name)
    try:
        links = netlink.list_links(inst)
    except SandboxdError:
        links = []
    # veths first (their bridges go next), so nothing is deleted twice
    for link in sorted(links, key=lambda n: n.startswith(f"{inst}br-")):
        if re.fullmatch(rf"{re.escape(inst)}(v|m|br-)\S+", link):
            attempt(f"link {link}", netlink.delete_link, link)
    return removed
