"""Networks end to end: the connectivity table of reference/docker-primer.zh.md, row by row.

Topology, all in namespaces this module creates (nothing else is ever sent traffic):

    upstream netns U (198.18.0.1; "internet" 198.19.0.10, private 10.99.0.1, 169.254.169.254)
        │ veth
    host netns H: up0 198.18.0.2 (default route via U), lan0 198.18.1.1, the daemon under test,
        │ veth      its bridges <inst>br-N and the sandboxes' veths
    LAN client netns L (198.18.1.2, default route via H) — also the LAN of macvlan sandboxes

The pytest process itself switches into H for this module (and back), so its API clients reach
the daemon on H's loopback and "the host" probes are plain sockets from H.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import (
    PREFIX,
    PYTHON,
    SANDBOXCTL,
    SANDBOXD,
    TEST_NETNS,
    ApiError,
    Client,
    Daemon,
    make_daemon,
    other_instance,
    stop_daemon,
)

pytestmark = pytest.mark.root

INST = other_instance("n")
H, U, L = f"{PREFIX}-nh", f"{PREFIX}-nu", f"{PREFIX}-nl"
HOST_UP, UPSTREAM, LAN_HOST, LAN_CLIENT = "198.18.0.2", "198.18.0.1", "198.18.1.1", "198.18.1.2"
INTERNET, PRIVATE, METADATA = "198.19.0.10", "10.99.0.1", "169.254.169.254"
ECHO, ECHO_DENIED = 7000, 7001  # upstream echo ports
HOST_ALLOWED, HOST_DENIED = 7100, 7101  # ports the host listens on; only the first is allowed
CTR = 8080  # port sandbox servers listen on

CONFIG = f"""
stop_grace_seconds = 2

[network]
resolvers = ["198.19.0.53"]
host_ports = ["tcp/{HOST_ALLOWED}"]
max_networks = 3
macvlan_parent = "lan0"
macvlan_subnet = "198.18.1.0/24"
macvlan_range = "198.18.1.128/28"

[profiles.default]
cpus = 0.5
memory = "256m"
pids = 128
disk = "64m"
network = "bridge"

[profiles.open]
egress_allow_private = ["{METADATA}/32", "10.99.0.0/24"]

[profiles.closed]
egress = "none"

[profiles.allowlist]
egress = "allow"
egress_allow = ["{INTERNET}/32:{ECHO}/tcp"]

[profiles.hostnet]
network = "host"
allow_host_network = true

[quotas.default]
max_sandboxes = 12
memory = "6g"
cpus = 8.0
"""

# an echo server: answers every TCP connection and UDP datagram with the peer's address;
# argv: UDP bind address (a UDP reply must come from the address it was sent to), ports
SERVER = r"""
import socket, sys, threading
def tcp(p):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", p)); s.listen(64)
    while True:
        c, a = s.accept(); c.sendall((a[0] + "\n").encode()); c.close()
def udp(p):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((udp_bind, p))
    while True:
        d, a = s.recvfrom(100); s.sendto((a[0] + "\n").encode(), a)
