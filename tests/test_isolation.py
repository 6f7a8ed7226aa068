"""Isolation of a sandbox started through the daemon: users, capabilities, seccomp, /proc,
the filesystem it sees, and where its writes land."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys

import pytest
from conftest import PYTHON, ROOT, Client, Daemon
from helpers import host_pids, probe_path, sh, status_field
from test_seccomp import EPERM_PROBES

pytestmark = pytest.mark.root

#: every syscall the seccomp suite proves EPERM under the filter, now through the daemon
MUST_DENY = EPERM_PROBES


@pytest.fixture(scope="module")
def sleeper(daemon: Daemon) -> dict:
    client = daemon.user("alice")
    sb = client.run(["sleep", "300"], name="iso-sleeper")
    yield sb
    client.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")


def test_uid_1000_inside(alice: Client) -> None:
    code, out, _ = sh(alice, "id -u; id -g; id -un")
    assert code == 0
    assert out.split() == ["1000", "1000", "jovyan"]


def test_tenant_host_uid_outside(daemon: Daemon, sleeper: dict) -> None:
    init, command = host_pids(sleeper)
    user = daemon.admin.call("GET", "/api/users/alice")
    for pid in (sleeper["pid"], init, command):
        uids = status_field(pid, "Uid").split()
        assert set(uids) == {str(user["uid"])}
        assert user["uid"] != 0 and user["uid"] >= 1000
    assert sleeper["uid"] == user["uid"]


def test_two_users_never_share_a_host_uid(daemon: Daemon, alice: Client, bob: Client) -> None:
    a = daemon.admin.call("GET", "/api/users/alice")["uid"]
    b = daemon.admin.call("GET", "/api/users/bob")["uid"]
    assert a != b
    sb = bob.run(["sleep", "30"])
    try:
        _, command = host_pids(sb)
        assert status_field(command, "Uid").split()[0] == str(b)
    finally:
        bob.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")


def test_capabilities_all_zero_no_new_privs_and_seccomp(alice: Client) -> None:
    code, out, _ = sh(alice, "grep -E '^(Cap|NoNewPrivs|Seccomp:)' /proc/self/status")
    fields = dict(line.split(":\t") for line in out.strip().splitlines())
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(fields[cap], 16) == 0, (cap, fields[cap])
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"


def test_sandbox_host_process_is_also_without_caps(sleeper: dict) -> None:
    _, command = host_pids(sleeper)
    for cap in ("CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status_field(command, cap), 16) == 0
    assert status_field(command, "Seccomp") == "2"


def test_pid1_is_its_own_init_and_no_host_process_is_visible(alice: Client) -> None:
    code, out, _ = sh(
        alice, "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -E '^[0-9]+$'"
    )
    lines = out.strip().splitlines()
    assert "bwrap" in lines[0]  # bwrap's reaper is PID 1 of the sandbox
    pids = sorted(int(p) for p in lines[1:])
    assert pids[0] == 1
    assert len(pids) <= 6, pids  # init, sh, ls, grep (+ cat): nothing from the host
    assert os.getpid() not in pids or len(pids) <= 6


def test_hostname_is_the_sandbox_name(alice: Client) -> None:
    code, out, _ = sh(alice, "hostname; cat /etc/hostname", name="iso-host-name")
    assert out.split() == ["iso-host-name", "iso-host-name"]


@pytest.fixture(scope="module")
def probe_volume(daemon: Daemon) -> str:
    """alice's volume ``probe`` holding the syscall probe (a user binds only her own)."""
    alice = daemon.user("alice")
    model = alice.call("PUT", "/api/users/alice/volumes/probe")
    shutil.copy(probe_path(), model["host"])
    os.chown(os.path.join(model["host"], "syscall_probe.py"), model["uid"], model["uid"])
    return "probe"


def test_denied_syscalls_fail_inside(alice: Client, probe_volume: str) -> None:
    names = [*MUST_DENY, "clone3", "getpid", "fork", "socket:inet"]
    result, out, err = alice.run_to_end(
        [PYTHON, "/probe/syscall_probe.py", *names], volumes=[f"{probe_volume}:/probe:ro"]
    )
    assert result["exit_code"] == 0, err
    seen = dict(line.split() for line in out.strip().splitlines())
    for name in MUST_DENY:
        assert int(seen[name]) == errno.EPERM, (name, seen[name])
    assert int(seen["clone3"]) == errno.ENOSYS
    for name in ("getpid", "fork", "socket:inet"):
        assert int(seen[name]) == 0, (name, seen[name])


def test_proc_masked_and_read_only(alice: Client) -> None:
    script = (
        "for f in /proc/kcore /proc/keys /proc/timer_list; do "
        "  if [ -e $f ]; then printf '%s %s\\n' $f $(wc -c < $f); else echo $f absent; fi; "
        "done; grep ' /proc/sys ' /proc/self/mountinfo; "
        "echo x > /proc/sys/kernel/hostname 2>/dev/null && echo WROTE || echo refused; "
        "ls /proc/acpi | wc -l"
    )
    code, out, _ = sh(alice, script)
    lines = out.strip().splitlines()
    for line in lines[:3]:
        path, size = line.split()
        assert size in ("0", "absent"), line  # masked: empty, or not on this kernel at all
    assert lines[1].startswith("/proc/keys 0")  # present on every kernel: must be masked
    assert " ro," in lines[3] or " ro " in lines[3], lines[3]
    assert lines[4] == "refused"
    assert lines[5] == "0"


