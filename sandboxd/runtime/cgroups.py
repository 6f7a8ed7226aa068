"""Our own cgroup driver: one interface, a v1 and a v2 backend, chosen by ``probe``.

Layout on the host: ``<mount>/<root>/<user>/<sandbox>`` in every hierarchy used. The user level
carries the aggregate quota of all a user's sandboxes; the sandbox level the per-kernel limits,
and it is the only level that ever holds processes (cgroup v2's no-internal-process rule).

What we write is rendered by pure functions (``v2_limit_files``, ``v1_limit_files``) so the
formats can be unit-tested without root; the drivers only decide where and in which order.
Formats follow the kernel's Documentation/admin-guide/cgroup-v2.rst and cgroup-v1/*.rst.

Delegation (cgroup v2 under systemd): the daemon runs in a unit with ``Delegate=yes``, but its
sandboxes live in a second delegated cgroup, the transient scope ``<root>-sandboxes.scope`` in the
daemon's slice, which ``probe`` makes at the first start (``systemd-run --scope -p Delegate=yes``
around a ``sleep infinity`` holder) and finds again at every later start. The scope outlives the
daemon: a restart of the daemon's unit never meets cgroups with controllers enabled in its own
cgroup (systemd 252 would fail to attach the new main process there, EBUSY: the
no-internal-processes rule), and ``systemctl stop`` of the daemon never touches a sandbox. Inside
the scope the holder sits in the ``holder`` leaf, our controllers are enabled in the scope's
``cgroup.subtree_control`` and the layout is ``<scope>/<root>/<user>/<sandbox>``; nothing is
written outside the scope. ``sandboxd cleanup`` kills the holder last, and systemd then removes
the empty scope. Outside systemd the layout is rooted at the mount, as before.

Every OSError from cgroupfs is mapped to ``CgroupError`` here (``raise ... from exc``); a limit
that cannot be expressed is an ``InvalidRequest``. Stats never raise for a missing file: a
kernel without e.g. ``memory.peak`` reports 0 (or a fallback) instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import re
import signal
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sandboxd.errors import CgroupError, InvalidRequest
from sandboxd.spec import DeviceRate, Limits

__all__ = [
    "CPU_PERIOD_US",
    "CgroupDriver",
    "CgroupStats",
    "CgroupV1",
    "CgroupV2",
    "HOLDER",
    "delegated_ancestor",
    "find_scope",
    "find_v1_mounts",
    "own_cgroup",
    "probe",
    "read_cgroup_mounts",
    "scope_name",
    "v1_limit_files",
    "v2_limit_files",
]

CPU_PERIOD_US = 100_000
"""CFS period (µs) for every quota we write: the kernel default, as runc and crun use."""

MIN_CPU_QUOTA_US = 1_000
"""The kernel refuses a CFS quota below 1 ms (EINVAL); we refuse it earlier, with a reason."""

HOLDER = "holder"
"""The leaf of the sandboxes' scope that holds its keep-alive process (no-internal-processes)."""

SCOPE_SUFFIX = "-sandboxes.scope"
"""``<root>-sandboxes.scope``: the delegated transient scope the sandboxes of ``<root>`` live in."""

_DELEGATE_XATTRS = ("trusted.delegate", "user.delegate")
_PSI = ("cpu", "memory", "io")
_MEMORY_EVENTS = ("high", "max", "oom", "oom_kill")
log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
_DEVICE_RE = re.compile(r"[0-9]{1,10}:[0-9]{1,10}")
_POLL = 0.01
_V1_UNLIMITED_MIN = 1 << 60  # v1 reports "no limit" as LONG_MAX rounded down to a page
_V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "blkio", "freezer")
_V2_CONTROLLERS = ("cpu", "memory", "pids", "io")
_BLKIO_FILES = {
    "io_read_bps": "blkio.throttle.read_bps_device",
    "io_write_bps": "blkio.throttle.write_bps_device",
    "io_read_iops": "blkio.throttle.read_iops_device",
    "io_write_iops": "blkio.throttle.write_iops_device",
}
_IO_KEYS = {
    "io_read_bps": "rbps",
    "io_write_bps": "wbps",
    "io_read_iops": "riops",
    "io_write_iops": "wiops",
}
_IO_RESET = "rbps=max wbps=max riops=max wiops=max"

# Values that mean "no limit": writing them into a hierarchy that lacks the controller is a
# no-op we may skip; anything else there is a limit we cannot enforce, hence an error.
_V2_DEFAULTS = {
    "cpu.max": f"max {CPU_PERIOD_US}",
    "memory.max": "max",
    "memory.swap.max": "max",
    "memory.high": "max",
    "cpu.weight": "100",
    "pids.max": "max",
}
_V1_DEFAULTS = {
    "cpu.cfs_period_us": str(CPU_PERIOD_US),
    "cpu.cfs_quota_us": "-1",
    "cpu.shares": "1024",
    "memory.limit_in_bytes": "-1",
    "memory.memsw.limit_in_bytes": "-1",
    "memory.oom_control": "0",
    "pids.max": "max",
}


@dataclass(frozen=True)
class CgroupStats:
    """One sample of a sandbox's usage, the same fields on v1 and v2 (metrics read this)."""

    cpu_usage_seconds: float
    cpu_user_seconds: float
    cpu_system_seconds: float
    cpu_periods: int
    cpu_throttled_periods: int
    cpu_throttled_seconds: float
    memory_usage: int
    memory_peak: int
    memory_working_set: int  # usage - inactive_file, as cAdvisor/kubelet compute it
    memory_rss: int
    memory_cache: int
    memory_swap: int
    memory_limit: int | None
    oom_kills: int
    pids_current: int
    pids_limit: int | None
    io_read_bytes: int
    io_write_bytes: int
    io_read_ops: int
    io_write_ops: int
    # cgroup v2 only (None on v1): PSI totals, cAdvisor's "waiting" = some, "stalled" = full
    pressure_cpu_waiting_seconds: float | None = None
    pressure_cpu_stalled_seconds: float | None = None
    pressure_memory_waiting_seconds: float | None = None
    pressure_memory_stalled_seconds: float | None = None
    pressure_io_waiting_seconds: float | None = None
    pressure_io_stalled_seconds: float | None = None
    # memory.events: times over memory.high, at memory.max, OOM, processes OOM-killed
    memory_events_high: int | None = None
    memory_events_max: int | None = None
    memory_events_oom: int | None = None
    memory_events_oom_kill: int | None = None
    memory_high: int | None = None


# --------------------------------------------------------------------------- pure rendering


