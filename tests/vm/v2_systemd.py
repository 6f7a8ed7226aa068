"""The shipped ``deploy/systemd/sandboxd.service`` under the guest's systemd (PID 1, v252).

The unit file is installed as is under ``/run/systemd/system`` with a drop-in that only points
``ExecStart=`` at this checkout and a test instance, and joins the test network namespace so
the tests can reach it. Then: the daemon stays in the unit's cgroup and enables nothing there,
the sandboxes live in the delegated ``<instance>-sandboxes.scope`` beside it, a restart of the
unit (``KillMode=process``) starts a new daemon that re-adopts a running sandbox (the restart
systemd 252 refused with EBUSY while the sandboxes' cgroups were below the unit), ``sandboxd
cleanup`` from outside removes the scope, and an undelegated unit refuses to start with the fix
in its error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import requests
from conftest import (
    PREFIX,
    ROOT,
    SANDBOXD,
    STATE_DIR,
    TEST_NETNS,
    Client,
    free_port,
    other_instance,
)
from helpers import wait_until
from v2_limits import record

from sandboxd.runtime import cgroups

CG = "/sys/fs/cgroup"
UNIT_DIR = "/run/systemd/system"
CONFIG = """
stop_grace_seconds = 2
[profiles.default]
cpus = 1.0
memory = "128m"
pids = 64
network = "none"
disk = "64m"
"""


def systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print("systemctl", *args, flush=True)
    done = subprocess.run(
        [
            "systemctl",
            "--no-block" if args[0] in ("start", "restart", "stop") else "--quiet",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"systemctl {args}: {done.returncode} {done.stdout} {done.stderr}")
    return done


class Unit:
    """``deploy/systemd/sandboxd.service`` installed as ``<prefix>-sandboxd-<letter>.service``."""

    def __init__(self, letter: str, extra: str = "") -> None:
        self.instance = other_instance(letter)
        self.name = f"{self.instance}-sandboxd.service"
        self.state = f"{STATE_DIR}-{letter}"
        self.log = f"{self.state}.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        os.makedirs(self.state, mode=0o700, exist_ok=True)
        with open(f"{self.state}.toml", "w") as fh:
            fh.write(CONFIG)
        shutil.copy(os.path.join(ROOT, "deploy", "systemd", "sandboxd.service"), self.path)
        os.makedirs(self.path + ".d", exist_ok=True)
        with open(os.path.join(self.path + ".d", "test.conf"), "w") as fh:
            fh.write(
                "[Service]\nExecStart=\n"
                f"ExecStart={SANDBOXD} serve --config {self.state}.toml --instance "
                f"{self.instance} --listen 127.0.0.1:{self.port} --state-dir {self.state} "
                f"--run-dir /run/sandboxd/{self.instance}\n"
                f"NetworkNamespacePath=/run/netns/{TEST_NETNS}\n"
                f"StandardOutput=append:{self.log}\nStandardError=append:{self.log}\n"
                "Restart=no\n" + extra
            )
        systemctl("daemon-reload")

    @property
    def path(self) -> str:
        return os.path.join(UNIT_DIR, self.name)

    @property
    def cgroup(self) -> str:
        return f"system.slice/{self.name}"

    @property
    def scope(self) -> str:
        return f"system.slice/{cgroups.scope_name(self.instance)}"

    def stop(self) -> None:
        systemctl("stop", self.name, check=False)
        wait_until(
            lambda: systemctl("is-active", self.name, check=False).stdout.strip() != "active",
            timeout=60,
        )

    def main_pid(self) -> int:
        return int(systemctl("show", "-p", "MainPID", "--value", self.name).stdout.strip())

    def start(self) -> Client:
        systemctl("start", self.name)
        return self.wait_up()

    def wait_up(self) -> Client:
        token = os.path.join(self.state, "admin-token")

        def up() -> bool:
            try:
                return requests.get(self.url + "/api/openapi.json", timeout=2).ok
            except requests.ConnectionError:
                return False

        wait_until(up, timeout=120, interval=0.5)
        return Client(self.url, open(token).read().strip())

    def remove(self) -> None:
        self.stop()
        cleanup_from_outside(self)
        try:  # systemd prunes an empty unit cgroup; help it
            os.rmdir(os.path.join(CG, self.cgroup))
        except OSError:
            pass
        shutil.rmtree(self.path + ".d", ignore_errors=True)
        if os.path.exists(self.path):
            os.unlink(self.path)
        systemctl("daemon-reload")
        systemctl("reset-failed", self.name, check=False)


def cleanup_from_outside(unit: Unit) -> subprocess.CompletedProcess[str]:
    """``sandboxd cleanup`` as from an admin's shell: the test runner itself is a delegated
    unit, so the command first leaves it for the root cgroup (no delegation there)."""
    script = f'echo $$ > {CG}/cgroup.procs && exec "$@"'
    argv = [SANDBOXD, "cleanup", "--instance", unit.instance, "--state-dir", unit.state]
    return subprocess.run(["sh", "-c", script, "sh", *argv], capture_output=True, text=True)


@pytest.fixture
def unit() -> Iterator[Unit]:
    u = Unit("s")
    yield u
    u.remove()


def test_shipped_unit_restarts_and_readopts_sandboxes_in_their_scope(unit: Unit) -> None:
    assert PREFIX in unit.name
    text = open(unit.path).read()
    assert "Delegate=yes" in text and "KillMode=process" in text
    top_before = open(f"{CG}/cgroup.subtree_control").read()
    admin = unit.start()
    pid = unit.main_pid()
    assert cgroups.own_cgroup(pid) == f"/{unit.cgroup}"  # the daemon stays where systemd put it
    assert open(f"{CG}/{unit.cgroup}/cgroup.subtree_control").read().strip() == ""
    scope = f"{CG}/{unit.scope}"
    assert cgroups.find_scope(CG, unit.instance) == unit.scope
    assert os.getxattr(scope, "trusted.delegate") == b"1"
    assert open(f"{scope}/cgroup.procs").read() == ""
    assert open(f"{scope}/{cgroups.HOLDER}/cgroup.procs").read().strip() != ""
    assert {"cpu", "memory", "pids", "io"} <= set(
        open(f"{scope}/cgroup.subtree_control").read().split()
    )
    body = admin.call("POST", "/api/users", json={"name": "sam"})
    sam = Client(unit.url, body["token"])
    sb = sam.run(["sleep", "600"], cpus=0.5, memory="64m")
    sandbox_dir = f"{scope}/{unit.instance}/sam/{sb['id']}"
    wait_until(lambda: os.path.exists(f"{sandbox_dir}/cgroup.procs"))
    assert open(f"{sandbox_dir}/memory.max").read().strip() == str(64 << 20)
    assert open(f"{sandbox_dir}/cpu.max").read().strip() == "50000 100000"
    assert not os.path.exists(f"{CG}/{unit.instance}")
    assert not os.path.exists(f"{CG}/{unit.cgroup}/{unit.instance}")
    assert open(f"{CG}/cgroup.subtree_control").read() == top_before  # nothing written above
    inside = open(f"{sandbox_dir}/cgroup.procs").read().split()
    assert inside

    # KillMode=process: a restart keeps the sandbox, the new daemon re-adopts it
    t0 = time.monotonic()
    systemctl("restart", unit.name)
    wait_until(lambda: unit.main_pid() not in (0, pid), timeout=60)
    admin = unit.wait_up()
    took = time.monotonic() - t0
    assert cgroups.own_cgroup(unit.main_pid()) == f"/{unit.cgroup}"
    assert sam.call("GET", f"/api/sandboxes/{sb['id']}")["state"] == "running"
    assert open(f"{sandbox_dir}/cgroup.procs").read().split() == inside
    second = sam.run(["sleep", "600"], memory="32m")  # the new daemon found the same scope
    second_dir = f"{scope}/{unit.instance}/sam/{second['id']}"
    wait_until(lambda: os.path.exists(f"{second_dir}/cgroup.procs"))
    assert open(f"{second_dir}/memory.max").read().strip() == str(32 << 20)
    for made in (sb, second):
        sam.call("DELETE", f"/api/sandboxes/{made['id']}?force=1")
    assert not os.path.exists(sandbox_dir) and not os.path.exists(second_dir)
    record(
        "systemd restart (KillMode=process)",
        "new daemon, sandbox re-adopted",
        f"up again in {took:.1f} s, sandbox running, same processes",
    )


def test_cleanup_from_outside_the_unit_removes_the_scope(unit: Unit) -> None:
    admin = unit.start()
    body = admin.call("POST", "/api/users", json={"name": "sue"})
    sb = Client(unit.url, body["token"]).run(["sleep", "600"])
    user_dir = f"{CG}/{unit.scope}/{unit.instance}/sue"
    wait_until(lambda: os.path.isdir(f"{user_dir}/{sb['id']}"))
    unit.stop()  # KillMode=process, and the sandboxes are in their own scope: they survive
    assert open(f"{user_dir}/{sb['id']}/cgroup.procs").read().strip() != ""
    done = cleanup_from_outside(unit)
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(f"{CG}/{unit.scope}")


def test_undelegated_unit_refuses_to_start_naming_the_fix() -> None:
    u = Unit("u", extra="Delegate=no\n")
    try:
        systemctl("start", u.name, check=False)
        wait_until(lambda: "Delegate=yes" in (open(u.log).read() if os.path.exists(u.log) else ""))
        log = open(u.log).read()
        assert "not delegated" in log, log
        time.sleep(0.5)
        assert systemctl("is-active", u.name, check=False).stdout.strip() != "active"
        assert not os.path.exists(f"{CG}/{u.instance}") and not os.path.exists(f"{CG}/{u.scope}")
    finally:
        u.remove()


def test_missing_controller_is_named_with_the_fix() -> None:
    """An emulated delegation that lacks ``memory``: a delegated cgroup whose parent did not
    enable it (what ``Delegate=cpu pids io`` gives where no sibling needs memory)."""
    outer = os.path.join(CG, f"{PREFIX}-nomem")
    inner = os.path.join(outer, "unit")
    os.mkdir(outer)
    try:
        with open(f"{outer}/cgroup.subtree_control", "w") as fh:
            fh.write("+cpu +pids +io")
        os.mkdir(inner)
        os.setxattr(inner, "trusted.delegate", b"1")
        driver = cgroups.CgroupV2(other_instance("m"), CG, f"{PREFIX}-nomem/unit")
        from sandboxd.errors import CgroupError
        from sandboxd.spec import Limits

        driver.ensure_user("amy", Limits(cpus=1.0))
        with pytest.raises(CgroupError) as err:
            driver.create("amy", "k1", Limits(memory=64 << 20))
        message = str(err.value)
        assert "memory controller is not delegated" in message and "Delegate=yes" in message
        driver.remove_all()
    finally:
        for path in (inner, outer):
            if os.path.isdir(path):
                os.rmdir(path)


def test_why_not_below_the_unit_a_restart_fails_with_ebusy() -> None:
    """The failure the scope avoids, shown with systemd itself: a ``Delegate=yes``,
    ``KillMode=process`` unit whose own cgroup enabled a controller for a child cgroup that
    outlives the main process (as the sandboxes did when they lived below the daemon's unit)
    cannot start again: systemd's "-pids" on the unit's cgroup fails (a child uses it), then
    attaching the new main process to it fails (EBUSY, no-internal-processes) and the start
    fails with status 219/CGROUP."""
    name = f"{PREFIX}-ebusy.service"
    path = os.path.join(UNIT_DIR, name)
    cg = f"{CG}/system.slice/{name}"
    script = f"{UNIT_DIR}/{PREFIX}-ebusy.sh"
    with open(script, "w") as fh:
        fh.write(
            f"[ -d {cg}/kept ] && exec sleep 600\n"  # the second start, if it ever ran
            f"mkdir {cg}/leaf && echo $$ > {cg}/leaf/cgroup.procs\n"
            f"echo +pids > {cg}/cgroup.subtree_control\n"  # as <unit>/<instance>/<user>/<sb>:
            f"mkdir {cg}/kept && echo +pids > {cg}/kept/cgroup.subtree_control\n"
            f"mkdir {cg}/kept/sb\n"
            f"sh -c 'echo $$ > {cg}/kept/sb/cgroup.procs; exec sleep 600' &\n"
            "exec sleep 600\n"
        )
    with open(path, "w") as fh:
        fh.write(
            f"[Service]\nExecStart=/bin/sh {script}\nDelegate=yes\nKillMode=process\nRestart=no\n"
        )
    systemctl("daemon-reload")
    try:
        systemctl("start", name)
        wait_until(lambda: os.path.exists(f"{cg}/kept/sb/cgroup.procs"), timeout=60)
        wait_until(lambda: open(f"{cg}/kept/sb/cgroup.procs").read().strip() != "", timeout=60)
        first = int(systemctl("show", "-p", "MainPID", "--value", name).stdout)
        systemctl("restart", name)

        def result() -> str:
            out = systemctl(
                "show", "-p", "ActiveState", "-p", "ExecMainStatus", "-p", "MainPID", name
            ).stdout
            fields = dict(line.split("=", 1) for line in out.split())
            if fields["ActiveState"] in ("failed", "inactive") or fields["MainPID"] not in (
                "0",
                str(first),
            ):
                return f"{fields['ActiveState']}, status {fields['ExecMainStatus']}"
            return ""

        state = wait_until(result, timeout=60)
        # the whole boot's journal: the attach error is logged by the forked child, which
        # never made it into the unit's cgroup, so `journalctl -u` may not list it
        log = subprocess.run(
            ["journalctl", "-b", "--no-pager"], capture_output=True, text=True
        ).stdout
        log = "\n".join(line for line in log.splitlines() if name in line)
    finally:
        subprocess.run(["sh", "-c", f"echo 1 > {cg}/kept/sb/cgroup.kill"], capture_output=True)
        systemctl("stop", name, check=False)
        for leaf in ("kept/sb", "kept", "leaf", ""):
            wait_until(lambda leaf=leaf: _rmdir(f"{cg}/{leaf}"), timeout=20)
        os.unlink(path)
        os.unlink(script)
        systemctl("daemon-reload")
        systemctl("reset-failed", name, check=False)
    attach = [line for line in log.splitlines() if "Failed to attach to cgroup" in line]
    record(
        "restart below the unit (old design)",
        "fails on systemd 252 (why the scope)",
        f"{state}; " + (attach[0][attach[0].index("Failed") :] if attach else "no attach error"),
        state == "failed, status 219" and bool(attach),
    )
    assert state == "failed, status 219", (state, log)
    assert attach and "Device or resource busy" in attach[0], log


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
