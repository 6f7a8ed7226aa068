"""The launcher's plan and its fd hand-over, and bubblewrap's command line: pure functions and a
forked child, no daemon."""

from __future__ import annotations

import os

from sandboxd.runtime import bwrap, launcher, rootfs
from sandboxd.runtime.plan import LaunchPlan, MountFd, RootPlan, RunDir, RunFile
from sandboxd.spec import Limits, SandboxSpec, Volume


def spec(**kw: object) -> SandboxSpec:
    base: dict[str, object] = {
        "id": "0123456789abcdef",
        "name": "probe",
        "user": "alice",
        "uid": 800001,
        "command": ("python3", "-c", "print(1)"),
        "limits": Limits(cpus=1.0, memory=64 << 20, pids=64, disk=32 << 20),
        "volumes": (Volume(container="/data", name="work", subpath="notes"),),
    }
    base.update(kw)
    return SandboxSpec(**base)  # type: ignore[arg-type]


def test_plan_round_trips_through_json() -> None:
    root = RootPlan(
        root="/run/x/root",
        rw="/run/x/rw",
        lowers=("/l1", "/l2"),
        disk=1 << 20,
        binds=("/usr",),
        mounts=(MountFd("/data", 7, "dir"), MountFd("/f", 8, "file")),
        etc=(("etc/hostname", "probe\n"),),
        run_dirs=(RunDir("/run/kernel", 1 << 20, (RunFile("c.json", "{}", 0o600),)),),
        workdir="/data",
    )
    plan = LaunchPlan(
        argv=("/usr/bin/bwrap", "--", "true"),
        cgroup_procs=("/sys/fs/cgroup/x/cgroup.procs",),
        net_mode="fd",
        net_fd=9,
        root=root,
        uid=800001,
        error_fd=5,
        keep_fds=(3, 4),
    )
    assert LaunchPlan.from_json(plan.to_json()) == plan


def test_spec_round_trips_and_reads_older_records() -> None:
    s = spec()
    assert SandboxSpec.from_json(s.to_json()) == s
    old = s.to_json() | {"etc_hosts": "", "etc_resolv": None}  # fields of an older version
    assert SandboxSpec.from_json(old) == s


def test_renumber_gives_each_fd_the_named_number() -> None:
    """In a forked child (it rewires fds): received fds end at the numbers the plan names,
    even when a target is the number of another received fd."""
    pid = os.fork()
    if pid == 0:
        ok = False
        try:
            r1, w1 = os.pipe()
            r2, w2 = os.pipe()
            os.write(w1, b"one")
            os.write(w2, b"two")
            targets = [r2, r1 + 40]  # r1 must land on r2's number, r2 far above
            launcher.renumber([r1, r2], targets)
            ok = os.read(targets[0], 3) == b"one" and os.read(targets[1], 3) == b"two"
            ok = ok and not os.get_inheritable(targets[0])
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_bwrap_argv_drops_everything_and_names_the_fds() -> None:
    s = spec(env=(("MY", "1"),), workdir="/data")
    root = rootfs.plan(s, rootfs.Image("host", ("/layer",)), "/run/sbx/0123")
    argv = bwrap.build_argv(
        s,
        root,
        bwrap.BwrapFds(seccomp=11, info=12, status=13),
        empty_file="/run/sbx/.empty",
        python_bin="/venv/bin",
        host_proc=("/proc/kcore", "/proc/acpi", "/proc/sys"),
    )
    assert argv[0] == bwrap.BWRAP
    for flag in (
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup",
        "--disable-userns",
        "--new-session",
        "--clearenv",
    ):
        assert flag in argv
    assert argv[argv.index("--cap-drop") + 1] == "ALL"
    assert argv[argv.index("--uid") + 1] == "1000"
    assert argv[argv.index("--bind") + 1 : argv.index("--bind") + 3] == ["/run/sbx/0123/root", "/"]
    assert argv[argv.index("--seccomp") + 1] == "11"
    assert argv[argv.index("--info-fd") + 1] == "12"
    assert argv[argv.index("--json-status-fd") + 1] == "13"
    assert argv[argv.index("--chdir") + 1] == "/data"
    assert argv[-4:] == ["--", "python3", "-c", "print(1)"]
    # masked /proc entries only where the host has them
    assert argv[argv.index("/proc/kcore") - 2 : argv.index("/proc/kcore") + 1] == [
        "--ro-bind",
        "/run/sbx/.empty",
        "/proc/kcore",
    ]
    assert "/proc/keys" not in argv
    env = {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "--setenv"}
    assert (
        env["MY"] == "1" and env["PATH"].startswith("/venv/bin:") and env["HOME"] == "/home/jovyan"
    )


def test_root_plan_targets_come_from_the_spec_only() -> None:
    s = spec()
    root = rootfs.plan(
        s,
        rootfs.Image("host", ("/layer",), binds=("/usr",)),
        "/run/sbx/0123",
        mounts=(MountFd("/data", 7, "dir"),),
    )
    assert root.root == "/run/sbx/0123/root" and root.rw == "/run/sbx/0123/rw"
    assert root.lowers == ("/layer",) and root.binds == ("/usr",)
    assert root.disk == 32 << 20 and root.workdir == "/home/jovyan"
    files = dict(rootfs.etc_files(s, "", None))
    assert files["etc/hostname"] == "probe\n" and "etc/resolv.conf" not in files
