"""Seccomp policy: pure profile checks, then the real kernel through bwrap (as root, no mocks).

The real tests run ``tests/syscall_probe.py`` inside ``bwrap --unshare-all --unshare-user
--uid 1000`` twice: with our filter and without it (control). The control proves the probe's
arguments reach the kernel and give something other than EPERM, so an EPERM under the filter
is the filter's doing, not a missing capability.
"""

from __future__ import annotations

import copy
import errno
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxd.errors import InvalidRequest, SeccompError
from sandboxd.runtime.seccomp import (
    compile_profile,
    compiled,
    denied_syscalls,
    load_profile,
    seccomp_fd,
)

PROBE = Path(__file__).with_name("syscall_probe.py")

MUST_DENY = [
    "mount",
    "umount2",
    "pivot_root",
    "unshare",
    "setns",
    "clone",
    "clone3",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "perf_event_open",
    "keyctl",
    "add_key",
    "request_key",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "userfaultfd",
    "reboot",
    "swapon",
    "swapoff",
    "settimeofday",
    "clock_settime",
    "acct",
    "quotactl",
    "open_by_handle_at",
    "socket",
    "personality",
]
DOCKER_ALSO_BLOCKS = [
    "_sysctl",
    "afs_syscall",
    "create_module",
    "fanotify_init",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "getpmsg",
    "ioperm",
    "iopl",
    "kcmp",
    "lookup_dcookie",
    "mbind",
    "migrate_pages",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "nfsservctl",
    "open_tree",
    "pidfd_getfd",
    "process_madvise",
    "putpmsg",
    "query_module",
    "quotactl_fd",
    "security",
    "set_mempolicy",
    "set_mempolicy_home_node",
    "setdomainname",
    "sethostname",
    "sysfs",
    "syslog",
    "tuxcall",
    "uselib",
    "ustat",
    "vhangup",
    "vserver",
]
# Probes whose unconditional EPERM under the filter we assert (clone3 and sockets separately).
EPERM_PROBES = [n for n in MUST_DENY if n not in ("clone", "clone3", "socket", "personality")]
EPERM_PROBES += ["personality", "chroot", "kcmp", "pidfd_getfd", "fsopen", "open_tree"]
EPERM_PROBES += ["move_mount", "mount_setattr", "mbind", "set_mempolicy", "sethostname"]
EPERM_PROBES += ["syslog", "iopl", "ioperm", "lookup_dcookie", "fanotify_init", "modify_ldt"]
EPERM_PROBES += ["socket:alg", "socket:vsock", "clone:newuser"]
ALLOWED_PROBES = ["getpid", "fork", "open", "socket:inet", "socket:unix", "personality:query"]


# --------------------------------------------------------------------------- pure


@pytest.fixture(scope="module")
def default_profile() -> dict[str, Any]:
    return load_profile(None)