def test_sys_is_not_writable(alice: Client) -> None:
    code, out, _ = sh(
        alice, "ls -A /sys | wc -l; touch /sys/x 2>/dev/null && echo WROTE || echo no"
    )
    assert out.split() == ["0", "no"]


def test_host_secrets_and_checkout_are_not_reachable(daemon: Daemon, alice: Client) -> None:
    envs = [p for p in (os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix))]
    script = (
        "ls -A /root; echo --; ls -A /work 2>/dev/null; echo --; "
        f"ls -A {ROOT} 2>/dev/null; echo --; "
        "cat /etc/shadow 2>&1 | head -1; echo --; "
        f"ls {daemon.state_dir} 2>&1 | head -1; echo --; "
        f"ls /run/sandboxd 2>&1 | head -1; echo --; ls -A /home"
    )
    code, out, _ = sh(alice, script)
    parts = [p.strip() for p in out.split("--")]
    if any(e.startswith("/root/") for e in envs):
        assert parts[0] == envs[0].split("/")[2]  # only the path to the Python env (.pyenv)
    else:
        assert parts[0] == ""
    if ROOT.startswith("/work/"):
        assert parts[2] == ".venv", parts[2]  # the checkout shows its venv and nothing else
    assert "No such file" in parts[3]
    assert "No such file" in parts[4]
    assert "No such file" in parts[5]
    assert parts[6] == "jovyan"


def test_python_environment_is_read_only(alice: Client) -> None:
    code, out, _ = sh(
        alice, f"touch {os.path.dirname(PYTHON)}/x 2>&1; touch /usr/x 2>&1; echo done"
    )
    assert "Read-only file system" in out and out.count("Read-only") == 2


def test_write_to_root_lands_in_upper_and_disappears(daemon: Daemon, alice: Client) -> None:
    sb = alice.run(["/bin/sh", "-c", "echo secret-42 > /written-by-sandbox; sleep 300"])
    try:
        init, command = host_pids(sb)
        from helpers import wait_until

        wait_until(lambda: os.path.exists(f"/proc/{command}/root/written-by-sandbox"))
        with open(f"/proc/{command}/root/written-by-sandbox") as fh:
            assert fh.read() == "secret-42\n"
        assert not os.path.exists("/written-by-sandbox")
        # a sibling sandbox of the same user does not see it
        code, out, _ = sh(alice, "cat /written-by-sandbox 2>&1")
        assert "No such file" in out
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
    assert not os.path.exists(os.path.join(daemon.run_dir, sb["id"]))
    code, out, _ = sh(alice, "ls /written-by-sandbox 2>&1")
    assert "No such file" in out


def test_environment_is_clean(alice: Client) -> None:
    os.environ["SANDBOXD_HOST_SECRET"] = "leak"
    code, out, _ = sh(alice, "env", env={"MY_VAR": "1"})
    env = dict(line.split("=", 1) for line in out.strip().splitlines() if "=" in line)
    assert env["HOME"] == "/home/jovyan" and env["USER"] == "jovyan" and env["MY_VAR"] == "1"
    assert "SANDBOXD_HOST_SECRET" not in env and "SANDBOXD_TOKEN" not in env


def test_no_network_beyond_loopback_by_default(alice: Client) -> None:
    code, out, _ = sh(alice, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '")
    assert out.split() == ["lo"]


def test_rlimits(alice: Client) -> None:
    code, out, _ = sh(alice, "ulimit -c; ulimit -n; ulimit -Hn")
    core, soft, hard = out.split()
    assert core == "0"
    assert int(soft) <= 65536 and hard != "unlimited" and int(hard) <= 65536


def test_volume_read_only_and_read_write(alice: Client) -> None:
    rw = alice.call("PUT", "/api/users/alice/volumes/alice-rw")["host"]
    uid = alice.call("GET", "/api/whoami")["uid"]
    code, out, _ = sh(
        alice,
        "echo hello > /data/f && cat /data/f; ( echo x > /ro/g ) 2>&1",
        volumes=["alice-rw:/data", "alice-rw:/ro:ro"],
    )
    assert out.splitlines()[0] == "hello"
    assert "Read-only" in out
    with open(os.path.join(rw, "f")) as fh:
        assert fh.read() == "hello\n"
    assert os.stat(os.path.join(rw, "f")).st_uid == uid


def test_status_json_is_well_formed(daemon: Daemon, sleeper: dict) -> None:
    with open(os.path.join(daemon.run_dir, sleeper["id"], "status.json")) as fh:
        first = json.loads(fh.readline())
    assert first["child-pid"] > 1


def test_host_opt_is_not_visible(alice: Client) -> None:
    """The host image binds /usr and the Python environments, not /opt (a decoy put there by
    the test is not in the sandbox)."""
    import tempfile

    from conftest import PREFIX

    decoy = tempfile.mkdtemp(prefix=f"{PREFIX}-optdecoy-", dir="/opt")
    try:
        code, out, _ = sh(alice, "ls -A /opt; echo end")
        assert code == 0 and os.path.basename(decoy) not in out and out.strip() == "end"
    finally:
        os.rmdir(decoy)
