"""Pure parts of networking, no root needed: the nft ruleset builder, IPAM, settings parsing.

One test hands the built ruleset to the kernel (``nft -c``, check only) so the JSON we build
is proven to be what nft accepts, not just what we expect.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess

import pytest

from sandboxd import config
from sandboxd.errors import InvalidRequest, ResourcesExhausted
from sandboxd.network import ipam, settings
from sandboxd.runtime import nft

RS = nft.Ruleset(
    table="sbxq",
    pool="10.213.0.0/16",
    networks=(
        nft.NetworkRules("sbxqbr-1", "10.213.0.0/24"),
        nft.NetworkRules("sbxqbr-2", "10.213.1.0/24"),
    ),
    policies=(
        nft.EgressPolicy("default"),
        nft.EgressPolicy("closed", "none"),
        nft.EgressPolicy("allow", "allow", (nft.Allow("198.19.0.0/24", "tcp", 443),)),
        nft.EgressPolicy("open", allow_private=("169.254.169.254/32",)),
    ),
    sandboxes=(
        nft.SandboxRules(
            "a" * 16,
            "sbxqbr-1",
            "10.213.0.2",
            "default",
            (nft.Published(8080, 80), nft.Published(53, 53, "udp", "1.2.3.4")),
        ),
        nft.SandboxRules("b" * 16, "sbxqbr-2", "10.213.1.2", "closed"),
    ),
    host_ports=(("tcp", 8890),),
    resolvers=("198.19.0.53",),
)


def rules(cmds: list[dict], chain: str) -> list[list[dict]]:
    return [
        c["add"]["rule"]["expr"]
        for c in cmds
        if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] == chain
    ]


def test_build_is_deterministic_and_replaces_the_table() -> None:
    cmds = nft.build(RS)
    assert cmds == nft.build(RS)
    assert [next(iter(c)) for c in cmds[:3]] == ["add", "delete", "add"]
    assert all(c.get("add", {}).get("rule", {}).get("table", "sbxq") == "sbxq" for c in cmds)


def test_per_sandbox_rule_count() -> None:
    base = nft.count_rules(nft.build(dataclasses.replace(RS, sandboxes=())))
    one = dataclasses.replace(RS, sandboxes=RS.sandboxes[1:])
    assert nft.count_rules(nft.build(one)) - base == 1  # the jump into its egress policy
    # each published port adds a DNAT rule for other hosts and one for the host itself
    assert nft.count_rules(nft.build(RS)) - base == 1 + 1 + 2 * 2


def test_forward_order_isolates_networks() -> None:
    fwd = rules(nft.build(RS), "forward")
    text = [json.dumps(r) for r in fwd]
    assert "established" in text[0]
    assert '"dnat"' in text[1] and "accept" in text[1]
    jumps = [t for t in text if "jump" in t]
    assert len(jumps) == 2 and "egress-default" in jumps[0] and "egress-closed" in jumps[1]
    # a sandbox whose profile has no policy chain (config reloaded without it) is cut off
    gone = nft.build(dataclasses.replace(RS, policies=RS.policies[:1]))
    assert any("10.213.1.2" in json.dumps(r) and r[-1] == nft.DROP for r in rules(gone, "forward"))
    assert text[-2].endswith('{"drop": null}]') and "iifname" in text[-2]
    assert text[-1].endswith('{"drop": null}]') and "oifname" in text[-1]


def test_egress_policies() -> None:
    cmds = nft.build(RS)
    nat = [json.dumps(r) for r in rules(cmds, "egress-default")]
    assert "10.213.0.0" in nat[2] and nat[2].endswith('{"drop": null}]')  # other networks
    assert "169.254.0.0" in nat[-2] and nat[-1] == '[{"accept": null}]'
    closed = rules(cmds, "egress-closed")
    assert closed[-1] == [nft.DROP] and not any("198.19.0.53" in json.dumps(r) for r in closed)
    allow = [json.dumps(r) for r in rules(cmds, "egress-allow")]
    assert any("198.19.0.0" in r and "443" in r for r in allow) and allow[-1] == '[{"drop": null}]'
    opened = [json.dumps(r) for r in rules(cmds, "egress-open")]
    meta = opened.index(next(r for r in opened if "169.254.169.254" in r))
    blocked = opened.index(next(r for r in opened if "169.254.0.0" in r))
    assert meta < blocked


def test_input_allows_only_configured_host_ports() -> None:
    inp = [json.dumps(r) for r in rules(nft.build(RS), "input")]
    assert "established" in inp[0] and "8890" in inp[1] and inp[-1].endswith('{"drop": null}]')
    assert len(inp) == 3


def test_dnat_and_masquerade() -> None:
    cmds = nft.build(RS)
    pre = rules(cmds, "prerouting")
    assert pre == rules(cmds, "output") and len(pre) == 2
    assert {"dnat": {"family": "ip", "addr": "10.213.0.2", "port": 80}} in pre[0]
    assert any(m.get("match", {}).get("right") == "1.2.3.4" for m in pre[1])
    post = rules(cmds, "postrouting")
    assert len(post) == 4 and all({"masquerade": None} in r for r in post)


def test_empty_ruleset_has_no_bridge_rules() -> None:
    cmds = nft.build(nft.Ruleset(table="t", pool=RS.pool))
    assert nft.count_rules(cmds) == 1  # forward: established


@pytest.mark.root
def test_the_kernel_accepts_the_ruleset() -> None:
    proc = subprocess.run(
        ["nft", "-c", "-j", "-f", "-"],
        input=json.dumps({"nftables": nft.build(RS)}),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_ipam_lowest_free_and_reuse() -> None:
    assert ipam.next_subnet("10.213.0.0/16", 24, []) == "10.213.0.0/24"
    assert (
        ipam.next_subnet("10.213.0.0/16", 24, ["10.213.0.0/24", "10.213.2.0/24"]) == "10.213.1.0/24"
    )
    assert ipam.gateway_of("10.213.1.0/24") == "10.213.1.1"
    assert ipam.next_address("10.213.1.0/24", []) == "10.213.1.2"
    assert ipam.next_address("10.213.1.0/24", ["10.213.1.2", "10.213.1.4"]) == "10.213.1.3"
    assert ipam.next_address("10.0.0.0/24", [], within="10.0.0.128/30") == "10.0.0.128"
    with pytest.raises(ResourcesExhausted):
        ipam.next_address("10.0.0.0/30", ["10.0.0.2"])
    with pytest.raises(ResourcesExhausted):
        ipam.next_subnet("10.213.0.0/23", 24, ["10.213.0.0/24", "10.213.1.0/24"])


def test_pool_overlap() -> None:
    import ipaddress

    routes = [
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("10.213.5.0/24"),
        ipaddress.ip_network("192.168.1.0/24"),
    ]
    assert ipam.overlapping("10.213.0.0/16", routes) == [routes[1]]


@pytest.mark.parametrize(
    "text, want",
    [
        ("8080:80", nft.Published(8080, 80)),
        ("8080:80/udp", nft.Published(8080, 80, "udp")),
        ("127.0.0.1:8080:80/tcp", nft.Published(8080, 80, "tcp", "127.0.0.1")),
    ],
)
def test_parse_port(text: str, want: nft.Published) -> None:
    assert settings.parse_port(text) == want


@pytest.mark.parametrize(
    "text", ["80", "0:80", "70000:80", "a:80", "1.2.3:80:80", "80:80/sctp", "80:80:80:80", ""]
)
def test_parse_port_refuses(text: str) -> None:
    with pytest.raises(InvalidRequest):
        settings.parse_port(text)


def test_check_mode() -> None:
    assert settings.check_mode("bridge", ["80:80"]) == ("80:80/tcp",)
    for mode in ("none", "host", "macvlan", "container:abc", "mynet"):
        settings.check_mode(mode, [])
    for mode in ("container:", "a b", "default", "x" * 40):
        with pytest.raises(InvalidRequest):
            settings.check_mode(mode, [])
    with pytest.raises(InvalidRequest):
        settings.check_mode("none", ["80:80"])
    with pytest.raises(InvalidRequest):
        settings.check_mode("bridge", ["80:80", "80:81"])


def test_config_network_keys() -> None:
    cfg = config.load(
        overrides={
            "network": {"host_ports": ["tcp/8890", "53/udp"], "resolvers": ["1.1.1.1"]},
            "profiles": {"x": {"egress": "allow", "egress_allow": ["1.2.3.0/24:443"]}},
        }
    )
    assert cfg.network.host_ports == (("tcp", 8890), ("udp", 53))
    assert cfg.network.resolvers == ("1.1.1.1",)
    assert cfg.profiles["x"].egress.allow == (nft.Allow("1.2.3.0/24", "tcp", 443),)
    assert cfg.profiles["default"].egress.mode == "nat"
    for bad in (
        {"network": {"pool": "nope"}},
        {"network": {"bogus": 1}},
        {
            "network": {
                "macvlan_parent": "eth0",
                "macvlan_subnet": "10.0.0.0/24",
                "macvlan_range": "10.1.0.0/28",
            }
        },
        {"profiles": {"default": {"egress": "open"}}},
        {"profiles": {"default": {"egress_allow": ["1.2.3.4:99999"]}}},
    ):
        with pytest.raises(InvalidRequest) as err:
            config.load(overrides=bad)
        assert err.value.reason == "bad-config"


def test_host_resolvers_skip_loopback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch x\nnameserver ::1\n")
    assert settings.host_resolvers(str(path)) == ("10.0.0.2",)


def test_mac_follows_the_address() -> None:
    from sandboxd.runtime.netlink import mac_for

    assert mac_for("10.213.0.2") == "02:42:0a:d5:00:02"


def test_spoof_guard_pins_each_bridge_port_to_its_address() -> None:
    rs = nft.Ruleset(
        table="sbxq",
        pool="10.213.0.0/16",
        sandboxes=(
            nft.SandboxRules(
                sid="a", bridge="sbxqbr-1", address="10.213.0.2", policy="default", link="sbxqv0a"
            ),
            nft.SandboxRules(sid="b", bridge="sbxqbr-1", address="10.213.0.3", policy="default"),
        ),
    )
    cmds = nft._spoof_guard(rs)
    rules = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    assert {r["chain"] for r in rules} == {"forward", "input"} and len(rules) == 2
    for rule in rules:
        assert rule["family"] == "bridge" and rule["table"] == "sbxq"
        text = json.dumps(rule["expr"])
        assert '"sbxqv0a"' in text and '"10.213.0.2"' in text and '"!="' in text
        assert rule["expr"][-1] == {"drop": None}
    chains = [c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})]
    assert {c["hook"] for c in chains} == {"forward", "input"}
    assert nft.count_rules(nft.build(rs) + cmds) == nft.count_rules(nft.build(rs)) + 2
