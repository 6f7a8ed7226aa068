"""The instance's nftables table (``inet <instance>``): isolation, egress policy, NAT, ports.

``build`` is a pure function from frozen data to the JSON commands of one nft transaction that
replaces the whole table (add table; delete table; add table, chains, rules). Applying it twice
gives the same table, so re-applying after a restart or a change is always safe, and the kernel
never sees a half-updated ruleset. ``apply`` runs ``nft -j -f -``; ``remove`` drops the table.

Shape of the table (``B`` = the set of our bridges):
  forward   ct established,related accept; DNAT'd to B accept; same bridge accept;
            per sandbox: iif bridge + saddr address → jump egress-<policy>;
            iif B drop (spoofed sources); oif B drop (nothing else enters a network)
  egress-P  resolvers :53 accept (nat/allow); daddr pool drop; allow-list accept;
            nat: allow_private accept, blocked ranges drop, accept; none/allow: drop
  input     iif B: established accept, allowed host ports accept,
            per sandbox: iif bridge + saddr address + its profile's host ports accept; drop
  prerouting/output (nat)  published ports: fib daddr local [daddr H] proto dport → dnat
  postrouting (nat)        per network: saddr subnet oif != bridge masquerade; hairpin masquerade

A second table, ``bridge <instance>``, guards the source address at the bridge ports: a frame
from a sandbox's veth with an IPv4 source other than the sandbox's own is dropped (forward and
input hooks), so no sandbox can borrow another's address, and with it its egress policy or its
allowed host ports (a process needs no capability to send from a foreign address with
``IP_FREEBIND``). The inet table alone cannot do this: its hooks see the bridge, not the port.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from dataclasses import dataclass
from typing import Any

from ..errors import NetworkError

#: destinations a sandbox may not reach unless the admin allows them (besides other networks)
BLOCKED = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16")
FAMILY = "inet"
Json = dict[str, Any]


@dataclass(frozen=True)
class Allow:
    """One allow-list entry: a CIDR, optionally only one protocol and port."""

    cidr: str
    proto: str | None = None  # "tcp" | "udp" | None (any)
    port: int | None = None


@dataclass(frozen=True)
class EgressPolicy:
    """What a profile lets its sandboxes reach outside their own network."""

    name: str  # chain suffix (the profile name)
    mode: str = "nat"  # "nat" | "none" | "allow"
    allow: tuple[Allow, ...] = ()
    allow_private: tuple[str, ...] = ()  # CIDRs exempt from BLOCKED
    host_ports: tuple[tuple[str, int], ...] = ()  # (proto, port) on the host, this policy only


@dataclass(frozen=True)
class NetworkRules:
    bridge: str
    subnet: str


@dataclass(frozen=True)
class Published:
    host_port: int
    ctr_port: int
    proto: str = "tcp"
    host_ip: str | None = None  # None = every host address


@dataclass(frozen=True)
class SandboxRules:
    sid: str
    bridge: str
    address: str
    policy: str
    ports: tuple[Published, ...] = ()
    link: str = ""  # the host end of its veth (bridge port), for the source-address guard


@dataclass(frozen=True)
class Ruleset:
    table: str
    pool: str
    networks: tuple[NetworkRules, ...] = ()
    policies: tuple[EgressPolicy, ...] = ()
    sandboxes: tuple[SandboxRules, ...] = ()
    host_ports: tuple[tuple[str, int], ...] = ()  # (proto, port) sandboxes may reach on the host
    resolvers: tuple[str, ...] = ()
    blocked: tuple[str, ...] = BLOCKED


# expression helpers ------------------------------------------------------------------------


def _addr(text: str) -> Any:
    net = ipaddress.ip_network(text, strict=False)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}}


def _addrs(items: tuple[str, ...] | list[str]) -> Any:
    values = [_addr(i) for i in items]
    return values[0] if len(values) == 1 else {"set": values}


def _names(items: list[str]) -> Any:
    return items[0] if len(items) == 1 else {"set": items}


def _match(left: Any, right: Any, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _meta(key: str) -> Json:
    return {"meta": {"key": key}}


def _ip(field: str) -> Json:
    return {"payload": {"protocol": "ip", "field": field}}


def _dport(proto: str) -> Json:
    return {"payload": {"protocol": proto, "field": "dport"}}


def _ct(key: str, values: Any) -> Json:
    return {"match": {"op": "in", "left": {"ct": {"key": key}}, "right": values}}


ACCEPT: Json = {"accept": None}
DROP: Json = {"drop": None}


def policy_chain(name: str) -> str:
    return f"egress-{name}"


# the builder ---------------------------------------------------------------------------------


def _chain(
    table: str, name: str, hook: str | None = None, kind: str = "filter", prio: int = 0
) -> Json:
    chain: Json = {"family": FAMILY, "table": table, "name": name}
    if hook:
        chain.update(type=kind, hook=hook, prio=prio, policy="accept")
    return {"add": {"chain": chain}}


def _egress_rules(rs: Ruleset, pol: EgressPolicy) -> list[list[Json]]:
    rules: list[list[Json]] = []
    if pol.mode in ("nat", "allow") and rs.resolvers:
        for proto in ("udp", "tcp"):
            rules.append(
                [_match(_ip("daddr"), _addrs(rs.resolvers)), _match(_dport(proto), 53), ACCEPT]
            )
    rules.append([_match(_ip("daddr"), _addr(rs.pool)), DROP])
    if pol.mode == "allow":
        for entry in pol.allow:
            rule = [_match(_ip("daddr"), _addr(entry.cidr))]
            if entry.proto:
                rule.append(_match(_meta("l4proto"), entry.proto))
                if entry.port is not None:
                    rule.append(_match(_dport(entry.proto), entry.port))
            rules.append([*rule, ACCEPT])
    if pol.mode == "nat":
        if pol.allow_private:
            rules.append([_match(_ip("daddr"), _addrs(pol.allow_private)), ACCEPT])
        rules.append([_match(_ip("daddr"), _addrs(rs.blocked)), DROP])
        rules.append([ACCEPT])
    else:
        rules.append([DROP])
    return rules


def _dnat_rules(sb: SandboxRules) -> list[list[Json]]:
    out = []
    for port in sb.ports:
        rule = [_match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")]
        if port.host_ip:
            rule.append(_match(_ip("daddr"), port.host_ip))
        rule += [
            _match(_meta("l4proto"), port.proto),
            _match(_dport(port.proto), port.host_port),
            {"dnat": {"family": "ip", "addr": sb.address, "port": port.ctr_port}},
        ]
        out.append(rule)
    return out


def build(rs: Ruleset) -> list[Json]:
    """The commands of one transaction that (re)creates the table as ``rs`` describes."""
    t = rs.table
    cmds: list[Json] = [
        {"add": {"table": {"family": FAMILY, "name": t}}},
        {"delete": {"table": {"family": FAMILY, "name": t}}},
        {"add": {"table": {"family": FAMILY, "name": t}}},
        _chain(t, "forward", "forward"),
        _chain(t, "input", "input"),
        _chain(t, "prerouting", "prerouting", "nat", -100),
        _chain(t, "output", "output", "nat", -100),
        _chain(t, "postrouting", "postrouting", "nat", 100),
    ]
    rules: list[tuple[str, list[Json]]] = []
    bridges = sorted({n.bridge for n in rs.networks})
    for pol in rs.policies:
        chain = policy_chain(pol.name)
        cmds.append(_chain(t, chain))
        rules += [(chain, r) for r in _egress_rules(rs, pol)]

    rules.append(("forward", [_ct("state", ["established", "related"]), ACCEPT]))
    if bridges:
        rules.append(
            ("forward", [_ct("status", "dnat"), _match(_meta("oifname"), _names(bridges)), ACCEPT])
        )
    for net in sorted(rs.networks, key=lambda n: n.bridge):
        rules.append(
            (
                "forward",
                [
                    _match(_meta("iifname"), net.bridge),
                    _match(_meta("oifname"), net.bridge),
                    ACCEPT,
                ],
            )
        )
    known = {p.name for p in rs.policies}
    for sb in sorted(rs.sandboxes, key=lambda s: s.sid):
        verdict = {"jump": {"target": policy_chain(sb.policy)}} if sb.policy in known else DROP
        rules.append(
            (
                "forward",
                [_match(_meta("iifname"), sb.bridge), _match(_ip("saddr"), sb.address), verdict],
            )
        )
    if bridges:
        rules.append(("forward", [_match(_meta("iifname"), _names(bridges)), DROP]))
        rules.append(("forward", [_match(_meta("oifname"), _names(bridges)), DROP]))

        rules.append(
            (
                "input",
                [
                    _match(_meta("iifname"), _names(bridges)),
                    _ct("state", ["established", "related"]),
                    ACCEPT,
                ],
            )
        )
        for proto, port in sorted(set(rs.host_ports)):
            rules.append(
                (
                    "input",
                    [
                        _match(_meta("iifname"), _names(bridges)),
                        _match(_meta("l4proto"), proto),
                        _match(_dport(proto), port),
                        ACCEPT,
                    ],
                )
            )
        own_ports = {p.name: p.host_ports for p in rs.policies if p.host_ports}
        for sb in sorted(rs.sandboxes, key=lambda s: s.sid):
            for proto, port in sorted(set(own_ports.get(sb.policy, ()))):
                rules.append(
                    (
                        "input",
                        [
                            _match(_meta("iifname"), sb.bridge),
                            _match(_ip("saddr"), sb.address),
                            _match(_meta("l4proto"), proto),
                            _match(_dport(proto), port),
                            ACCEPT,
                        ],
                    )
                )
        rules.append(("input", [_match(_meta("iifname"), _names(bridges)), DROP]))

    for sb in sorted(rs.sandboxes, key=lambda s: s.sid):
        for rule in _dnat_rules(sb):
            rules.append(("prerouting", rule))
            rules.append(("output", rule))
    for net in sorted(rs.networks, key=lambda n: n.bridge):
        rules.append(
            (
                "postrouting",
                [
                    _match(_ip("saddr"), _addr(net.subnet)),
                    _match(_meta("oifname"), net.bridge, "!="),
                    {"masquerade": None},
                ],
            )
        )
        rules.append(
            (
                "postrouting",
                [
                    _match(_ip("saddr"), _addr(net.subnet)),
                    _match(_ip("daddr"), _addr(net.subnet)),
                    _ct("status", "dnat"),
                    {"masquerade": None},
                ],
            )
        )
    for chain, expr in rules:
        cmds.append({"add": {"rule": {"family": FAMILY, "table": t, "chain": chain, "expr": expr}}})
    return cmds


def count_rules(cmds: list[Json]) -> int:
    return sum(1 for c in cmds if "rule" in c.get("add", {}))


# the OS side ---------------------------------------------------------------------------------


def _nft(payload: Json | None, *args: str) -> str:
    try:
        proc = subprocess.run(
            ["nft", "-j", *args],
            input=json.dumps(payload) if payload else None,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetworkError(f"nft failed: {exc}") from exc
    if proc.returncode != 0:
        raise NetworkError(f"nft failed: {proc.stderr.strip()[:2000]}")
    return proc.stdout


def _spoof_guard(rs: Ruleset) -> list[Json]:
    """The ``bridge`` family table: per bridge port, only the sandbox's own IPv4 source."""
    t = rs.table
    cmds: list[Json] = [
        {"add": {"table": {"family": "bridge", "name": t}}},
        {"delete": {"table": {"family": "bridge", "name": t}}},
        {"add": {"table": {"family": "bridge", "name": t}}},
    ]
    for hook in ("forward", "input"):
        cmds.append(
            {
                "add": {
                    "chain": {
                        "family": "bridge",
                        "table": t,
                        "name": hook,
                        "type": "filter",
                        "hook": hook,
                        "prio": -200,
                        "policy": "accept",
                    }
                }
            }
        )
    for sb in rs.sandboxes:
        if not sb.link:
            continue
        for hook in ("forward", "input"):
            expr = [_match(_meta("iifname"), sb.link), _match(_ip("saddr"), sb.address, "!="), DROP]
            cmds.append(
                {"add": {"rule": {"family": "bridge", "table": t, "chain": hook, "expr": expr}}}
            )
    return cmds


def apply(rs: Ruleset) -> int:
    """Replace the table atomically; returns the number of rules in it."""
    cmds = build(rs) + _spoof_guard(rs)
    _nft({"nftables": cmds}, "-f", "-")
    return count_rules(cmds)


def remove(table: str) -> None:
    """Drop the tables (inet and bridge) if they exist (idempotent)."""
    _nft(
        {
            "nftables": [
                {"add": {"table": {"family": family, "name": table}}}
                if i == 0
                else {"delete": {"table": {"family": family, "name": table}}}
                for family in (FAMILY, "bridge")
                for i in (0, 1)
            ]
        },
        "-f",
        "-",
    )


def listed_rules(table: str) -> list[Json]:
    """The rules the kernel holds in the table (empty if there is no table)."""
    try:
        out = _nft(None, "list", "table", FAMILY, table)
    except NetworkError:
        return []
    return [i["rule"] for i in json.loads(out).get("nftables", []) if "rule" in i]