udp_bind = sys.argv[1]
for p in map(int, sys.argv[2:]):
    threading.Thread(target=tcp, args=(p,), daemon=True).start()
    threading.Thread(target=udp, args=(p,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# a prober: "tcp:IP:PORT" / "udp:IP:PORT" → the echoed peer address, or "ERR"
PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def one(t):
    proto, ip, port = t.split(":")
    try:
        if proto == "tcp":
            s = socket.create_connection((ip, int(port)), timeout=1.0)
            s.settimeout(1.0)
            return s.recv(100).decode().strip() or "EMPTY"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
        s.sendto(b"x", (ip, int(port)))
        return s.recvfrom(100)[0].decode().strip()
    except OSError:
        return "ERR"
targets = sys.argv[1:]
with ThreadPoolExecutor(16) as ex:
    print(json.dumps(dict(zip(targets, ex.map(one, targets)))))
"""

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def ipn(ns: str, *args: str) -> None:
    sh("ip", "-n", ns, *args)


def build_topology() -> None:
    for ns in (H, U, L):
        sh("ip", "netns", "add", ns)
        ipn(ns, "link", "set", "lo", "up")
    ipn(H, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", U)
    ipn(H, "addr", "add", f"{HOST_UP}/24", "dev", "up0")
    ipn(H, "link", "set", "up0", "up")
    ipn(U, "addr", "add", f"{UPSTREAM}/24", "dev", "eth0")
    ipn(U, "link", "set", "eth0", "up")
    for addr in (INTERNET, PRIVATE, METADATA):
        ipn(U, "addr", "add", f"{addr}/32", "dev", "lo")
    ipn(H, "route", "add", "default", "via", UPSTREAM)
    # upstream can route to the host's pool, so "unreachable" is the host's decision
    ipn(U, "route", "add", "10.213.0.0/16", "via", HOST_UP)
    ipn(H, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", L)
    ipn(H, "addr", "add", f"{LAN_HOST}/24", "dev", "lan0")
    ipn(H, "link", "set", "lan0", "up")
    ipn(L, "addr", "add", f"{LAN_CLIENT}/24", "dev", "eth0")
    ipn(L, "link", "set", "eth0", "up")
    ipn(L, "route", "add", "default", "via", LAN_HOST)


def spawn_in(ns: str, *argv: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{ns}", *argv], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def probe_from(ns: str | None, *targets: str) -> dict[str, str]:
    """Probe from a test namespace (None: from the host H, where pytest now is)."""
    prefix = ["nsenter", f"--net=/run/netns/{ns}"] if ns else []
    return json.loads(sh(*prefix, PYTHON, "-c", PROBE, *targets))


class Net:
    """The module's world: the daemon in H and helpers to run sandboxes there."""

    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.started: list[tuple[Client, str]] = []

    def user(self, name: str) -> Client:
        return self.d.user(name)

    def probe(self, client: Client, *targets: str, **fields: Any) -> dict[str, str]:
        result, out, err = client.run_to_end([PYTHON, "-c", PROBE, *targets], **fields)
        assert result["exit_code"] == 0, (result, err)
        return json.loads(out)

    def server(self, client: Client, **fields: Any) -> dict[str, Any]:
        sb = client.run([PYTHON, "-u", "-c", SERVER, "0.0.0.0", str(CTR)], **fields)
        self.started.append((client, sb["id"]))
        deadline = time.monotonic() + 20
        while "ready" not in client.logs(sb["id"])["stdout"]:
            assert time.monotonic() < deadline, client.logs(sb["id"])
            time.sleep(0.05)
        return client.call("GET", f"/api/sandboxes/{sb['id']}")

    def rm(self, client: Client, sid: str) -> None:
        client.call("DELETE", f"/api/sandboxes/{sid}?force=1")
        self.started = [s for s in self.started if s[1] != sid]

    def cleanup_sandboxes(self) -> None:
        for client, sid in list(self.started):
            try:
                self.rm(client, sid)
            except ApiError:
                pass


def address(sb: dict[str, Any]) -> str:
    return sb["network_settings"]["address"]


def leftovers_in_h(prefix: str) -> list[str]:
    left = [f"netns {n}" for n in os.listdir("/run/netns") if n.startswith(prefix + "-")]
    for line in sh("ip", "-n", H, "-o", "link", "show").splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if name.startswith(prefix):
            left.append(f"link {name}")
    tables = json.loads(sh("nsenter", f"--net=/run/netns/{H}", "nft", "-j", "list", "tables"))
    left += [
        f"nft {t['table']['name']}"
        for t in tables["nftables"]
        if "table" in t and t["table"]["name"].startswith(prefix)
    ]
    return left


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    build_topology()
    servers = []
    _setns(H)
    d = make_daemon(INST, CONFIG)
    try:
        servers.append(
            spawn_in(U, PYTHON, "-u", "-c", SERVER, INTERNET, str(ECHO), str(ECHO_DENIED))
        )
        servers.append(
            spawn_in(H, PYTHON, "-u", "-c", SERVER, "0.0.0.0", str(HOST_ALLOWED), str(HOST_DENIED))
        )
        d.start(netns=H)
        world = Net(d)
        yield world
        world.cleanup_sandboxes()
    finally:
        stop_daemon(d)
        for proc in servers:
            proc.kill()
            proc.wait()
        sh(
            "nsenter",
            f"--net=/run/netns/{H}",
            SANDBOXD,
            "cleanup",
            "--instance",
            INST,
            "--purge",
            "--state-dir",
            d.state_dir,
            "--run-dir",
            d.run_dir,
            check=False,
        )
        _setns(TEST_NETNS)
        for ns in (H, U, L):
            sh("ip", "netns", "delete", ns, check=False)


# 1. sandbox → upstream ------------------------------------------------------------------------


def test_sandbox_reaches_upstream_through_nat(net: Net) -> None:
    alice = net.user("alice")
    out = net.probe(alice, f"tcp:{INTERNET}:{ECHO}", f"udp:{INTERNET}:{ECHO}")
    # the upstream server sees the host's uplink address, not the sandbox's
    assert out == {f"tcp:{INTERNET}:{ECHO}": HOST_UP, f"udp:{INTERNET}:{ECHO}": HOST_UP}


def test_sandbox_files_and_interfaces(net: Net) -> None:
    alice = net.user("alice")
    code = (
        "import socket; print(sorted(n for _, n in socket.if_nameindex()));"
        "print(open('/etc/resolv.conf').read().strip()); print(open('/etc/hosts').read())"
    )
    result, out, _ = alice.run_to_end([PYTHON, "-c", code], name="filecheck")
    assert result["exit_code"] == 0
    lines = out.splitlines()
    assert lines[0] == "['eth0', 'lo']"
    assert lines[1] == "nameserver 198.19.0.53"
    assert any(line.endswith("\tfilecheck") and line.startswith("10.213.") for line in lines)


# 2. upstream / LAN client → sandbox, published ports -------------------------------------------


def test_inbound_needs_a_published_port(net: Net) -> None:
    alice = net.user("alice")
    plain = net.server(alice)
    published = net.server(alice, ports=["18080:8080", f"{HOST_UP}:18081:8080/udp"])
    for ns in (L, U):
        out = probe_from(ns, f"tcp:{address(plain)}:{CTR}", f"tcp:{address(published)}:{CTR}")
        assert set(out.values()) == {"ERR"}, (ns, out)
    out = probe_from(L, f"tcp:{LAN_HOST}:18080", f"tcp:{HOST_UP}:18080", f"udp:{HOST_UP}:18081")
    assert out == {
        f"tcp:{LAN_HOST}:18080": LAN_CLIENT,
        f"tcp:{HOST_UP}:18080": LAN_CLIENT,
        f"udp:{HOST_UP}:18081": LAN_CLIENT,
    }
    assert probe_from(U, f"tcp:{HOST_UP}:18080") == {f"tcp:{HOST_UP}:18080": UPSTREAM}
    # the host itself reaches a published port on its own address
    assert probe_from(None, f"tcp:{HOST_UP}:18080")[f"tcp:{HOST_UP}:18080"] != "ERR"
    # a published port is exclusive, and so is a port the host already listens on
    for ports in (["18080:9000"], [f"{HOST_ALLOWED}:8080"]):
        with pytest.raises(ApiError) as err:
            alice.run(["sleep", "60"], ports=ports)
        assert err.value.status == 409 and err.value.body["reason"] == "port-taken"
    assert published["network_settings"]["ports"] == ["18080:8080/tcp", f"{HOST_UP}:18081:8080/udp"]
    # removed with the sandbox: the port is closed and free again
    net.rm(alice, published["id"])
    assert probe_from(L, f"tcp:{LAN_HOST}:18080") == {f"tcp:{LAN_HOST}:18080": "ERR"}
    again = net.server(alice, ports=["18080:8080"])
    assert probe_from(L, f"tcp:{LAN_HOST}:18080") == {f"tcp:{LAN_HOST}:18080": LAN_CLIENT}
    net.rm(alice, again["id"])
    net.rm(alice, plain["id"])


# 3 and 4. sandbox ↔ sandbox ------------------------------------------------------------------


def test_same_network_reachable_others_not(net: Net) -> None:
    alice, bob = net.user("alice"), net.user("bob")
    a1 = net.server(alice)
    b1 = net.server(bob)
    alice.call("POST", "/api/networks", json={"name": "lab"}, expect=201)
    a2 = net.server(alice, network="lab")
    assert address(a1).rsplit(".", 1)[0] != address(b1).rsplit(".", 1)[0]
    t = {sb["id"]: f"tcp:{address(sb)}:{CTR}" for sb in (a1, b1, a2)}
    # same user, same network: reachable, and the peer sees the sandbox's own address
    out = net.probe(alice, t[a1["id"]], t[b1["id"]], t[a2["id"]], name="peer")
    assert out[t[a1["id"]]].startswith(address(a1).rsplit(".", 1)[0] + ".")
    assert out[t[b1["id"]]] == "ERR" and out[t[a2["id"]]] == "ERR"
    # the other directions: bob → alice, alice's lab → alice's default
    assert set(net.probe(bob, t[a1["id"]], t[a2["id"]]).values()) == {"ERR"}
    assert set(net.probe(alice, t[a1["id"]], t[b1["id"]], network="lab").values()) == {"ERR"}
    for sb, client in ((a1, alice), (b1, bob), (a2, alice)):
        net.rm(client, sb["id"])
    alice.call("DELETE", "/api/networks/lab", expect=204)


# a UDP listener printing the source of every datagram; a sender of real and forged datagrams
RECORDER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    d, a = s.recvfrom(100); print(a[0], d.decode(), flush=True)
"""
FORGER = r"""
import socket, sys
target, port, forged = sys.argv[1], int(sys.argv[2]), sys.argv[3]
real = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fake = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
fake.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: no capability needed
fake.bind((forged, 0))
refused = 0
for _ in range(5):
    real.sendto(b"real", (target, port))
    try:
        fake.sendto(b"forged", (target, port))
    except OSError:  # the kernel itself refuses a foreign source without CAP_NET_ADMIN
        refused += 1
print("sent", refused, flush=True)
"""


def test_a_sandbox_cannot_send_from_another_address(net: Net) -> None:
    alice = net.user("alice")
    rec = alice.run([PYTHON, "-u", "-c", RECORDER, str(CTR)])
    net.started.append((alice, rec["id"]))
    deadline = time.monotonic() + 20
    while "ready" not in alice.logs(rec["id"])["stdout"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rec = alice.call("GET", f"/api/sandboxes/{rec['id']}")
    target = address(rec)
    forged = target.rsplit(".", 1)[0] + ".250"  # another address of the same subnet
    result, out, err = alice.run_to_end([PYTHON, "-c", FORGER, target, str(CTR), forged])
    assert result["exit_code"] == 0 and "sent" in out, err
    time.sleep(0.5)
    seen = alice.logs(rec["id"])["stdout"].splitlines()[1:]
    assert any(line.endswith(" real") for line in seen), seen  # the path works
    assert not any(line.endswith(" forged") for line in seen), seen  # the forgery never arrives
    assert not any(line.startswith(forged) for line in seen), seen
    net.rm(alice, rec["id"])


# 5. sandbox ↔ host ---------------------------------------------------------------------------


def test_host_reaches_sandbox_sandbox_reaches_only_allowed_host_ports(net: Net) -> None:
    alice = net.user("alice")
    sb = net.server(alice)
    gateway = sb["network_settings"]["gateway"]
    assert probe_from(None, f"tcp:{address(sb)}:{CTR}")[f"tcp:{address(sb)}:{CTR}"] == gateway
    out = net.probe(
        alice,
        f"tcp:{gateway}:{HOST_ALLOWED}",
        f"tcp:{gateway}:{HOST_DENIED}",
        f"tcp:{HOST_UP}:{HOST_ALLOWED}",
        f"tcp:{HOST_UP}:{HOST_DENIED}",
        f"tcp:{LAN_HOST}:{HOST_DENIED}",
    )
    assert out[f"tcp:{gateway}:{HOST_ALLOWED}"] != "ERR"
    assert out[f"tcp:{HOST_UP}:{HOST_ALLOWED}"] != "ERR"
    assert [k for k, v in out.items() if v == "ERR"] == [
        f"tcp:{gateway}:{HOST_DENIED}",
        f"tcp:{HOST_UP}:{HOST_DENIED}",
        f"tcp:{LAN_HOST}:{HOST_DENIED}",
    ]
    net.rm(alice, sb["id"])


# 6. metadata and private ranges ----------------------------------------------------------------


def test_metadata_and_private_blocked_unless_profile_allows(net: Net) -> None:
    alice = net.user("alice")
    targets = (f"tcp:{METADATA}:{ECHO}", f"tcp:{PRIVATE}:{ECHO}", f"tcp:{INTERNET}:{ECHO}")
    assert net.probe(alice, *targets) == dict(zip(targets, ("ERR", "ERR", HOST_UP), strict=True))
    assert net.probe(alice, *targets, profile="open") == dict.fromkeys(targets, HOST_UP)


# 8. egress policies -------------------------------------------------------------------------


def test_egress_none_and_allow_list(net: Net) -> None:
    alice = net.user("alice")
    targets = (f"tcp:{INTERNET}:{ECHO}", f"tcp:{INTERNET}:{ECHO_DENIED}", f"udp:{INTERNET}:{ECHO}")
    assert set(net.probe(alice, *targets, profile="closed").values()) == {"ERR"}
    assert net.probe(alice, *targets, profile="allowlist") == dict(
        zip(targets, (HOST_UP, "ERR", "ERR"), strict=True)
    )


# 7. the other modes ---------------------------------------------------------------------------


def test_network_none_is_loopback_only(net: Net) -> None:
    alice = net.user("alice")
    code = "import socket; print(sorted(n for _, n in socket.if_nameindex()))"
    result, out, _ = alice.run_to_end([PYTHON, "-c", code], network="none")
    assert out.strip() == "['lo']"
    assert set(
        net.probe(
            alice, f"tcp:{INTERNET}:{ECHO}", f"tcp:{HOST_UP}:{HOST_ALLOWED}", network="none"
        ).values()
    ) == {"ERR"}


def test_container_mode_shares_the_stack(net: Net) -> None:
    alice, bob = net.user("alice"), net.user("bob")
    target = net.server(alice, name="target")
    code = (
        "import socket; print(sorted(n for _, n in socket.if_nameindex()));"
        f"s = socket.create_connection(('127.0.0.1', {CTR}), timeout=2);"
        "print(s.recv(100).decode().strip())"
    )
    result, out, err = alice.run_to_end([PYTHON, "-c", code], network="container:target")
    assert result["exit_code"] == 0, err
    assert out.split() == ["['eth0',", "'lo']", "127.0.0.1"]
    # another user cannot join alice's sandbox
    with pytest.raises(ApiError) as exc:
        bob.run(["true"], network=f"container:{target['id']}")
    assert exc.value.status == 404
    # when the joined sandbox goes, the one that joined it ends too
    joined = alice.run(["sleep", "300"], network="container:target")
    net.rm(alice, target["id"])
    assert alice.wait(joined["id"])["exit_code"] != 0
    alice.call("DELETE", f"/api/sandboxes/{joined['id']}?force=1")


def test_host_mode_only_for_admin_profiles(net: Net) -> None:
    alice = net.user("alice")
    with pytest.raises(ApiError) as exc:
        alice.run(["true"], network="host")
    assert exc.value.status == 403
    code = "import socket; print(sorted(n for _, n in socket.if_nameindex()))"
    result, out, _ = alice.run_to_end([PYTHON, "-c", code], profile="hostnet")
    assert "up0" in out and "lan0" in out


def test_macvlan_own_mac_and_address_reachable_from_lan(net: Net) -> None:
    alice = net.user("alice")
    sb = net.server(alice, network="macvlan")
    settings = sb["network_settings"]
    assert settings["mode"] == "macvlan" and settings["address"] == "198.18.1.128"
    parent_mac = json.loads(sh("ip", "-j", "link", "show", "lan0"))[0]["address"]
    assert settings["mac"] and settings["mac"] != parent_mac
    out = probe_from(L, f"tcp:{settings['address']}:{CTR}")
    assert out == {f"tcp:{settings['address']}:{CTR}": LAN_CLIENT}
    net.rm(alice, sb["id"])


# counters, API and CLI ---------------------------------------------------------------------


def test_counters_in_stats(net: Net) -> None:
    alice = net.user("alice")
    sb = net.server(alice)
    probe_from(None, *[f"tcp:{address(sb)}:{CTR}"] * 5)
    stats = alice.call("GET", f"/api/sandboxes/{sb['id']}/stats")
    assert stats["net_rx_bytes"] > 0 and stats["net_tx_bytes"] > 0
    assert stats["net_rx_packets"] >= 5 and stats["net_rx_dropped"] >= 0
    env = {**os.environ, "SANDBOXD_URL": net.d.url, "SANDBOXD_TOKEN": alice.token or ""}
    table = subprocess.run(
        [SANDBOXCTL, "stats", sb["id"]], env=env, capture_output=True, text=True
    ).stdout.splitlines()
    column = table[0].index("NET I/O")
    assert "NET I/O" in table[0] and table[1][column:].split()[0] != "-", table
    net.rm(alice, sb["id"])


def test_network_api_and_errors(net: Net) -> None:
    alice, bob = net.user("alice"), net.user("bob")
    made = alice.call("POST", "/api/networks", json={"name": "proj"}, expect=201)
    assert made["subnet"].startswith("10.213.") and made["bridge"].startswith(INST + "br-")
    names = [n["name"] for n in alice.call("GET", "/api/networks")]
    assert "proj" in names
    assert all(n["user"] == "bob" for n in bob.call("GET", "/api/networks"))
    bob.call("GET", "/api/networks/proj", expect=404)
    bob.call("DELETE", "/api/networks/proj?user=alice", expect=404)  # as if alice did not exist
    for body, status in (
        ({"name": "host"}, 400),
        ({"name": "a b"}, 400),
        ({}, 400),
        ({"name": "proj"}, 409),
        ({"name": "x", "mtu": 1}, 400),
    ):
        err = alice.call("POST", "/api/networks", json=body, expect=status)
        assert set(err) == {"reason", "message"}
    alice.call("POST", "/api/networks", json={"name": "third"}, expect=201)
    err = alice.call("POST", "/api/networks", json={"name": "fourth"}, expect=429)
    assert err["reason"] == "max-networks"
    for fields, status in (
        ({"network": "nosuch"}, 404),
        ({"network": "a/b"}, 400),
        ({"ports": ["99999:1"]}, 400),
        ({"ports": "80:80"}, 400),
        ({"ports": ["80:80"], "network": "none"}, 400),
        ({"network": "container:nosuch"}, 404),
    ):
        err = alice.call(
            "POST", "/api/sandboxes", json={"command": ["true"], **fields}, expect=status
        )
        assert set(err) == {"reason", "message"}
    sb = alice.run(["sleep", "60"], network="proj")
    assert alice.call("DELETE", "/api/networks/proj", expect=409)["reason"] == "network-in-use"
    net.rm(alice, sb["id"])
    alice.call("DELETE", "/api/networks/proj", expect=204)
    alice.call("DELETE", "/api/networks/third", expect=204)
    # nothing of the refused sandboxes is left: only bridges of networks that exist remain
    left = leftovers_in_h(INST)
    assert all(x.startswith(f"link {INST}br-") or x == f"nft {INST}" for x in left), left


def test_cli_network_commands(net: Net) -> None:
    alice = net.user("alice")
    env = {**os.environ, "SANDBOXD_URL": net.d.url, "SANDBOXD_TOKEN": alice.token or ""}

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SANDBOXCTL, *args], env=env, capture_output=True, text=True)

    assert ctl("network", "create", "clinet").returncode == 0
    ls = ctl("network", "ls")
    assert ls.returncode == 0 and "clinet" in ls.stdout and "SUBNET" in ls.stdout
    assert json.loads(ctl("network", "inspect", "clinet").stdout)[0]["name"] == "clinet"
    run = ctl(
        "run",
        "--rm",
        "--network",
        "clinet",
        "-p",
        "18090:8080",
        "--",
        "/bin/sh",
        "-c",
        "cat /etc/resolv.conf",
    )
    assert run.returncode == 0 and "198.19.0.53" in run.stdout, run.stderr
    bad = ctl("run", "--rm", "-p", "nonsense", "--", "true")
    assert bad.returncode != 0 and "port" in bad.stderr
    assert ctl("network", "rm", "clinet").returncode == 0
    assert "clinet" not in ctl("network", "ls").stdout


# restart and crash ---------------------------------------------------------------------------


def test_restart_restores_rules_and_readopts(net: Net) -> None:
    alice = net.user("alice")
    sb = net.server(alice, ports=["18085:8080"])
    net.d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    net.d.proc.wait(timeout=30)  # type: ignore[union-attr]
    sh("nsenter", f"--net=/run/netns/{H}", "nft", "delete", "table", "inet", INST)
    assert probe_from(L, f"tcp:{LAN_HOST}:18085")[f"tcp:{LAN_HOST}:18085"] == "ERR"
    net.d.start(netns=H)
    again = alice.call("GET", f"/api/sandboxes/{sb['id']}")
    assert again["state"] == "running" and address(again) == address(sb)
    assert probe_from(L, f"tcp:{LAN_HOST}:18085") == {f"tcp:{LAN_HOST}:18085": LAN_CLIENT}
    net.rm(alice, sb["id"])
    # a released address is handed out again
    assert address(net.server(alice)) == address(sb)
    net.cleanup_sandboxes()


def test_zz_cleanup_after_a_crash_removes_everything(net: Net) -> None:
    alice = net.user("alice")
    net.server(alice, ports=["18086:8080"])
    net.server(alice, network="macvlan")
    assert leftovers_in_h(INST)
    net.d.kill(signal.SIGKILL)
    sh(
        "nsenter",
        f"--net=/run/netns/{H}",
        SANDBOXD,
        "cleanup",
        "--instance",
        INST,
        "--state-dir",
        net.d.state_dir,
        "--run-dir",
        net.d.run_dir,
    )
    assert leftovers_in_h(INST) == []
    assert not [
        line
        for line in sh("ps", "-eo", "args").splitlines()
        if line.startswith("bwrap") and INST in line
    ]
    net.started.clear()
