"""cgroup driver: pure rendering of limit files, then the real kernel (as root, no mocks).

The v1 tests use the probed driver (this build host is hybrid v1); the v2 tests use the
cgroup2 mount, which on a hybrid host is ``/sys/fs/cgroup/unified`` without controllers.
Every test uses its own random root and checks that nothing named with it is left.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandboxd.errors import CgroupError, InvalidRequest
from sandboxd.runtime.cgroups import (
    CgroupDriver,
    CgroupV1,
    CgroupV2,
    find_v1_mounts,
    probe,
    read_cgroup_mounts,
    v1_limit_files,
    v2_limit_files,
)
from sandboxd.spec import DeviceRate, Limits

CGROUP = "/sys/fs/cgroup"
MiB = 1024 * 1024
PY = sys.executable
USER, SB = "alice", "k1"


# --------------------------------------------------------------------------- pure rendering


def test_v2_files_render_limits() -> None:
    limits = Limits(cpus=0.5, memory=64 * MiB, swap=32 * MiB, pids=16)
    files = v2_limit_files(limits)
    assert files == {
        "cpu.max": "50000 100000",
        "memory.max": str(64 * MiB),
        "memory.swap.max": str(32 * MiB),
        "pids.max": "16",
        "memory.high": "max",
        "cpu.weight": "100",
    }


def test_v2_files_unlimited_forms() -> None:
    assert v2_limit_files(Limits()) == {
        "cpu.max": "max 100000",
        "memory.max": "max",
        "memory.swap.max": "max",
        "pids.max": "max",
        "memory.high": "max",
        "cpu.weight": "100",
    }
    assert v2_limit_files(Limits(memory=MiB))["memory.swap.max"] == "0"  # swap=0: no swap


def test_v2_io_max_one_line_per_device_all_keys() -> None:
    limits = Limits(
        io_read_bps=(DeviceRate("8:16", 2097152),),
        io_write_iops=(DeviceRate("8:16", 120), DeviceRate("254:0", 50)),
    )
    assert v2_limit_files(limits)["io.max"] == (
        "254:0 rbps=max wbps=max riops=max wiops=50\n8:16 rbps=2097152 wbps=max riops=max wiops=120"
    )


def test_v1_files_render_limits() -> None:
    limits = Limits(
        cpus=1.5,
        memory=64 * MiB,
        swap=16 * MiB,
        pids=32,
        io_write_bps=(DeviceRate("8:0", 1000), DeviceRate("8:16", 2000)),
    )
    files = v1_limit_files(limits)
    assert files["cpu"] == {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "150000"}
    assert files["memory"]["memory.limit_in_bytes"] == str(64 * MiB)
    assert files["memory"]["memory.memsw.limit_in_bytes"] == str(80 * MiB)  # memory + swap
    assert files["memory"]["memory.oom_control"] == "0"
    assert files["pids"] == {"pids.max": "32"}
    assert files["blkio"] == {"blkio.throttle.write_bps_device": "8:0 1000\n8:16 2000"}


def test_v1_files_unlimited_forms() -> None:
    files = v1_limit_files(Limits())
    assert files["cpu"]["cpu.cfs_quota_us"] == "-1"
    assert files["memory"]["memory.limit_in_bytes"] == "-1"
    assert files["memory"]["memory.memsw.limit_in_bytes"] == "-1"
    assert files["pids"] == {"pids.max": "max"}  # pids.max takes "max" on v1 too
    assert files["blkio"] == {}


@pytest.mark.parametrize(
    "limits",
    [
        Limits(cpus=0.001),
        Limits(cpus=float("nan")),
        Limits(memory=0),
        Limits(swap=-1),
        Limits(pids=0),
        Limits(io_read_bps=(DeviceRate("sda", 1),)),
        Limits(io_read_bps=(DeviceRate("8:0\n9:0", 1),)),
        Limits(io_write_iops=(DeviceRate("8:0", 0),)),
    ],
)
def test_bad_limits_are_refused(limits: Limits) -> None:
    with pytest.raises(InvalidRequest):
        v2_limit_files(limits)
    with pytest.raises(InvalidRequest):
        v1_limit_files(limits)


@pytest.mark.parametrize("name", ["", "..", "../x", "a/b", "Alice", "-x", "x" * 64, "a b"])
def test_names_cannot_escape_root(name: str) -> None:
    driver = CgroupV2("sbxtnames", mount="/nonexistent")
    with pytest.raises(InvalidRequest):
        driver.join_paths(name, "k1")
    with pytest.raises(InvalidRequest):
        driver.join_paths("alice", name)
    with pytest.raises(InvalidRequest):
        CgroupV2(name or "/", mount="/nonexistent")


MOUNTINFO = """\
25 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/free\\040zer rw - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw shared:9 - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw,nsdelegate
90 25 0:32 / /mnt/memory rw - cgroup cgroup rw,memory
"""


def test_v1_mounts_found_in_mountinfo(tmp_path: Path) -> None:
    path = os.path.join(str(tmp_path), "mountinfo")
    with open(path, "w") as fh:
        fh.write(MOUNTINFO)
    controllers, unified = find_v1_mounts("/sys/fs/cgroup", path)
    assert controllers == {
        "cpu": "/sys/fs/cgroup/cpu,cpuacct",
        "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",  # one combined hierarchy, joined once
        "memory": "/sys/fs/cgroup/memory",  # preferred over the bind mount elsewhere
        "freezer": "/sys/fs/cgroup/free zer",
        "pids": "/sys/fs/cgroup/pids",
    }
    assert unified == "/sys/fs/cgroup/unified"
    driver = CgroupV1("sbxtmi", mountinfo=path)
    assert len(driver.join_paths("alice", "k1")) == 4  # cpu,cpuacct once; unified skipped


# --------------------------------------------------------------------------- real kernel


def _cgroup2_mount() -> str | None:
    mounts = read_cgroup_mounts()
    for candidate in (CGROUP, f"{CGROUP}/unified"):
        if any(m.mountpoint == candidate and m.fstype == "cgroup2" for m in mounts):
            return candidate
    return None


def _leftovers(root: str) -> list[str]:
    """Every directory named ``root`` one or two levels under /sys/fs/cgroup."""
    found = []
    for top in os.scandir(CGROUP):
        if top.is_dir() and os.path.isdir(os.path.join(top.path, root)):
            found.append(os.path.join(top.path, root))
    if os.path.isdir(os.path.join(CGROUP, root)):
        found.append(os.path.join(CGROUP, root))
    return found


def _driver(make: Callable[[str], CgroupDriver]) -> Iterator[CgroupDriver]:
    root = "sbxt" + secrets.token_hex(3)
    driver = make(root)
    try:
        yield driver
    finally:
        driver.remove_all()
        assert _leftovers(root) == []


@pytest.fixture
def v1() -> Iterator[CgroupDriver]:
    if probe("sbxtprobe", claim=False).version != 1:
        pytest.skip("host is not cgroup v1/hybrid")
    yield from _driver(probe)


@pytest.fixture
def v2() -> Iterator[CgroupDriver]:
    mount = _cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup2 mount")
    yield from _driver(lambda root: CgroupV2(root, mount=mount))


def _start(driver: CgroupDriver, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    """Start a child that joins every hierarchy before exec, as the launcher does."""
    paths = driver.join_paths(USER, SB)

    def join() -> None:
        for path in paths:
            with open(path, "w") as fh:
                fh.write("0")

    # preexec_fn is safe here: the test process runs no threads.
    return subprocess.Popen(argv, preexec_fn=join, **kw)  # type: ignore[call-overload]  # noqa: PLW1509


def _wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _file(driver: CgroupDriver, controller: str, name: str) -> str:
    mount = driver._controllers[controller]  # type: ignore[attr-defined]
    with open(os.path.join(mount, driver.root, USER, SB, name)) as fh:
        return fh.read().strip()


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _block_device() -> str | None:
    for name in sorted(os.listdir("/sys/block")):
        if not name.startswith(("loop", "zram", "ram")):
            with open(f"/sys/block/{name}/dev") as fh:
                return fh.read().strip()
    return None


@pytest.mark.root
def test_probe_matches_mountinfo() -> None:
    expected = 2 if _cgroup2_mount() == CGROUP else 1
    assert probe("sbxtprobe", claim=False).version == expected  # look only: makes no scope


@pytest.mark.root
def test_v1_limits_written_and_updated(v1: CgroupDriver) -> None:
    v1.ensure_user(USER, Limits(cpus=2, memory=512 * MiB, pids=200))
    v1.ensure_user(USER, Limits(cpus=2, memory=512 * MiB, pids=200))  # idempotent
    v1.create(USER, SB, Limits(cpus=0.5, memory=64 * MiB, pids=32))
    assert _file(v1, "cpu", "cpu.cfs_quota_us") == "50000"
    assert _file(v1, "cpu", "cpu.cfs_period_us") == "100000"
    assert _file(v1, "memory", "memory.limit_in_bytes") == str(64 * MiB)
    assert _file(v1, "pids", "pids.max") == "32"

    v1.update(USER, SB, Limits(cpus=1.0, memory=128 * MiB, pids=None))  # raise memory
    assert _file(v1, "cpu", "cpu.cfs_quota_us") == "100000"
    assert _file(v1, "memory", "memory.limit_in_bytes") == str(128 * MiB)
    assert _file(v1, "pids", "pids.max") == "max"
    v1.update(USER, SB, Limits(memory=32 * MiB))  # lower again: the other write order
    assert _file(v1, "memory", "memory.limit_in_bytes") == str(32 * MiB)
    assert _file(v1, "cpu", "cpu.cfs_quota_us") == "-1"
    assert v1.stats(USER, SB).memory_limit == 32 * MiB
    assert v1.sandbox_groups() == [(USER, SB)]


@pytest.mark.root
def test_v1_io_rules_set_and_reset(v1: CgroupDriver) -> None:
    device = _block_device()
    if device is None:
        pytest.skip("no block device")
    v1.ensure_user(USER, Limits())
    v1.create(USER, SB, Limits(io_read_bps=(DeviceRate(device, 1048576),)))
    assert _file(v1, "blkio", "blkio.throttle.read_bps_device") == f"{device} 1048576"
    v1.update(USER, SB, Limits())
    assert _file(v1, "blkio", "blkio.throttle.read_bps_device") == ""


@pytest.mark.root
def test_v1_failed_create_leaves_nothing(v1: CgroupDriver) -> None:
    v1.ensure_user(USER, Limits(cpus=1))
    with pytest.raises(CgroupError):
        v1.create(USER, SB, Limits(cpus=2))  # the kernel refuses a child quota > parent's
    assert v1.sandbox_groups() == []
    assert not any(os.path.exists(p) for p in v1.join_paths(USER, SB))


@pytest.mark.root
def test_v1_membership_kill_remove(v1: CgroupDriver) -> None:
    v1.ensure_user(USER, Limits())
    v1.create(USER, SB, Limits())
    proc = _start(v1, ["sh", "-c", "sleep 60 & sleep 60 & wait"])
    _wait_for(lambda: len(v1.pids(USER, SB)) == 3)
    assert proc.pid in v1.pids(USER, SB)
    for path in v1.join_paths(USER, SB):  # joined every v1 hierarchy (through tasks)
        with open(path) as fh:
            assert str(proc.pid) in fh.read().split()
    v1.kill(USER, SB)
    assert v1.pids(USER, SB) == []
    assert proc.wait(timeout=10) == -signal.SIGKILL
    v1.remove(USER, SB)
    v1.remove(USER, SB)  # idempotent
    assert v1.sandbox_groups() == []


@pytest.mark.root
def test_v1_memory_hog_is_oom_killed(v1: CgroupDriver) -> None:
    v1.ensure_user(USER, Limits(memory=256 * MiB))
    v1.create(USER, SB, Limits(memory=64 * MiB))
    hog = "b = b'x' * (256 * 1024 * 1024); import time; time.sleep(5)"
    proc = _start(v1, [PY, "-c", hog])
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert v1.oom_kills(USER, SB) >= 1
    stats = v1.stats(USER, SB)
    assert stats.oom_kills >= 1
    assert 0 < stats.memory_peak <= 64 * MiB


FORKER = """
import os, sys, time
ok = failed = 0
for _ in range(40):
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        continue
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    ok += 1
print(ok, failed, flush=True)
time.sleep(60)
"""


@pytest.mark.root
def test_v1_fork_bomb_contained_at_pids_max(v1: CgroupDriver) -> None:
    v1.ensure_user(USER, Limits())
    v1.create(USER, SB, Limits(pids=16))
    proc = _start(v1, [PY, "-c", FORKER], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ok, failed = map(int, proc.stdout.readline().split())
    stats = v1.stats(USER, SB)
    assert stats.pids_limit == 16
    assert stats.pids_current <= 16
    assert ok + 1 <= 16 and failed >= 40 - 15
    v1.kill(USER, SB)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert v1.pids(USER, SB) == []


@pytest.mark.root
def test_v1_cpu_stats_grow_and_throttle(v1: CgroupDriver) -> None:
    v1.ensure_user(USER, Limits())
    v1.create(USER, SB, Limits(cpus=0.5))
    proc = _start(v1, [PY, "-c", "while True: pass"])
    try:
        _wait_for(lambda: v1.stats(USER, SB).cpu_throttled_periods >= 1)
        _wait_for(lambda: v1.stats(USER, SB).cpu_usage_seconds > 0.1)
        stats = v1.stats(USER, SB)
        assert stats.cpu_periods >= stats.cpu_throttled_periods >= 1
        assert stats.cpu_user_seconds + stats.cpu_system_seconds > 0
        assert stats.memory_usage > 0 and stats.memory_working_set <= stats.memory_usage
        assert stats.pids_current == 1
    finally:
        v1.kill(USER, SB)
        proc.wait(timeout=10)


@pytest.mark.root
def test_v1_freeze_thaw(v1: CgroupDriver) -> None:
    v1.ensure_user(USER, Limits())
    v1.create(USER, SB, Limits())
    proc = _start(v1, [PY, "-c", "while True: pass"])
    try:
        v1.freeze(USER, SB)
        assert _file(v1, "freezer", "freezer.state") == "FROZEN"
        ticks = _cpu_ticks(proc.pid)
        time.sleep(0.3)
        assert _cpu_ticks(proc.pid) == ticks
        v1.thaw(USER, SB)
        _wait_for(lambda: _cpu_ticks(proc.pid) > ticks)
    finally:
        v1.remove(USER, SB)  # kill + rmdir
        proc.wait(timeout=10)
    assert v1.sandbox_groups() == []


@pytest.mark.root
def test_v1_list_and_remove_all(v1: CgroupDriver) -> None:
    v1.ensure_user("alice", Limits())
    v1.ensure_user("bob", Limits())
    v1.create("alice", "k1", Limits())
    v1.create("alice", "k2", Limits())
    v1.create("bob", "k1", Limits())
    assert v1.sandbox_groups() == [("alice", "k1"), ("alice", "k2"), ("bob", "k1")]
    v1.remove_user("alice")  # not empty: left alone
    assert ("alice", "k1") in v1.sandbox_groups()
    v1.remove("alice", "k1")
    v1.remove("alice", "k2")
    v1.remove_user("alice")
    assert v1.sandbox_groups() == [("bob", "k1")]
    v1.remove_all()
    assert v1.sandbox_groups() == []


@pytest.mark.root
def test_v2_membership_freeze_kill(v2: CgroupDriver) -> None:
    v2.ensure_user(USER, Limits())
    v2.create(USER, SB, Limits())
    sb_dir = os.path.dirname(v2.join_paths(USER, SB)[0])
    proc = _start(v2, [PY, "-c", "while True: pass"])
    _wait_for(lambda: v2.pids(USER, SB) == [proc.pid])
    _wait_for(lambda: v2.stats(USER, SB).cpu_usage_seconds > 0.05)

    v2.freeze(USER, SB)
    with open(os.path.join(sb_dir, "cgroup.events")) as fh:
        assert "frozen 1" in fh.read().splitlines()
    ticks = _cpu_ticks(proc.pid)
    time.sleep(0.3)
    assert _cpu_ticks(proc.pid) == ticks
    v2.thaw(USER, SB)
    _wait_for(lambda: _cpu_ticks(proc.pid) > ticks)

    v2.kill(USER, SB)
    assert proc.wait(timeout=10) == -signal.SIGKILL
    assert v2.pids(USER, SB) == []
    v2.remove(USER, SB)
    v2.remove_user(USER)
    assert v2.sandbox_groups() == []


@pytest.mark.root
def test_v2_missing_controller_is_named(v2: CgroupDriver) -> None:
    v2.ensure_user(USER, Limits())
    with open(os.path.join(v2.mount, v2.root, USER, "cgroup.controllers")) as fh:
        controllers = fh.read().split()
    if "memory" in controllers:
        pytest.skip("memory controller available here")
    with pytest.raises(CgroupError, match="memory controller"):
        v2.create(USER, SB, Limits(memory=64 * MiB))
    assert v2.sandbox_groups() == []  # the half-made sandbox was removed
    with pytest.raises(CgroupError, match="pids controller"):
        v2.create(USER, SB, Limits(pids=16))


def test_v1_and_v2_classes_report_version() -> None:
    assert CgroupV1.version == 1 and CgroupV2.version == 2
