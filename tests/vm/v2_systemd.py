"""The shipped ``deploy/systemd/sandboxd.service`` under the guest's systemd (PID 1, v252).

The unit file is installed as is under ``/run/systemd/system`` with a drop-in that only points
``ExecStart=`` at this checkout and a test instance, and joins the test network namespace so
the tests can reach it. Then: the daemon moves itself into ``<unit>/supervisor``, enables its
controllers there and nowhere above, a sandbox's limits land under the unit, a restart
re-adopts a running sandbox, ``sandboxd cleanup`` from outside the unit finds the subtree, and
an undelegated unit refuses to start with the fix in its error.
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
        for leaf in (cgroups.SUPERVISOR, ""):  # systemd prunes an empty unit cgroup; help it
            try:
                os.rmdir(os.path.join(CG, self.cgroup, leaf))
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


def test_shipped_unit_delegates_and_daemon_owns_only_its_subtree(unit: Unit) -> None:
    assert PREFIX in unit.name
    text = open(unit.path).read()
    assert "Delegate=yes" in text and "KillMode=process" in text
    top_before = open(f"{CG}/cgroup.subtree_control").read()
    slice_before = open(f"{CG}/system.slice/cgroup.subtree_control").read()
    admin = unit.start()
    pid = unit.main_pid()
    assert cgroups.own_cgroup(pid) == f"/{unit.cgroup}/{cgroups.SUPERVISOR}"
    assert open(f"{CG}/{unit.cgroup}/cgroup.procs").read() == ""
    assert {"cpu", "memory", "pids", "io"} <= set(
        open(f"{CG}/{unit.cgroup}/cgroup.subtree_control").read().split()
    )
    body = admin.call("POST", "/api/users", json={"name": "sam"})
    sam = Client(unit.url, body["token"])
    sb = sam.run(["sleep", "600"], cpus=0.5, memory="64m")
    sandbox_dir = f"{CG}/{unit.cgroup}/{unit.instance}/sam/{sb['id']}"
    wait_until(lambda: os.path.exists(f"{sandbox_dir}/cgroup.procs"))
    assert open(f"{sandbox_dir}/memory.max").read().strip() == str(64 << 20)
    assert open(f"{sandbox_dir}/cpu.max").read().strip() == "50000 100000"
    assert not os.path.exists(f"{CG}/{unit.instance}")
    # nothing written above the unit: the slice's and the root's controllers are untouched
    assert open(f"{CG}/cgroup.subtree_control").read() == top_before
    assert open(f"{CG}/system.slice/cgroup.subtree_control").read() == slice_before

    # KillMode=process: a restart keeps the sandbox, the new daemon re-adopts it
    systemctl("restart", unit.name)
    wait_until(lambda: unit.main_pid() not in (0, pid), timeout=60)
    admin = unit.wait_up()
    assert cgroups.own_cgroup(unit.main_pid()) == f"/{unit.cgroup}/{cgroups.SUPERVISOR}"
    assert sam.call("GET", f"/api/sandboxes/{sb['id']}")["state"] == "running"
    sam.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
    assert not os.path.exists(sandbox_dir)


def test_cleanup_from_outside_the_unit_finds_its_subtree(unit: Unit) -> None:
    admin = unit.start()
    body = admin.call("POST", "/api/users", json={"name": "sue"})
    sb = Client(unit.url, body["token"]).run(["sleep", "600"])
    user_dir = f"{CG}/{unit.cgroup}/{unit.instance}/sue"
    wait_until(lambda: os.path.isdir(f"{user_dir}/{sb['id']}"))
    unit.stop()  # KillMode=process: the sandbox survives its daemon
    assert os.path.isdir(f"{user_dir}/{sb['id']}")
    done = cleanup_from_outside(unit)
    assert done.returncode == 0, done.stderr
    assert not os.path.exists(f"{CG}/{unit.cgroup}/{unit.instance}")


def test_undelegated_unit_refuses_to_start_naming_the_fix() -> None:
    u = Unit("u", extra="Delegate=no\n")
    try:
        systemctl("start", u.name, check=False)
        wait_until(lambda: "Delegate=yes" in (open(u.log).read() if os.path.exists(u.log) else ""))
        log = open(u.log).read()
        assert "not delegated" in log, log
        time.sleep(0.5)
        assert systemctl("is-active", u.name, check=False).stdout.strip() != "active"
        assert not os.path.exists(f"{CG}/{u.instance}")
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
