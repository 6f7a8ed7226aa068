"""What one daemon instance has on the host, what its database says, and whether they agree.

Shared by the resilience tests (churn, crash, tenant attacks). ``HostView.take`` reads the host
directly (``/run/netns``, links, every cgroup hierarchy, ``/proc``, mountinfo, the run and log
dirs, both nft tables) and the state database read-only; ``problems`` lists every way the two
disagree: an orphan process / cgroup / netns / veth / nft rule / run dir / log, a record without
its objects, a kernel row without its sandbox or a kernel sandbox without its row. Tests poll
``settle`` until nothing is listed (releases run in the background), then assert.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Protocol


class Daemon(Protocol):
    """What the view needs of a daemon (conftest's Daemon, or a benchmark's)."""

    instance: str
    run_dir: str
    state_dir: str


CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass
class Row:
    state: str
    kind: str
    pid: int | None
    user: str


@dataclass
class Attachment:
    mode: str
    netns: str
    link: str
    address: str | None


@dataclass
class HostView:
    instance: str
    netns: set[str] = field(default_factory=set)
    veths: set[str] = field(default_factory=set)
    bridges: set[str] = field(default_factory=set)
    cgroups: set[str] = field(default_factory=set)  # sandbox ids with a cgroup dir anywhere
    procs: dict[int, str] = field(default_factory=dict)  # pid → sandbox id of its cgroup
    rundirs: set[str] = field(default_factory=set)
    logs: set[str] = field(default_factory=set)
    mounts: list[str] = field(default_factory=list)
    nft_links: set[str] = field(default_factory=set)
    nft_addresses: set[str] = field(default_factory=set)
    nft_text: str = ""
    sandboxes: dict[str, Row] = field(default_factory=dict)
    kernels: dict[str, str] = field(default_factory=dict)  # kernel id → sandbox id
    attachments: dict[str, Attachment] = field(default_factory=dict)
    ports: set[str] = field(default_factory=set)  # sandbox ids holding a published port
    networks: set[int] = field(default_factory=set)

    @classmethod
    def take(cls, d: Daemon, pool: str | None = None) -> HostView:
        view = cls(d.instance)
        inst = d.instance
        if os.path.isdir("/run/netns"):
            view.netns = {n for n in os.listdir("/run/netns") if _sandbox_netns(inst, n)}
        out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name = line.split(":", 2)[1].strip().split("@")[0]
            if name.startswith(inst + "br-"):
                view.bridges.add(name)
            elif name.startswith(inst):
                view.veths.add(name)
        for hierarchy in os.listdir(CGROUP_ROOT):
            base = os.path.join(CGROUP_ROOT, hierarchy, inst)
            if not os.path.isdir(base):
                continue
            for user in _subdirs(base):
                view.cgroups |= set(_subdirs(os.path.join(base, user)))
        view.procs = _procs_in(inst)
        if os.path.isdir(d.run_dir):
            view.rundirs = {
                n for n in os.listdir(d.run_dir) if os.path.isdir(os.path.join(d.run_dir, n))
            }
        logs = os.path.join(d.state_dir, "logs")
        if os.path.isdir(logs):
            view.logs = {n.split(".log")[0] for n in os.listdir(logs)}
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                target = line.split()[4]
                if target.startswith("/run/netns/"):
                    if _sandbox_netns(inst, os.path.basename(target)):
                        view.netns.add(os.path.basename(target))
                elif (
                    target.startswith(d.run_dir)
                    or target.startswith(d.state_dir)
                    or f"/{inst}/" in target + "/"
                ):
                    view.mounts.append(target)
        view._read_nft(pool)
        view._read_db(d.state_dir)
        return view

    def _read_nft(self, pool: str | None) -> None:
        texts = []
        net = ipaddress.ip_network(pool) if pool else None
        for family in ("inet", "bridge"):
            res = subprocess.run(
                ["nft", "-j", "list", "table", family, self.instance],
                capture_output=True,
                text=True,
            )
            if res.returncode != 0:
                continue
            texts.append(
                subprocess.run(
                    ["nft", "list", "table", family, self.instance],
                    capture_output=True,
                    text=True,
                ).stdout
            )
            for value in _strings(json.loads(res.stdout)):
                if value[: len(self.instance) + 1] in (self.instance + "v", self.instance + "m"):
                    self.nft_links.add(value)
                elif net is not None:
                    try:
                        addr = ipaddress.ip_address(value)
                    except ValueError:
                        continue
                    if addr in net and int(addr) & 0xFF not in (0, 1, 255):
                        self.nft_addresses.add(value)
        self.nft_text = "\n".join(texts)

    def _read_db(self, state_dir: str) -> None:
        path = os.path.join(state_dir, "state.db")
        if not os.path.exists(path):
            return
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            for sid, state, kind, pid, user in db.execute(
                "SELECT id, state, kind, pid, user FROM sandboxes"
            ):
                self.sandboxes[sid] = Row(state, kind, pid, user)
            self.kernels = dict(db.execute("SELECT id, sandbox FROM kernels"))
            for sid, mode, netns, link, address in db.execute(
                "SELECT sandbox, mode, netns, link, address FROM net_attachments"
            ):
                self.attachments[sid] = Attachment(mode, netns, link, address)
            self.ports = {r[0] for r in db.execute("SELECT sandbox FROM net_ports")}
            self.networks = {r[0] for r in db.execute("SELECT id FROM net_networks")}
        finally:
            db.close()

    @property
    def running(self) -> set[str]:
        return {sid for sid, row in self.sandboxes.items() if row.state == "running"}

    def problems(self) -> list[str]:
        """Every disagreement between the host and the records (empty: consistent)."""
        out: list[str] = []
        running = self.running
        for sid, row in self.sandboxes.items():
            if row.state == "created":
                out.append(f"half-made record {sid}")
            if row.state != "running":
                continue
            if row.pid is None or not _is_bwrap(row.pid):
                out.append(f"record {sid} is running but its process {row.pid} is not")
            elif self.procs.get(row.pid) != sid:
                out.append(f"process {row.pid} of {sid} is not in its cgroup")
            if sid not in self.cgroups:
                out.append(f"record {sid} is running without a cgroup")
            if sid not in self.rundirs:
                out.append(f"record {sid} is running without a run dir")
            if row.kind == "kernel" and sid not in self.kernels.values():
                out.append(f"kernel sandbox {sid} has no kernel record")
        out += [f"orphan cgroup {s}" for s in sorted(self.cgroups - running)]
        out += [f"orphan run dir {s}" for s in sorted(self.rundirs - running)]
        out += [
            f"orphan process {p} (cgroup {s})" for p, s in self.procs.items() if s not in running
        ]
        out += [f"orphan log {s}" for s in sorted(self.logs - set(self.sandboxes))]
        out += [f"mount left: {m}" for m in self.mounts]
        for kid, sid in self.kernels.items():
            if sid not in running:
                out.append(f"kernel record {kid} without a running sandbox ({sid})")
        out += [f"attachment of {s} not running" for s in sorted(set(self.attachments) - running)]
        out += [f"port of {s} not running" for s in sorted(self.ports - running)]
        bridged = [a for a in self.attachments.values() if a.mode == "bridge"]
        want_netns = {a.netns for a in self.attachments.values() if a.netns}
        want_links = {a.link for a in self.attachments.values() if a.link}
        out += [f"orphan netns {n}" for n in sorted(self.netns - want_netns)]
        out += [f"missing netns {n}" for n in sorted(want_netns - self.netns)]
        out += [f"orphan link {n}" for n in sorted(self.veths - want_links)]
        out += [f"missing link {n}" for n in sorted(want_links - self.veths)]
        nft_links = {a.link for a in bridged if a.link}
        out += [f"orphan nft rule for link {n}" for n in sorted(self.nft_links - nft_links)]
        out += [f"no nft rule for link {n}" for n in sorted(nft_links - self.nft_links)]
        addresses = {a.address for a in bridged if a.address}
        out += [f"orphan nft rule for {a}" for a in sorted(self.nft_addresses - addresses)]
        want_bridges = {f"{self.instance}br-{n}" for n in self.networks}
        out += [f"orphan bridge {b}" for b in sorted(self.bridges - want_bridges)]
        return out


def settle(d: Daemon, pool: str | None = None, timeout: float = 60.0) -> HostView:
    """Poll until the host agrees with the records (or time out); the last view either way."""
    deadline = time.monotonic() + timeout
    while True:
        view = HostView.take(d, pool)
        if not view.problems() or time.monotonic() > deadline:
            return view
        time.sleep(0.2)


def assert_consistent(d: Daemon, pool: str | None = None, timeout: float = 60.0) -> HostView:
    view = settle(d, pool, timeout)
    assert view.problems() == [], view.problems()
    return view


# -- the daemon process ------------------------------------------------------------------------


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise KeyError("VmRSS")


def steady_fd_count(pid: int, timeout: float = 20.0) -> int:
    """The fd count once it stops moving (closed sockets and ZMQ's reaper take a moment)."""
    deadline = time.monotonic() + timeout
    last = fd_count(pid)
    same = 0
    while time.monotonic() < deadline and same < 5:
        time.sleep(0.2)
        now = fd_count(pid)
        same = same + 1 if now == last else 0
        last = now
    return last


def fds_of(pid: int) -> list[str]:
    """What the daemon's fds point at (for a failure message)."""
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out


# -- internals ---------------------------------------------------------------------------------


def _sandbox_netns(instance: str, name: str) -> bool:
    """``<instance>-<sandbox id>`` (not a test's or a benchmark's own ``<instance>-ns``)."""
    return re.fullmatch(rf"{re.escape(instance)}-[0-9a-f]{{16}}", name) is not None


def _subdirs(path: str) -> list[str]:
    try:
        return [e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _procs_in(instance: str) -> dict[int, str]:
    """Processes in a sandbox cgroup of ``instance`` (any hierarchy), by pid."""
    found: dict[int, str] = {}
    marker = f"/{instance}/"
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cgroup") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue
        for line in lines:
            path = line.split(":", 2)[-1] + "/"
            if marker in path:
                parts = path.split(marker, 1)[1].split("/")
                if len(parts) >= 2 and parts[1]:
                    found[int(name)] = parts[1]
                    break
    return found


def _is_bwrap(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return os.path.basename(fh.read().split(b"\0")[0]) == b"bwrap"
    except OSError:
        return False


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return []
