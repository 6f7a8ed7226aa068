"""Address management, pure: pick the lowest free subnet of a pool and address of a subnet.

Lowest-free means a released subnet or address is the next one handed out again, and the
choice depends only on what the database says is in use, so it survives a restart.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from ..errors import ResourcesExhausted

Net = ipaddress.IPv4Network


def overlapping(pool: str, routes: Iterable[Net]) -> list[Net]:
    """Host routes that overlap ``pool`` (the default route does not count)."""
    p = ipaddress.IPv4Network(pool)
    return [r for r in routes if r.prefixlen > 0 and r.overlaps(p)]


def next_subnet(pool: str, prefix: int, used: Iterable[str], avoid: Iterable[Net] = ()) -> str:
    taken = [ipaddress.IPv4Network(u) for u in used] + list(avoid)
    for candidate in ipaddress.IPv4Network(pool).subnets(new_prefix=prefix):
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    raise ResourcesExhausted(
        f"no free /{prefix} left in the network pool {pool}", reason="subnets-exhausted"
    )


def gateway_of(subnet: str) -> str:
    """The bridge's address: the first host of the subnet."""
    return str(next(ipaddress.IPv4Network(subnet).hosts()))


def next_address(
    subnet: str, used: Iterable[str], within: str | None = None, reserved: Iterable[str] = ()
) -> str:
    """Lowest free host address of ``within`` (default: the subnet minus its gateway)."""
    net = ipaddress.IPv4Network(subnet)
    skip = {str(a) for a in used} | set(reserved)
    if within is None:
        skip.add(gateway_of(subnet))
    rng = ipaddress.IPv4Network(within) if within else net
    for addr in rng:
        if addr in (net.network_address, net.broadcast_address):
            continue
        if str(addr) not in skip:
            return str(addr)
    raise ResourcesExhausted(
        f"no free address left in {within or subnet}", reason="addresses-exhausted"
    )