def _rules_for(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def test_default_profile_shape(default_profile: dict[str, Any]) -> None:
    assert default_profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert default_profile["defaultErrnoRet"] == errno.EPERM
    arches = {e["architecture"]: e["subArchitectures"] for e in default_profile["archMap"]}
    assert set(arches["SCMP_ARCH_X86_64"]) == {"SCMP_ARCH_X86", "SCMP_ARCH_X32"}
    assert "SCMP_ARCH_AARCH64" in arches
    allow = [r for r in default_profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW"]
    unconditional = {
        n for r in allow if not r.get("args") and not r.get("includes") for n in r["names"]
    }
    assert 300 <= len(unconditional) <= 420, "about the size of Docker's allow-list"
    assert {"read", "write", "execve", "futex", "mmap", "epoll_pwait", "getrandom"} <= unconditional


def test_default_profile_conditional_rules(default_profile: dict[str, Any]) -> None:
    (clone,) = _rules_for(default_profile, "clone")
    assert clone["args"] == [
        {"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    (clone3,) = _rules_for(default_profile, "clone3")
    assert (clone3["action"], clone3["errnoRet"]) == ("SCMP_ACT_ERRNO", errno.ENOSYS)
    sockets = [r["args"][0] for r in _rules_for(default_profile, "socket")]
    assert {(a["op"], a["value"]) for a in sockets} == {
        ("SCMP_CMP_LT", 38),
        ("SCMP_CMP_EQ", 39),
        ("SCMP_CMP_GT", 40),
    }
    personas = {r["args"][0]["value"] for r in _rules_for(default_profile, "personality")}
    assert personas == {0, 8, 0x20000, 0x20008, 0xFFFFFFFF}
    (ptrace,) = _rules_for(default_profile, "ptrace")
    assert ptrace["includes"] == {"minKernel": "4.8"}


def test_default_profile_compiles(default_profile: dict[str, Any]) -> None:
    bpf = compile_profile(default_profile)
    assert bpf and len(bpf) % 8 == 0
    assert len(bpf) // 8 <= 4096, "the kernel's BPF_MAXINSNS"


def test_denied_syscalls(default_profile: dict[str, Any]) -> None:
    denied = denied_syscalls(default_profile)
    assert set(MUST_DENY) <= denied
    assert set(DOCKER_ALSO_BLOCKS) <= denied
    assert not {"read", "getpid", "ptrace", "memfd_create", "seccomp"} & denied


def test_denied_syscalls_blocklist_profile() -> None:
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO"}],
    }
    assert denied_syscalls(profile, universe=["uname", "getpid"]) == {"uname"}


def test_unknown_names_are_skipped(default_profile: dict[str, Any]) -> None:
    profile = copy.deepcopy(default_profile)
    profile["syscalls"].append({"names": ["no_such_syscall_xyz"], "action": "SCMP_ACT_ALLOW"})
    assert compile_profile(profile) == compile_profile(default_profile)


def test_docker_style_includes_are_honoured(default_profile: dict[str, Any]) -> None:
    profile = copy.deepcopy(default_profile)
    # Cap-gated rules never apply (sandboxes hold no capabilities); foreign-arch rules neither.
    profile["syscalls"] += [
        {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
        {"names": ["reboot"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["s390x"]}},
        {"names": ["acct"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
    ]
    assert compile_profile(profile) == compile_profile(default_profile)
    assert {"mount", "reboot", "acct"} <= denied_syscalls(profile)


def _one_rule(arg: str) -> str:
    rule = f'{{"names": ["read"], "action": "SCMP_ACT_ALLOW", "args": [{arg}]}}'
    return f'{{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{rule}]}}'


def _write(tmp_path: Path, content: str) -> str:
    path = tmp_path / "profile.json"
    path.write_text(content)
    return str(path)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "top level must be a JSON object"),
        ('{"defaultAction": "SCMP_ACT_NOPE"}', "defaultAction: unknown"),
        ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "unsupported action"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1}', "defaultErrnoRet"),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}}', "syscalls must be a list"),
        (
            '{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}',
            "syscalls[0] needs a non-empty 'names'",
        ),
        (
            _one_rule('{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}'),
            "index must be 0..5",
        ),
        (
            _one_rule('{"index": 0, "value": 1, "op": "SCMP_CMP_XX"}'),
            "unknown operator",
        ),
        ('{"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["x86_64"]}', "SCMP_ARCH_"),
    ],
)
def test_malformed_profile_is_invalid_request(tmp_path: Path, content: str, why: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(InvalidRequest) as info:
        load_profile(path)
    assert path in info.value.message and why in info.value.message
    assert info.value.status == 400


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read"):
        load_profile(str(tmp_path / "absent.json"))
    with pytest.raises(InvalidRequest, match="cannot read"):
        compiled(str(tmp_path / "absent.json"))


def test_conflicting_unconditional_rules_are_refused(
    tmp_path: Path, default_profile: dict[str, Any]
) -> None:
    """libseccomp would silently keep the first action; an admin's deny must not vanish."""
    profile = copy.deepcopy(default_profile)
    profile["syscalls"].append({"names": ["uname"], "action": "SCMP_ACT_ERRNO"})
    path = _write(tmp_path, json.dumps(profile))
    with pytest.raises(InvalidRequest, match="'uname' already has action SCMP_ACT_ALLOW"):
        load_profile(path)


def test_compile_validates_dicts_built_in_code() -> None:
    with pytest.raises(InvalidRequest):
        compile_profile({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": []}]})


def test_libseccomp_refusal_is_seccomp_error(default_profile: dict[str, Any]) -> None:
    profile = copy.deepcopy(default_profile)
    # Passes validation (conditional), but libseccomp refuses a second action for the
    # very same condition the default profile already allows.
    cond = {"index": 0, "value": 38, "op": "SCMP_CMP_LT"}
    profile["syscalls"].append(
        {"names": ["socket"], "action": "SCMP_ACT_KILL_PROCESS", "args": [cond]}
    )
    with pytest.raises(SeccompError) as info:
        compile_profile(profile)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.status == 500


def _without(profile: dict[str, Any], name: str) -> dict[str, Any]:
    custom = copy.deepcopy(profile)
    for rule in custom["syscalls"]:
        rule["names"] = [n for n in rule["names"] if n != name]
    return custom


def test_custom_profile_compiles_and_differs(
    tmp_path: Path, default_profile: dict[str, Any]
) -> None:
    path = _write(tmp_path, json.dumps(_without(default_profile, "uname")))
    custom = load_profile(path)
    assert "uname" in denied_syscalls(custom)
    assert "uname" not in denied_syscalls(default_profile)
    assert compile_profile(custom) != compile_profile(default_profile)


def test_compiled_is_cached_by_path_and_mtime(
    tmp_path: Path, default_profile: dict[str, Any]
) -> None:
    path = _write(tmp_path, json.dumps(default_profile))
    first = compiled(path)
    assert compiled(path) is first
    assert compiled(None) == first
    Path(path).write_text(json.dumps(_without(default_profile, "uname")))
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse-grained clock
    assert compiled(path) != first


def test_seccomp_fd_is_sealed_memfd_at_offset_zero() -> None:
    bpf = compiled(None)
    fd = seccomp_fd(bpf)
    try:
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        assert os.read(fd, len(bpf) + 8) == bpf
        assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) & fcntl.F_SEAL_WRITE
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"\0" * 8, 0)
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_seccomp_fd_rejects_non_bpf() -> None:
    with pytest.raises(SeccompError):
        seccomp_fd(b"abc")


# --------------------------------------------------------------------------- real kernel


def run_probe(bpf: bytes | None, names: list[str]) -> dict[str, int]:
    """Run the probe in a bwrap sandbox as uid 1000 in a new userns; ``bpf=None`` is the control.

    bwrap runs as root so it can read the pyenv interpreter under /root (0700); inside, the
    probe has no capabilities, and bwrap itself sets no_new_privs and loads the filter.
    """
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--uid", "1000", "--gid", "1000"]
    argv += ["--die-with-parent", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    fds: list[int] = []
    if bpf is not None:
        fds.append(seccomp_fd(bpf))
        argv += ["--seccomp", str(fds[0])]
    argv += ["--", sys.executable, str(PROBE), *names]
    try:
        proc = subprocess.run(
            argv, check=False, pass_fds=fds, capture_output=True, text=True, timeout=60
        )
    finally:
        for fd in fds:
            os.close(fd)
    assert proc.returncode == 0, proc.stderr
    pairs = (line.rsplit(" ", 1) for line in proc.stdout.splitlines())
    return {name: int(value) for name, value in pairs}


ALL_PROBES = ["all", "uname", "proc-status"]


@pytest.fixture(scope="module")
def filtered() -> dict[str, int]:
    return run_probe(compiled(None), ALL_PROBES)


@pytest.fixture(scope="module")
def control() -> dict[str, int]:
    return run_probe(None, ALL_PROBES)


@pytest.mark.root
def test_filter_is_active_with_no_new_privs(filtered: dict[str, int]) -> None:
    assert filtered["Seccomp"] == 2
    assert filtered["NoNewPrivs"] == 1


@pytest.mark.root
@pytest.mark.parametrize("name", EPERM_PROBES)
def test_denied_syscall_gives_eperm(filtered: dict[str, int], name: str) -> None:
    assert filtered[name] == errno.EPERM, errno.errorcode.get(filtered[name])


@pytest.mark.root
def test_clone3_gives_enosys(filtered: dict[str, int], control: dict[str, int]) -> None:
    assert filtered["clone3"] == errno.ENOSYS
    assert control["clone3"] == errno.EINVAL


@pytest.mark.root
@pytest.mark.parametrize("name", ALLOWED_PROBES)
def test_allowed_syscall_works(filtered: dict[str, int], name: str) -> None:
    assert filtered[name] == 0, errno.errorcode.get(filtered[name])


@pytest.mark.root
def test_allowed_syscalls_reach_the_kernel(filtered: dict[str, int]) -> None:
    # Allowed calls with a NULL buffer fail in the kernel (EFAULT), not in the filter.
    assert filtered["uname"] == errno.EFAULT
    assert filtered["memfd_create"] == errno.EFAULT
    assert filtered["ptrace"] == errno.ESRCH


@pytest.mark.root
def test_control_shows_the_filter_is_what_denies(
    filtered: dict[str, int], control: dict[str, int]
) -> None:
    """Without the filter the same calls get past EPERM: the EPERMs above are the filter's."""
    assert control["Seccomp"] == 0
    expected = {
        "mount": errno.EFAULT,
        "umount2": errno.EINVAL,
        "unshare": errno.EINVAL,
        "setns": errno.EBADF,
        "perf_event_open": errno.EFAULT,
        "add_key": errno.EFAULT,
        "io_uring_enter": errno.EBADF,
        "userfaultfd": errno.EINVAL,
        "settimeofday": errno.EFAULT,
        "chroot": errno.EFAULT,
        "clone:newuser": 0,
        "personality": 0,
    }
    assert {k: control[k] for k in expected} == expected
    assert {k: filtered[k] for k in expected} == dict.fromkeys(expected, errno.EPERM)
    assert control["socket:alg"] != errno.EPERM and control["socket:vsock"] != errno.EPERM
    assert sum(control[n] != errno.EPERM for n in EPERM_PROBES) >= 25


@pytest.fixture
def uname_denying_profile(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "no-uname.json"
    path.write_text(json.dumps(_without(load_profile(None), "uname")))
    yield str(path)


@pytest.mark.root
def test_custom_profile_takes_effect(uname_denying_profile: str) -> None:
    result = run_probe(compiled(uname_denying_profile), ["uname", "getpid", "mount", "proc-status"])
    assert result == {
        "uname": errno.EPERM,
        "getpid": 0,
        "mount": errno.EPERM,
        "Seccomp": 2,
        "NoNewPrivs": 1,
    }