def check_name(name: str, what: str = "name") -> str:
    """Refuse any name that could leave ``<root>`` (``..``, ``/``) or clash with cgroupfs files."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"invalid cgroup {what} {name!r}: must match [a-z0-9][a-z0-9_.-]{{0,62}}"
        )
    return name


def check_limits(limits: Limits) -> None:
    """Refuse limits the kernel would refuse or misread, before anything is made."""
    if limits.cpus is not None and (
        not math.isfinite(limits.cpus) or _cpu_quota(limits.cpus) < MIN_CPU_QUOTA_US
    ):
        raise InvalidRequest(f"cpus must be at least 0.01, got {limits.cpus!r}")
    if limits.memory is not None and limits.memory < 1:
        raise InvalidRequest(f"memory must be a positive byte count, got {limits.memory!r}")
    if limits.swap < 0:
        raise InvalidRequest(f"swap must be >= 0 bytes, got {limits.swap!r}")
    if limits.pids is not None and limits.pids < 1:
        raise InvalidRequest(f"pids must be >= 1, got {limits.pids!r}")
    if limits.memory_high is not None and limits.memory_high < 1:
        raise InvalidRequest(
            f"memory_high must be a positive byte count, got {limits.memory_high!r}"
        )
    if limits.cpu_weight is not None and not 1 <= limits.cpu_weight <= 10000:
        raise InvalidRequest(f"cpu_weight must be 1..10000, got {limits.cpu_weight!r}")
    for field in _IO_KEYS:
        for rule in getattr(limits, field):
            _check_rate(field, rule)


def _check_rate(field: str, rule: DeviceRate) -> None:
    if not _DEVICE_RE.fullmatch(rule.device):
        raise InvalidRequest(f"{field}: device must be MAJ:MIN, got {rule.device!r}")
    if rule.rate < 1:
        raise InvalidRequest(f"{field}: rate for {rule.device} must be >= 1, got {rule.rate!r}")


def _cpu_quota(cpus: float) -> int:
    return round(cpus * CPU_PERIOD_US)


def _io_rules(limits: Limits) -> dict[str, dict[str, int]]:
    """Per device, the io keys asked for (the last rule wins if a device repeats)."""
    rules: dict[str, dict[str, int]] = {}
    for field, key in _IO_KEYS.items():
        for rule in getattr(limits, field):
            rules.setdefault(rule.device, {})[key] = rule.rate
    return rules


def v2_limit_files(limits: Limits) -> dict[str, str]:
    """Render the cgroup v2 limit files; unlimited values are rendered too so ``update`` resets.

    ``memory.swap.max`` is swap beyond memory (v2 accounts swap separately); without a memory
    limit swap is not limited either, as on v1 where memsw needs a memory limit. ``io.max`` is
    present only when a device rule is asked, one line per device with all four keys.
    ``memory.high`` and ``cpu.weight`` are rendered unset as "max" and "100" (a live ``PATCH``
    may turn them off again).
    """
    check_limits(limits)
    quota = "max" if limits.cpus is None else str(_cpu_quota(limits.cpus))
    files = {
        "cpu.max": f"{quota} {CPU_PERIOD_US}",
        "memory.max": "max" if limits.memory is None else str(limits.memory),
        "memory.swap.max": "max" if limits.memory is None else str(limits.swap),
        "pids.max": "max" if limits.pids is None else str(limits.pids),
        "memory.high": "max" if limits.memory_high is None else str(limits.memory_high),
        "cpu.weight": "100" if limits.cpu_weight is None else str(limits.cpu_weight),
    }
    rules = _io_rules(limits)
    if rules:
        files["io.max"] = "\n".join(
            f"{dev} " + " ".join(f"{k}={keys.get(k, 'max')}" for k in _IO_KEYS.values())
            for dev, keys in sorted(rules.items())
        )
    return files


def v1_limit_files(limits: Limits) -> dict[str, dict[str, str]]:
    """Render the cgroup v1 limit files per controller, in the order they may be written.

    v1 spells "unlimited" -1, except ``pids.max`` which takes ``max`` (the kernel rejects -1).
    ``memory.memsw.limit_in_bytes`` is memory + swap. blkio files hold one ``MAJ:MIN RATE``
    line per device and appear only when a device rule is asked. ``cpu_weight`` becomes
    ``cpu.shares`` (100 ↔ 1024, the two defaults); ``memory_high`` has no v1 counterpart.
    """
    check_limits(limits)
    if limits.memory_high is not None:
        raise CgroupError(
            "memory_high needs cgroup v2 (memory.high); this host runs the cgroup v1 memory "
            "controller: unset memory_high in the profile, or boot the host with "
            "systemd.unified_cgroup_hierarchy=1"
        )
    quota = "-1" if limits.cpus is None else str(_cpu_quota(limits.cpus))
    memory = "-1" if limits.memory is None else str(limits.memory)
    memsw = "-1" if limits.memory is None else str(limits.memory + limits.swap)
    files: dict[str, dict[str, str]] = {
        "cpu": {"cpu.cfs_period_us": str(CPU_PERIOD_US), "cpu.cfs_quota_us": quota},
        "memory": {
            "memory.limit_in_bytes": memory,
            "memory.memsw.limit_in_bytes": memsw,
            "memory.oom_control": "0",  # OOM killer enabled: a hog dies instead of hanging
        },
        "pids": {"pids.max": "max" if limits.pids is None else str(limits.pids)},
        "blkio": {},
    }
    if limits.cpu_weight is not None:
        files["cpu"]["cpu.shares"] = str(max(2, limits.cpu_weight * 1024 // 100))
    for field, name in _BLKIO_FILES.items():
        rates = {rule.device: rule.rate for rule in getattr(limits, field)}
        if rates:
            files["blkio"][name] = "\n".join(f"{d} {r}" for d, r in sorted(rates.items()))
    return files


def _aggregate(limits: Limits) -> Limits:
    """The user level carries only memory, cpus and pids; io is per sandbox. Swap is not part
    of the user quota: each sandbox's own swap limit bounds it (a user-level ``swap=0`` would
    forbid every sandbox of the user to swap, whatever its profile allows), so the drivers
    write "no swap limit" at the user level."""
    return Limits(cpus=limits.cpus, memory=limits.memory, pids=limits.pids)


# --------------------------------------------------------------------------- file helpers


def _write(path: str, value: str) -> None:
    """Write one value; cgroupfs parses each write() on its own, so one line per call."""
    try:
        with open(path, "w") as fh:
            fh.write(value)
    except OSError as exc:
        raise CgroupError(f"cgroupfs refused writing {value!r} to {path}: {exc.strerror}") from exc


def _write_lines(path: str, text: str) -> None:
    for line in text.splitlines():
        _write(path, line)


def _read(path: str) -> str | None:
    """Read a file, None if it (or its cgroup) is missing: stats must never raise for that."""
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def _read_int(path: str, default: int = 0) -> int:
    text = _read(path)
    try:
        return int(text.strip()) if text is not None else default
    except ValueError:
        return default


def _read_keyed(path: str) -> dict[str, int]:
    """Parse a flat keyed file (``key value`` lines: cpu.stat, memory.stat, memory.events)."""
    out: dict[str, int] = {}
    for line in (_read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _read_procs(path: str) -> list[int]:
    return [int(x) for x in (_read(path) or "").split()]


def _mkdir(path: str) -> bool:
    """Create one cgroup directory; True if this call made it (so a failure undoes only that)."""
    try:
        os.mkdir(path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from exc


def _rmdir(path: str, timeout: float = 2.0) -> None:
    """Remove a cgroup; missing is fine, EBUSY is retried while killed tasks finish exiting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise CgroupError(f"cannot remove cgroup {path}: {exc.strerror}") from exc
            time.sleep(_POLL)


def _subdirs(path: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir() and _NAME_RE.fullmatch(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _sigkill_all(pids: Iterable[int], members: Callable[[], Iterable[int]]) -> None:
    """SIGKILL ``pids`` read from a cgroup, never a stranger that took one of those pids after
    the read: each is pinned with a pidfd first, then killed only if ``members()`` (read again
    now) still lists it, so the pidfd is known to be the cgroup's process."""
    pinned: dict[int, int] = {}
    try:
        for pid in pids:
            try:
                pinned[pid] = os.pidfd_open(pid)
            except ProcessLookupError:  # it exited between the read and now
                pass
        still = set(members()) if pinned else set()
        for pid, fd in pinned.items():
            if pid in still:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(fd, signal.SIGKILL)
    finally:
        for fd in pinned.values():
            os.close(fd)


def _unit_max(text: str | None) -> int | None:
    """``max`` (v2) or a v1 value near LONG_MAX mean no limit."""
    if text is None or text.strip() in ("", "max"):
        return None
    value = int(text.strip())
    return None if value >= _V1_UNLIMITED_MIN else value


@dataclass(frozen=True)
class _Mount:
    mountpoint: str
    fstype: str
    super_options: tuple[str, ...]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def read_cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[_Mount]:
    """The cgroup and cgroup2 mounts, read from mountinfo rather than guessed from paths."""
    mounts = []
    with open(mountinfo) as fh:
        for line in fh:
            pre, _, post = line.partition(" - ")
            fields, tail = pre.split(), post.split()
            if len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
                continue
            mounts.append(_Mount(_unescape(fields[4]), tail[0], tuple(tail[2].split(","))))
    return mounts


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def find_v1_mounts(
    mount: str, mountinfo: str = "/proc/self/mountinfo"
) -> tuple[dict[str, str], str | None]:
    """Controller → mount point (combined mounts such as ``cpu,cpuacct`` map both names to one
    place), preferring mounts under ``mount``; plus a cgroup2 mount under it (hybrid hosts)."""
    controllers: dict[str, str] = {}
    unified = None
    mounts = read_cgroup_mounts(mountinfo)
    preferred = [m for m in mounts if _under(m.mountpoint, mount)] + mounts
    for m in preferred:
        if m.fstype == "cgroup2":
            if unified is None and m.mountpoint != mount and _under(m.mountpoint, mount):
                unified = m.mountpoint
            continue
        for controller in _V1_CONTROLLERS:
            if controller in m.super_options:
                controllers.setdefault(controller, m.mountpoint)
    return controllers, unified


# --------------------------------------------------------------------------- the interface


class CgroupDriver(ABC):
    """``<mount>/<root>/<user>/<sandbox>``: create, limit, join, watch, kill, remove.

    Called by ``runtime/sandbox.py`` (create/update/stats/kill/remove), by the launcher (which
    writes its pid into every ``join_paths`` file while still root), and by crash cleanup and
    ``sandboxd cleanup`` (``list``/``remove_all``).
    """

    version: int

    def __init__(self, root: str, mount: str = "/sys/fs/cgroup") -> None:
        self.root = check_name(root, "root")
        self.mount = mount.rstrip("/") or "/"

    # -- paths: every driver has one or more hierarchy mounts, the same relative layout

    @abstractmethod
    def _hierarchies(self) -> list[str]:
        """Mount points of all hierarchies this driver creates directories in."""

    def _rel(self, user: str | None = None, sandbox: str | None = None) -> str:
        parts = [self.root]
        if user is not None:
            parts.append(check_name(user, "user"))
        if sandbox is not None:
            parts.append(check_name(sandbox, "sandbox"))
        return "/".join(parts)

    def _dirs(self, user: str | None = None, sandbox: str | None = None) -> list[str]:
        rel = self._rel(user, sandbox)
        return [os.path.join(m, rel) for m in self._hierarchies()]

    # -- lifecycle

    def ensure_user(self, user: str, limits: Limits) -> None:
        """Create the user level (idempotent) and write its aggregate memory/cpus/pids limits."""
        agg = _aggregate(limits)
        check_limits(agg)
        made = self._make(self._dirs(), self._dirs(user))
        try:
            self._prepare_parent(user)
            self._apply(user, None, agg)
        except BaseException:
            self._undo(made)
            raise

    def create(self, user: str, sandbox: str, limits: Limits) -> None:
        """Create the sandbox level and write its limits; on failure remove what was made."""
        check_limits(limits)
        if not all(os.path.isdir(d) for d in self._dirs(user)):
            raise CgroupError(f"user cgroup {self._rel(user)} missing: call ensure_user first")
        made = self._make([], self._dirs(user, sandbox))
        try:
            self._apply(user, sandbox, limits)
        except BaseException:
            self._undo(made)
            raise

    def update(self, user: str, sandbox: str, limits: Limits) -> None:
        """Change the limits of a running sandbox in place (also resets dropped io rules)."""
        check_limits(limits)
        self._apply(user, sandbox, limits)

    def join_paths(self, user: str, sandbox: str) -> list[str]:
        """The ``cgroup.procs`` files a launcher child writes "0" into to join every hierarchy."""
        return [os.path.join(d, "cgroup.procs") for d in self._dirs(user, sandbox)]

    def pids(self, user: str, sandbox: str) -> list[int]:
        """Processes in the sandbox (union over hierarchies, in case a join was partial)."""
        found: set[int] = set()
        for path in self.join_paths(user, sandbox):
            found.update(_read_procs(path))
        return sorted(found)

    def remove(self, user: str, sandbox: str) -> None:
        """Kill everything inside, then rmdir in every hierarchy; a missing cgroup is fine."""
        if not any(os.path.isdir(d) for d in self._dirs(user, sandbox)):
            return
        self.kill(user, sandbox)
        for path in self._dirs(user, sandbox):
            _rmdir(path)

    def remove_user(self, user: str) -> None:
        """Remove the user level if it holds no sandbox any more (else leave it)."""
        dirs = self._dirs(user)
        if any(_subdirs(d) for d in dirs):
            return
        for path in dirs:
            _rmdir(path)

    def sandbox_groups(self) -> list[tuple[str, str]]:
        """(user, sandbox) pairs present in any hierarchy, for crash cleanup."""
        pairs: set[tuple[str, str]] = set()
        for root in self._dirs():
            for user in _subdirs(root):
                pairs.update((user, sb) for sb in _subdirs(os.path.join(root, user)))
        return sorted(pairs)

    def remove_all(self) -> None:
        """Everything under ``<root>`` (for ``sandboxd cleanup`` and tests)."""
        for user, sandbox in self.sandbox_groups():
            self.remove(user, sandbox)
        users = {u for root in self._dirs() for u in _subdirs(root)}
        for user in sorted(users):
            self.remove_user(user)
        for path in self._dirs():
            _rmdir(path)

    def _make(self, parents: list[str], leaves: list[str]) -> list[str]:
        made: list[str] = []
        try:
            for path in [*parents, *leaves]:
                if _mkdir(path):
                    made.append(path)
        except CgroupError:
            self._undo(made)
            raise
        return made

    @staticmethod
    def _undo(made: list[str]) -> None:
        for path in reversed(made):
            try:
                _rmdir(path, timeout=0.5)
            except CgroupError:
                pass  # best effort while unwinding; the original error is what matters

    def _wait_empty(self, user: str, sandbox: str, deadline: float) -> bool:
        while self.pids(user, sandbox):
            if time.monotonic() > deadline:
                return False
            time.sleep(_POLL)
        return True

    def _try_freeze(self, user: str, sandbox: str, deadline: float) -> None:
        """Freeze before a kill round; a task stuck in D state must not stop the kill itself."""
        try:
            self.freeze(user, sandbox, timeout=max(0.1, min(1.0, deadline - time.monotonic())))
        except CgroupError:
            pass

    def _prepare_parent(self, user: str) -> None:
        """Hook: v2 enables controllers down to the user level. Nothing to do on v1."""

    @abstractmethod
    def _apply(self, user: str, sandbox: str | None, limits: Limits) -> None:
        """Write limits at the user level (sandbox None) or the sandbox level."""

    @abstractmethod
    def stats(self, user: str, sandbox: str) -> CgroupStats:
        """One usage sample for metrics and ``sandboxctl stats``; missing files read as 0."""

    @abstractmethod
    def oom_kills(self, user: str, sandbox: str) -> int:
        """OOM kills inside the sandbox so far, to report exit 137 as "out of memory"."""

    @abstractmethod
    def kill(self, user: str, sandbox: str, timeout: float = 5.0) -> None:
        """SIGKILL every process and wait until empty; CgroupError if any survive ``timeout``."""

    @abstractmethod
    def freeze(self, user: str, sandbox: str, timeout: float = 5.0) -> None:
        """Stop every process (pause a sandbox); returns once the kernel reports it frozen."""

    @abstractmethod
    def thaw(self, user: str, sandbox: str) -> None:
        """Undo ``freeze``."""

    def user_pressure(self, user: str) -> dict[str, float] | None:
        """PSI totals and memory.events of a user's level (the ``pressure_*`` and
        ``memory_events_*`` keys of ``CgroupStats``); None where the kernel has none (v1)."""
        return None


# --------------------------------------------------------------------------- cgroup v2


class CgroupV2(CgroupDriver):
    """Unified hierarchy, rooted at ``<mount>/<parent>``: ``parent`` is the delegated cgroup
    of a systemd unit, or "" (the mount itself) where nothing delegates. Also works on a
    controller-less cgroup2 mount (hybrid hosts' ``/sys/fs/cgroup/unified``): membership,
    freeze, kill and ``cpu.stat`` need no controller, and any real limit asked there fails
    loudly naming the missing controller and the fix."""

    version = 2

    def __init__(self, root: str, mount: str = "/sys/fs/cgroup", parent: str = "") -> None:
        super().__init__(root, mount)
        self.parent = parent.strip("/")
        self.base = os.path.join(self.mount, self.parent) if self.parent else self.mount

    def _hierarchies(self) -> list[str]:
        return [self.base]

    def _dir(self, user: str | None = None, sandbox: str | None = None) -> str:
        return os.path.join(self.base, self._rel(user, sandbox))

    def claim(self, timeout: float = 5.0) -> None:
        """Take the delegated scope: move every process of ``base`` (the holder) into the
        ``holder`` leaf, then enable our controllers in ``base``'s ``cgroup.subtree_control``
        (the kernel refuses that while ``base`` holds processes, so a process that arrives
        meanwhile is moved too, until the write goes through)."""
        if not self.parent:
            raise CgroupError("claim() is for a delegated subtree; this driver has none")
        leaf = os.path.join(self.base, HOLDER)
        _mkdir(leaf)
        deadline = time.monotonic() + timeout
        while True:
            for pid in _read_procs(os.path.join(self.base, "cgroup.procs")):
                try:
                    with open(os.path.join(leaf, "cgroup.procs"), "w") as fh:
                        fh.write(str(pid))
                except ProcessLookupError:
                    pass  # exited meanwhile
                except OSError as exc:
                    raise CgroupError(
                        f"cannot move process {pid} out of the delegated {self.base} into "
                        f"{leaf}: {exc.strerror}"
                    ) from exc
            try:
                self._enable(self.base)
                break
            except CgroupError:
                if time.monotonic() > deadline or not _read_procs(
                    os.path.join(self.base, "cgroup.procs")
                ):
                    raise
        missing = [c for c in _V2_CONTROLLERS if c not in self._controllers(self.base)]
        if missing:
            log.warning(
                "cgroup v2: %s; limits that need %s will be refused",
                self.missing_reason(missing[0]),
                ", ".join(missing),
            )

    def release(self, timeout: float = 10.0) -> None:
        """After ``remove_all``: end the scope's holder so systemd stops the scope and removes
        its cgroup; waits for that. A no-op for a layout that is not a sandboxes' scope."""
        if not self.parent.endswith(SCOPE_SUFFIX) or not os.path.isdir(self.base):
            return
        leaf = os.path.join(self.base, HOLDER)
        if os.path.exists(os.path.join(leaf, "cgroup.kill")):
            _write(os.path.join(leaf, "cgroup.kill"), "1")
        else:
            procs = os.path.join(leaf, "cgroup.procs")
            _sigkill_all(_read_procs(procs), lambda: _read_procs(procs))
        deadline = time.monotonic() + timeout
        while os.path.isdir(self.base):
            if _read_keyed(os.path.join(self.base, "cgroup.events")).get("populated") == 0:
                try:
                    _rmdir(leaf, timeout=0.5)  # ours; systemd removes the scope's own cgroup
                except CgroupError:
                    pass
            if time.monotonic() > deadline:
                raise CgroupError(
                    f"systemd did not remove the scope {self.base} within {timeout:.0f}s after "
                    f"its holder ended (see `systemctl status {os.path.basename(self.base)}`)"
                )
            time.sleep(0.05)

    @staticmethod
    def _controllers(path: str) -> set[str]:
        return set((_read(os.path.join(path, "cgroup.controllers")) or "").split())

    @staticmethod
    def _enable(path: str) -> None:
        """Enable every controller of ours that ``path`` has in its subtree_control."""
        available = CgroupV2._controllers(path)
        enabled = set((_read(os.path.join(path, "cgroup.subtree_control")) or "").split())
        wanted = [c for c in _V2_CONTROLLERS if c in available and c not in enabled]
        if wanted:
            _write(os.path.join(path, "cgroup.subtree_control"), " ".join(f"+{c}" for c in wanted))

    def missing_reason(self, controller: str) -> str:
        """Why ``controller`` is not available to us, and the fix (for error messages)."""
        if controller not in self._controllers(self.mount) and self.mount == "/sys/fs/cgroup":
            return (
                f"the kernel offers no {controller} controller on cgroup v2 ({self.mount}/"
                f"cgroup.controllers); boot with systemd.unified_cgroup_hierarchy=1 "
                f"cgroup_no_v1=all and without cgroup_disable={controller}"
            )
        if controller not in self._controllers(self.mount):
            return f"the cgroup2 mount {self.mount} has no {controller} controller (hybrid host?)"
        if self.parent and controller not in self._controllers(self.base):
            return (
                f"the {controller} controller is not delegated to {self.base}: set Delegate=yes "
                f"(or a list naming {controller}) in the [Service] section of sandboxd.service "
                f"and restart it"
            )
        return (
            f"the {controller} controller is not enabled for our cgroups under {self.base} "
            f"(its parent's cgroup.subtree_control lacks +{controller})"
        )

    def _prepare_parent(self, user: str) -> None:
        """Enable our controllers in each parent's subtree_control, down to the user level.
        With a delegated parent that is ``base`` and below, never above it."""
        for parent in (self.base, self._dir(), self._dir(user)):
            self._enable(parent)

    def _apply(self, user: str, sandbox: str | None, limits: Limits) -> None:
        path = self._dir(user, sandbox)
        available = self._controllers(path)
        files = v2_limit_files(limits)
        if sandbox is None:
            files["memory.swap.max"] = "max"  # swap is bounded per sandbox (see _aggregate)
        for name, value in files.items():
            if name == "io.max":
                continue
            self._write_limit(path, available, name, value, limits)
        self._write_io(path, available, files.get("io.max", ""))

    def _write_limit(
        self, path: str, available: set[str], name: str, value: str, limits: Limits
    ) -> None:
        controller = name.split(".", 1)[0]
        target = os.path.join(path, name)
        if controller not in available:
            if value != _V2_DEFAULTS[name]:
                raise CgroupError(
                    f"cannot set {name}={value!r}: the {controller} controller is not "
                    f"available in {path} (cgroup.controllers: {' '.join(sorted(available))}): "
                    f"{self.missing_reason(controller)}"
                )
            return
        if name == "memory.swap.max" and not os.path.exists(target):
            if limits.swap > 0:
                raise CgroupError(
                    f"cannot allow {limits.swap} bytes of swap: swap accounting is off "
                    f"({target} missing)"
                )
            return
        _write(target, value)

    def _write_io(self, path: str, available: set[str], text: str) -> None:
        target = os.path.join(path, "io.max")
        if "io" not in available:
            if text:
                raise CgroupError(
                    f"cannot set io.max: the io controller is not available in {path}: "
                    f"{self.missing_reason('io')}"
                )
            return
        wanted = {line.split()[0] for line in text.splitlines()}
        for line in (_read(target) or "").splitlines():
            device = line.split()[0] if line.split() else ""
            if device and device not in wanted:
                _write(target, f"{device} {_IO_RESET}")
        _write_lines(target, text)

    def stats(self, user: str, sandbox: str) -> CgroupStats:
        path = self._dir(user, sandbox)
        cpu = _read_keyed(os.path.join(path, "cpu.stat"))
        mem = _read_keyed(os.path.join(path, "memory.stat"))
        usage = _read_int(os.path.join(path, "memory.current"))
        io = self._io_stat(path)
        return CgroupStats(
            cpu_usage_seconds=cpu.get("usage_usec", 0) / 1e6,
            cpu_user_seconds=cpu.get("user_usec", 0) / 1e6,
            cpu_system_seconds=cpu.get("system_usec", 0) / 1e6,
            cpu_periods=cpu.get("nr_periods", 0),
            cpu_throttled_periods=cpu.get("nr_throttled", 0),
            cpu_throttled_seconds=cpu.get("throttled_usec", 0) / 1e6,
            memory_usage=usage,
            memory_peak=_read_int(os.path.join(path, "memory.peak"), usage),
            memory_working_set=max(0, usage - mem.get("inactive_file", 0)),
            memory_rss=mem.get("anon", 0),
            memory_cache=mem.get("file", 0),
            memory_swap=_read_int(os.path.join(path, "memory.swap.current")),
            memory_limit=_unit_max(_read(os.path.join(path, "memory.max"))),
            oom_kills=self.oom_kills(user, sandbox),
            pids_current=_read_int(os.path.join(path, "pids.current")),
            pids_limit=_unit_max(_read(os.path.join(path, "pids.max"))),
            io_read_bytes=io.get("rbytes", 0),
            io_write_bytes=io.get("wbytes", 0),
            io_read_ops=io.get("rios", 0),
            io_write_ops=io.get("wios", 0),
            memory_high=_unit_max(_read(os.path.join(path, "memory.high"))),
            **_pressure(path),
        )

    def user_pressure(self, user: str) -> dict[str, float] | None:
        path = self._dir(user)
        return _pressure(path) if os.path.isdir(path) else None

    @staticmethod
    def _io_stat(path: str) -> dict[str, int]:
        """Sum io.stat's ``MAJ:MIN key=value ...`` lines over all devices."""
        total: dict[str, int] = {}
        for line in (_read(os.path.join(path, "io.stat")) or "").splitlines():
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                if value.isdigit():
                    total[key] = total.get(key, 0) + int(value)
        return total

    def oom_kills(self, user: str, sandbox: str) -> int:
        events = _read_keyed(os.path.join(self._dir(user, sandbox), "memory.events"))
        return events.get("oom_kill", 0)

    def freeze(self, user: str, sandbox: str, timeout: float = 5.0) -> None:
        """Freeze and wait until the kernel reports every task frozen (``cgroup.events``)."""
        path = self._dir(user, sandbox)
        _write(os.path.join(path, "cgroup.freeze"), "1")
        deadline = time.monotonic() + timeout
        while _read_keyed(os.path.join(path, "cgroup.events")).get("frozen") != 1:
            if time.monotonic() > deadline:
                raise CgroupError(f"{path} did not freeze within {timeout:.1f}s")
            time.sleep(_POLL)

    def thaw(self, user: str, sandbox: str) -> None:
        _write(os.path.join(self._dir(user, sandbox), "cgroup.freeze"), "0")

    def kill(self, user: str, sandbox: str, timeout: float = 5.0) -> None:
        """SIGKILL every process: ``cgroup.kill`` (5.14+) is atomic against forks; older
        kernels freeze first so nothing forks between reading the list and the kills."""
        path = self._dir(user, sandbox)
        if not os.path.isdir(path):
            return
        deadline = time.monotonic() + timeout
        if os.path.exists(os.path.join(path, "cgroup.kill")):
            _write(os.path.join(path, "cgroup.kill"), "1")
        else:
            self._freeze_kill_loop(user, sandbox, deadline)
        if not self._wait_empty(user, sandbox, deadline):
            raise CgroupError(f"processes left in {path} after {timeout:.1f}s of SIGKILL")

    def _freeze_kill_loop(self, user: str, sandbox: str, deadline: float) -> None:
        while self.pids(user, sandbox) and time.monotonic() < deadline:
            self._try_freeze(user, sandbox, deadline)
            _sigkill_all(self.pids(user, sandbox), lambda: self.pids(user, sandbox))
            self.thaw(user, sandbox)
            time.sleep(_POLL)


# --------------------------------------------------------------------------- cgroup v1


class CgroupV1(CgroupDriver):
    """One hierarchy per controller mount (found in mountinfo, combined mounts deduplicated),
    plus the cgroup2 mount of a hybrid host for membership only."""

    version = 1

    def __init__(
        self, root: str, mount: str = "/sys/fs/cgroup", mountinfo: str = "/proc/self/mountinfo"
    ) -> None:
        super().__init__(root, mount)
        try:
            self._controllers, self._unified = find_v1_mounts(self.mount, mountinfo)
        except OSError as exc:
            raise CgroupError(f"cannot read {mountinfo}: {exc.strerror}") from exc

    def _hierarchies(self) -> list[str]:
        ordered = list(dict.fromkeys(self._controllers[c] for c in sorted(self._controllers)))
        return ordered + ([self._unified] if self._unified else [])

    def join_paths(self, user: str, sandbox: str) -> list[str]:
        """v1 hierarchies are joined through ``tasks``: the launcher child is single-threaded, so
        moving its one thread moves the process, and a thread move does not take the global
        threadgroup rwsem for writing, whose RCU sync cost 8-19 ms per start here. The unified
        hierarchy of a hybrid host (membership only, no controllers) is skipped for the same
        reason: its ``cgroup.procs`` write paid that cost on every start."""
        unified = self._unified + "/" if self._unified else None
        return [
            os.path.join(d, "tasks")
            for d in self._dirs(user, sandbox)
            if unified is None or not d.startswith(unified)
        ]

    def pids(self, user: str, sandbox: str) -> list[int]:
        found: set[int] = set()
        for d in self._dirs(user, sandbox):
            found.update(_read_procs(os.path.join(d, "cgroup.procs")))
        return sorted(found)

    def _cdir(self, controller: str, user: str, sandbox: str | None = None) -> str | None:
        mountpoint = self._controllers.get(controller)
        return os.path.join(mountpoint, self._rel(user, sandbox)) if mountpoint else None

    def _apply(self, user: str, sandbox: str | None, limits: Limits) -> None:
        files = v1_limit_files(limits)
        if sandbox is None and limits.memory is not None:
            files["memory"]["memory.memsw.limit_in_bytes"] = "-1"  # swap is bounded per sandbox
        for controller in ("cpu", "pids"):
            for name, value in files[controller].items():
                self._write_limit(controller, user, sandbox, name, value)
        self._write_memory(user, sandbox, files["memory"], limits)
        self._write_blkio(user, sandbox, files["blkio"])

    def _require(self, controller: str, user: str, sandbox: str | None, what: str) -> str:
        path = self._cdir(controller, user, sandbox)
        if path is None:
            raise CgroupError(
                f"cannot set {what}: the {controller} controller hierarchy is not mounted"
            )
        return path

    def _write_limit(
        self, controller: str, user: str, sandbox: str | None, name: str, value: str
    ) -> None:
        if self._cdir(controller, user, sandbox) is None and value == _V1_DEFAULTS[name]:
            return
        path = self._require(controller, user, sandbox, f"{name}={value}")
        _write(os.path.join(path, name), value)

    def _write_memory(
        self, user: str, sandbox: str | None, files: dict[str, str], limits: Limits
    ) -> None:
        """memory.limit_in_bytes must stay <= memsw: raise memsw first when growing past it."""
        if self._cdir("memory", user, sandbox) is None and limits.memory is None:
            return
        path = self._require("memory", user, sandbox, "memory limit")
        memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
        limit = os.path.join(path, "memory.limit_in_bytes")
        if sandbox is not None:
            _write(os.path.join(path, "memory.oom_control"), files["memory.oom_control"])
        if not os.path.exists(memsw):
            if limits.swap > 0 and limits.memory is not None:
                raise CgroupError(
                    f"cannot allow {limits.swap} bytes of swap: swap accounting is off "
                    f"({memsw} missing; boot with swapaccount=1)"
                )
            _write(limit, files["memory.limit_in_bytes"])
            return
        new = _as_limit(files["memory.limit_in_bytes"])
        order = [limit, memsw] if new <= _read_int(memsw, -1) else [memsw, limit]
        for target in order:
            _write(target, files[os.path.basename(target)])

    def _write_blkio(self, user: str, sandbox: str | None, files: dict[str, str]) -> None:
        """Write throttle rules and zero (= remove) rules for devices no longer listed."""
        if sandbox is None:
            return  # io is a per-sandbox limit
        path = self._cdir("blkio", user, sandbox)
        if path is None:
            if files:
                raise CgroupError("cannot set io limits: the blkio controller is not mounted")
            return
        for name in _BLKIO_FILES.values():
            target = os.path.join(path, name)
            text = files.get(name, "")
            wanted = {line.split()[0] for line in text.splitlines()}
            for line in (_read(target) or "").splitlines():
                if line.split() and line.split()[0] not in wanted:
                    _write(target, f"{line.split()[0]} 0")
            _write_lines(target, text)

    def stats(self, user: str, sandbox: str) -> CgroupStats:
        cpu = self._cdir("cpu", user, sandbox) or ""
        acct = self._cdir("cpuacct", user, sandbox) or ""
        mem = self._cdir("memory", user, sandbox) or ""
        pids = self._cdir("pids", user, sandbox) or ""
        cstat = _read_keyed(os.path.join(cpu, "cpu.stat")) if cpu else {}
        ticks = _read_keyed(os.path.join(acct, "cpuacct.stat")) if acct else {}
        mstat = _read_keyed(os.path.join(mem, "memory.stat")) if mem else {}
        usage = _read_int(os.path.join(mem, "memory.usage_in_bytes")) if mem else 0
        hz = os.sysconf("SC_CLK_TCK")
        io = self._blkio_stat(user, sandbox)
        return CgroupStats(
            cpu_usage_seconds=_read_int(os.path.join(acct, "cpuacct.usage")) / 1e9 if acct else 0.0,
            cpu_user_seconds=ticks.get("user", 0) / hz,
            cpu_system_seconds=ticks.get("system", 0) / hz,
            cpu_periods=cstat.get("nr_periods", 0),
            cpu_throttled_periods=cstat.get("nr_throttled", 0),
            cpu_throttled_seconds=cstat.get("throttled_time", 0) / 1e9,
            memory_usage=usage,
            memory_peak=_read_int(os.path.join(mem, "memory.max_usage_in_bytes")) if mem else 0,
            memory_working_set=max(0, usage - _total(mstat, "inactive_file")),
            memory_rss=_total(mstat, "rss"),
            memory_cache=_total(mstat, "cache"),
            memory_swap=_total(mstat, "swap"),
            memory_limit=_unit_max(_read(os.path.join(mem, "memory.limit_in_bytes")))
            if mem
            else None,
            oom_kills=self.oom_kills(user, sandbox),
            pids_current=_read_int(os.path.join(pids, "pids.current")) if pids else 0,
            pids_limit=_unit_max(_read(os.path.join(pids, "pids.max"))) if pids else None,
            io_read_bytes=io[0],
            io_write_bytes=io[1],
            io_read_ops=io[2],
            io_write_ops=io[3],
        )

    def _blkio_stat(self, user: str, sandbox: str) -> tuple[int, int, int, int]:
        """(read bytes, write bytes, read ops, write ops) from the throttle accounting files."""
        path = self._cdir("blkio", user, sandbox)
        if path is None:
            return (0, 0, 0, 0)
        out: list[int] = []
        for base in ("blkio.throttle.io_service_bytes", "blkio.throttle.io_serviced"):
            text = _read(os.path.join(path, base + "_recursive"))
            if text is None:
                text = _read(os.path.join(path, base)) or ""
            sums = {"Read": 0, "Write": 0}
            for line in text.splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[1] in sums and parts[2].isdigit():
                    sums[parts[1]] += int(parts[2])
            out += [sums["Read"], sums["Write"]]
        return (out[0], out[1], out[2], out[3])

    def oom_kills(self, user: str, sandbox: str) -> int:
        path = self._cdir("memory", user, sandbox)
        return (
            _read_keyed(os.path.join(path, "memory.oom_control")).get("oom_kill", 0) if path else 0
        )

    def _freezer_state(self, user: str, sandbox: str) -> str | None:
        path = self._cdir("freezer", user, sandbox)
        return os.path.join(path, "freezer.state") if path else None

    def freeze(self, user: str, sandbox: str, timeout: float = 5.0) -> None:
        """Write FROZEN and wait for the state to leave FREEZING."""
        state = self._freezer_state(user, sandbox)
        if state is None:
            raise CgroupError("cannot freeze: the freezer controller hierarchy is not mounted")
        _write(state, "FROZEN")
        deadline = time.monotonic() + timeout
        while (_read(state) or "").strip() != "FROZEN":
            if time.monotonic() > deadline:
                raise CgroupError(f"{state} did not reach FROZEN within {timeout:.1f}s")
            time.sleep(_POLL)

    def thaw(self, user: str, sandbox: str) -> None:
        state = self._freezer_state(user, sandbox)
        if state is None:
            raise CgroupError("cannot thaw: the freezer controller hierarchy is not mounted")
        _write(state, "THAWED")

    def kill(self, user: str, sandbox: str, timeout: float = 5.0) -> None:
        """Freeze (so nothing forks past us), SIGKILL all, thaw (v1 frozen tasks only die once
        thawed), and loop until empty. Without a freezer mount: plain kill loop."""
        if not any(os.path.isdir(d) for d in self._dirs(user, sandbox)):
            return
        deadline = time.monotonic() + timeout
        state = self._freezer_state(user, sandbox)
        use_freezer = state is not None and os.path.exists(state)
        while self.pids(user, sandbox) and time.monotonic() < deadline:
            if use_freezer:
                self._try_freeze(user, sandbox, deadline)
            _sigkill_all(self.pids(user, sandbox), lambda: self.pids(user, sandbox))
            if use_freezer:
                self.thaw(user, sandbox)
            self._wait_empty(user, sandbox, min(deadline, time.monotonic() + 0.2))
        if not self._wait_empty(user, sandbox, deadline):
            raise CgroupError(f"processes left in {self._rel(user, sandbox)} after SIGKILL")


def read_psi(path: str) -> dict[str, float]:
    """``some``/``full`` ``total=`` (µs) of one pressure file, in seconds; {} if absent."""
    out: dict[str, float] = {}
    for line in (_read(path) or "").splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            key, _, value = item.partition("=")
            if key == "total" and value.isdigit():
                out[kind] = int(value) / 1e6
    return out


def _pressure(path: str) -> dict[str, Any]:
    """PSI (cAdvisor: waiting = some, stalled = full) and memory.events of a v2 cgroup."""
    out: dict[str, Any] = {}
    for resource in _PSI:
        psi = read_psi(os.path.join(path, f"{resource}.pressure"))
        if psi:
            out[f"pressure_{resource}_waiting_seconds"] = psi.get("some", 0.0)
            out[f"pressure_{resource}_stalled_seconds"] = psi.get("full", 0.0)
    events = _read_keyed(os.path.join(path, "memory.events"))
    if events:
        for key in _MEMORY_EVENTS:
            out[f"memory_events_{key}"] = events.get(key, 0)
    return out


def _as_limit(value: str) -> int:
    number = int(value)
    return (1 << 63) if number < 0 else number


def _total(stat: dict[str, int], key: str) -> int:
    """v1 memory.stat: prefer the hierarchical ``total_*`` counter."""
    return stat.get(f"total_{key}", stat.get(key, 0))


# --------------------------------------------------------------------------- probing


def own_cgroup(pid: int | str = "self") -> str:
    """The cgroup v2 path of a process ("/system.slice/x.service"), from ``/proc/PID/cgroup``."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            for line in fh:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError as exc:
        raise CgroupError(f"cannot read /proc/{pid}/cgroup: {exc.strerror}") from exc
    return "/"


def _is_delegated(path: str) -> bool:
    """systemd marks the cgroup of a ``Delegate=yes`` unit with a ``*.delegate`` xattr."""
    for name in _DELEGATE_XATTRS:
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            continue
    return False


def delegated_ancestor(mount: str, cgroup: str) -> str | None:
    """The nearest cgroup at or above ``cgroup`` that is delegated, as a path relative to the
    mount; None if there is none (no systemd, or a unit without ``Delegate=``)."""
    parts = [p for p in cgroup.strip("/").split("/") if p]
    while parts:
        rel = "/".join(parts)
        if _is_delegated(os.path.join(mount, rel)):
            return rel
        parts.pop()
    return None


def scope_name(root: str) -> str:
    """The unit name of the scope that holds the sandboxes of instance ``root``."""
    return check_name(root, "root") + SCOPE_SUFFIX


def find_scope(mount: str, root: str, depth: int = 4) -> str | None:
    """The cgroup (relative to the mount) of ``<root>-sandboxes.scope``, searched through the
    slices from the mount down ``depth`` levels: how a later daemon start and ``sandboxd
    cleanup`` from a shell find it. Other units' delegated subtrees are never looked into."""
    name = scope_name(root)
    level = [""]
    for _ in range(depth):
        below = []
        for rel in level:
            for child_name in _subdirs_any(os.path.join(mount, rel)):
                child = f"{rel}/{child_name}".strip("/")
                if child_name == name and _is_delegated(os.path.join(mount, child)):
                    return child
                if child_name.endswith(".slice"):
                    below.append(child)
        level = below
    return None


def _slice_unit(rel: str) -> str:
    """The slice unit whose cgroup is ``rel`` ("system.slice", "a.slice/a-b.slice" → "a-b.slice";
    the root → "-.slice")."""
    last = os.path.basename(rel.strip("/"))
    return last if last.endswith(".slice") else "-.slice"


def _populated(path: str) -> bool:
    return _read_keyed(os.path.join(path, "cgroup.events")).get("populated") == 1


def _start_holder(argv: list[str], timeout: float, until: str, what: str) -> None:
    """Run ``argv`` (which ends in a holder that never exits) detached from our session, and
    wait until ``until`` (a cgroup) holds a process; its early exit is an error."""
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                cwd="/",  # pins no mount
                start_new_session=True,  # a ^C or SIGTERM to the daemon's group does not reach it
            )
        except OSError as exc:
            raise CgroupError(f"cannot {what}: {argv[0]}: {exc.strerror}") from exc
        _HOLDERS.append(proc)  # Popen reaps it if it ever ends while we run
        deadline = time.monotonic() + timeout
        while not _read_procs(os.path.join(until, "cgroup.procs")):
            code = proc.poll()
            if code is not None or time.monotonic() > deadline:
                errors.seek(0)
                text = errors.read().decode(errors="replace").strip()
                raise CgroupError(
                    f"cannot {what}: {' '.join(argv[:6])} ... "
                    + (f"exited {code}" if code is not None else f"timed out after {timeout:.0f}s")
                    + (f": {text}" if text else "")
                )
            time.sleep(0.05)


_HOLDERS: list[subprocess.Popen[bytes]] = []


def sandbox_scope(root: str, mount: str, unit: str, timeout: float = 30.0) -> CgroupV2:
    """The driver of ``<root>-sandboxes.scope``, made now if missing, beside the daemon's own
    delegated ``unit`` (in the same slice), and claimed: the holder in its leaf, our
    controllers enabled. A scope whose holder died (killed by hand) while sandboxes kept it
    alive gets a new holder, moved in by us; one that is emptying is waited out first."""
    name = scope_name(root)
    found = find_scope(mount, root)
    if found is not None and not _populated(os.path.join(mount, found)):
        deadline = time.monotonic() + timeout  # stopping: systemd removes it in a moment
        while os.path.isdir(os.path.join(mount, found)) and time.monotonic() < deadline:
            time.sleep(0.05)
        found = find_scope(mount, root)
    if found is None:
        parent = os.path.dirname(unit.strip("/"))
        found = f"{parent}/{name}".strip("/")
        _start_holder(
            [
                "systemd-run",
                "--scope",
                "--quiet",
                "--collect",
                f"--unit={name}",
                f"--slice={_slice_unit(parent)}",
                "--property=Delegate=yes",
                f"--description=sandboxd {root}: the sandboxes (outlive daemon restarts)",
                "--",
                "sleep",
                "infinity",
            ],
            timeout,
            os.path.join(mount, found),
            f"create the delegated scope {name} for the sandboxes",
        )
        log.info("cgroup v2: made the delegated scope %s for the sandboxes", name)
    driver = CgroupV2(root, mount, found)
    leaf = os.path.join(driver.base, HOLDER)
    if not _read_procs(os.path.join(leaf, "cgroup.procs")) and not _read_procs(
        os.path.join(driver.base, "cgroup.procs")
    ):
        _mkdir(leaf)
        _start_holder(
            ["sh", "-c", 'echo $$ > "$0" && exec sleep infinity', f"{leaf}/cgroup.procs"],
            timeout,
            leaf,
            f"put a new holder into {leaf}",
        )
    driver.claim()
    return driver


def _subdirs_any(path: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def probe(
    root: str, mount: str = "/sys/fs/cgroup", parent: str | None = None, *, claim: bool = True
) -> CgroupDriver:
    """cgroup2 mounted at ``mount`` itself → v2; anything else (v1 or hybrid) → v1 controllers.

    On v2, ``parent`` None means: under systemd, in a unit with ``Delegate=yes``, the layout
    lives in ``<root>-sandboxes.scope``, made or found and, with ``claim``, taken (see the
    module's docstring). Under systemd without delegation the daemon refuses to start (moving
    its children away is only ours to do in a delegated unit); ``claim=False`` (``sandboxd
    cleanup`` from a shell) only finds the scope, never makes one. Without systemd the layout
    is rooted at the mount.
    """
    mount = mount.rstrip("/") or "/"
    try:
        mounts = read_cgroup_mounts()
    except OSError as exc:
        raise CgroupError(f"cannot read /proc/self/mountinfo: {exc.strerror}") from exc
    at_mount = [m for m in mounts if m.mountpoint == mount]
    if at_mount and at_mount[-1].fstype == "cgroup2":
        if parent is not None:
            return CgroupV2(root, mount, parent)
        systemd = os.path.isdir("/run/systemd/system")
        if not claim:
            return CgroupV2(root, mount, (find_scope(mount, root) if systemd else None) or "")
        here = own_cgroup()
        delegated = delegated_ancestor(mount, here)
        if delegated is not None and systemd:
            return sandbox_scope(root, mount, delegated)
        if here != "/" and systemd:
            raise CgroupError(
                f"sandboxd runs in the cgroup {here}, which systemd has not delegated to it: "
                f"start it from a unit with Delegate=yes (deploy/systemd/sandboxd.service), "
                f"or from a shell with `systemd-run --scope -p Delegate=yes sandboxd serve`"
            )
        return CgroupV2(root, mount, "")
    if not any(m.fstype == "cgroup" and _under(m.mountpoint, mount) for m in mounts):
        raise CgroupError(f"no cgroup hierarchy mounted at or under {mount}")
    return CgroupV1(root, mount)
