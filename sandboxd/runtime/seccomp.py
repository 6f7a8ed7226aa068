"""Seccomp policy: Docker-format JSON profiles compiled to classic BPF for ``bwrap --seccomp FD``.

sandboxd owns the policy, bubblewrap only loads it. A profile is a JSON document in Docker's
format (``defaultAction``, ``defaultErrnoRet``, ``architectures`` / ``archMap``, ``syscalls``),
so admins can reuse what they know from ``docker run --security-opt seccomp=...``. The built-in
default (``seccomp_default.json``) denies everything with EPERM and allows what a Python/Jupyter
kernel needs; it blocks namespace creation, mounts, module loading, kexec, bpf, perf, keyrings,
io_uring, userfaultfd, clock setting, AF_ALG/AF_VSOCK sockets and answers ``clone3`` with ENOSYS.

Flow: ``load_profile(path)`` (parse + validate, 4xx on a bad file) → ``compile_profile(profile)``
(libseccomp via ``pyseccomp``, 5xx ``SeccompError`` if libseccomp refuses) → ``seccomp_fd(bpf)``
(a sealed memfd the launcher hands to bwrap with ``pass_fds`` and closes after spawn).
``compiled(path)`` caches the BPF by (path, mtime) because every kernel launch needs it.

Semantics follow runc/Docker where they matter: names unknown to libseccomp are skipped (a newer
profile must still work on an older libseccomp); rules whose action equals the default action
are skipped (libseccomp refuses them); several conditions on the *same* argument are OR-ed (one
rule each), conditions on different arguments are AND-ed. ``includes``/``excludes`` support
``minKernel`` and ``arches``; rules gated on capabilities never apply, because sandboxes hold none.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyseccomp

from sandboxd.errors import InvalidRequest, SeccompError

log = logging.getLogger(__name__)

DEFAULT_PROFILE_PATH = Path(__file__).with_name("seccomp_default.json")

_ACTIONS: dict[str, int | None] = {
    # None marks actions that take an errno/trace value (errnoRet).
    "SCMP_ACT_KILL": pyseccomp.KILL,
    "SCMP_ACT_KILL_THREAD": pyseccomp.KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": pyseccomp.KILL_PROCESS,
    "SCMP_ACT_TRAP": pyseccomp.TRAP,
    "SCMP_ACT_ERRNO": None,
    "SCMP_ACT_TRACE": None,
    "SCMP_ACT_ALLOW": pyseccomp.ALLOW,
    "SCMP_ACT_LOG": pyseccomp.LOG,
}
_ALLOWING = {"SCMP_ACT_ALLOW", "SCMP_ACT_LOG"}

_OPS: dict[str, int] = {
    "SCMP_CMP_NE": pyseccomp.NE,
    "SCMP_CMP_LT": pyseccomp.LT,
    "SCMP_CMP_LE": pyseccomp.LE,
    "SCMP_CMP_EQ": pyseccomp.EQ,
    "SCMP_CMP_GE": pyseccomp.GE,
    "SCMP_CMP_GT": pyseccomp.GT,
    "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ,
}

# Every SCMP_ARCH_* name pyseccomp knows; other well-formed names are accepted and skipped.
_ARCHES: dict[str, int] = {
    f"SCMP_ARCH_{name}": value
    for name, value in vars(pyseccomp.Arch).items()
    if name.isupper() and name != "NATIVE"
}
# Docker writes includes.arches with Go's names; accept both spellings.
_ARCH_ALIASES: dict[str, set[str]] = {
    "SCMP_ARCH_X86_64": {"amd64", "x86_64"},
    "SCMP_ARCH_X86": {"386", "x86", "i386"},
    "SCMP_ARCH_X32": {"x32"},
    "SCMP_ARCH_AARCH64": {"arm64", "aarch64"},
    "SCMP_ARCH_ARM": {"arm"},
}
_ARCH_RE = re.compile(r"^SCMP_ARCH_[A-Z0-9_]+$")
_MAX_ERRNO = 4095
_U64 = 2**64
_SCMP_ERROR = -1  # what seccomp_syscall_resolve_name returns for a name it does not know


# --------------------------------------------------------------------------- loading


def load_profile(path: str | None) -> dict[str, Any]:
    """Read and validate a profile; ``None`` is the built-in default.

    A bad admin file is a refused request (400), not a host failure, so it is reported as
    ``InvalidRequest`` naming the file and the reason, before any sandbox is made.
    """
    source = str(path) if path is not None else str(DEFAULT_PROFILE_PATH)
    try:
        with open(source, encoding="utf-8") as fh:
            profile = json.load(fh)
    except OSError as exc:
        raise InvalidRequest(
            f"seccomp profile {source}: cannot read: {exc.strerror}", reason="seccomp-profile"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequest(
            f"seccomp profile {source}: not valid JSON: {exc}", reason="seccomp-profile"
        ) from exc
    validate_profile(profile, source=source)
    return profile


def validate_profile(profile: Any, *, source: str = "<profile>") -> None:
    """Check structure, action, operator and arch names; raise ``InvalidRequest`` if wrong."""
    try:
        _check_profile(profile)
    except _ProfileError as exc:
        raise InvalidRequest(f"seccomp profile {source}: {exc}", reason="seccomp-profile") from None


class _ProfileError(ValueError):
    """Internal: one validation failure, turned into ``InvalidRequest`` with the file name."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise _ProfileError(message)


def _check_profile(profile: Any) -> None:
    _require(isinstance(profile, dict), "top level must be a JSON object")
    _check_action(profile.get("defaultAction"), "defaultAction")
    _check_errno(profile.get("defaultErrnoRet"), "defaultErrnoRet")
    _check_arch_list(profile.get("architectures", []), "architectures")
    arch_map = profile.get("archMap", [])
    _require(isinstance(arch_map, list), "archMap must be a list")
    for i, entry in enumerate(arch_map):
        where = f"archMap[{i}]"
        _require(isinstance(entry, dict), f"{where} must be an object")
        _check_arch_list([entry.get("architecture")], f"{where}.architecture")
        _check_arch_list(entry.get("subArchitectures") or [], f"{where}.subArchitectures")
    rules = profile.get("syscalls", [])
    _require(isinstance(rules, list), "syscalls must be a list")
    for i, rule in enumerate(rules):
        _check_rule(rule, f"syscalls[{i}]")
    _check_conflicts(rules)


def _check_action(action: Any, where: str) -> None:
    _require(isinstance(action, str), f"{where} must be a string")
    known = ", ".join(sorted(_ACTIONS))
    _require(action in _ACTIONS, f"{where}: unknown or unsupported action {action!r} ({known})")


def _check_errno(value: Any, where: str) -> None:
    if value is None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_ERRNO
    _require(ok, f"{where} must be an integer errno in 0..{_MAX_ERRNO}")


def _check_arch_list(arches: Any, where: str) -> None:
    _require(isinstance(arches, list), f"{where} must be a list")
    for arch in arches:
        ok = isinstance(arch, str) and _ARCH_RE.match(arch) is not None
        _require(ok, f"{where}: {arch!r} is not an SCMP_ARCH_* name")


def _check_rule(rule: Any, where: str) -> None:
    _require(isinstance(rule, dict), f"{where} must be an object")
    names = _rule_names(rule)
    _require(bool(names), f"{where} needs a non-empty 'names' list (or 'name')")
    for name in names:
        _require(isinstance(name, str) and name != "", f"{where}: syscall names must be strings")
    _check_action(rule.get("action"), f"{where}.action")
    _check_errno(rule.get("errnoRet"), f"{where}.errnoRet")
    args = rule.get("args") or []
    _require(isinstance(args, list) and len(args) <= 6, f"{where}.args must be a list of <= 6")
    for j, arg in enumerate(args):
        _check_arg(arg, f"{where}.args[{j}]")
    for key in ("includes", "excludes"):
        _check_filter(rule.get(key) or {}, f"{where}.{key}")


def _check_conflicts(rules: list[dict[str, Any]]) -> None:
    """Refuse two unconditional rules giving one name different actions.

    libseccomp silently keeps the first, so an admin who appends "deny uname" to a profile
    that already allows it would get no error and no effect.
    """
    seen: dict[str, tuple[str, Any, int]] = {}
    for i, rule in enumerate(rules):
        if rule.get("args") or rule.get("includes") or rule.get("excludes"):
            continue
        action = (rule["action"], rule.get("errnoRet"))
        for name in _rule_names(rule):
            first = seen.setdefault(name, (*action, i))
            _require(
                first[:2] == action,
                f"syscalls[{i}]: {name!r} already has action {first[0]} in syscalls[{first[2]}]",
            )


def _check_arg(arg: Any, where: str) -> None:
    _require(isinstance(arg, dict), f"{where} must be an object")
    index = arg.get("index")
    _require(isinstance(index, int) and 0 <= index <= 5, f"{where}.index must be 0..5")
    for key in ("value", "valueTwo"):
        v = arg.get(key, 0)
        ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _U64
        _require(ok, f"{where}.{key} must be an unsigned 64-bit integer")
    _require(arg.get("op") in _OPS, f"{where}.op: unknown operator {arg.get('op')!r}")


def _check_filter(flt: Any, where: str) -> None:
    _require(isinstance(flt, dict), f"{where} must be an object")
    kernel = flt.get("minKernel")
    if kernel is not None:
        ok = isinstance(kernel, str) and re.match(r"^\d+\.\d+$", kernel) is not None
        _require(ok, f"{where}.minKernel must look like '4.8'")
    for key in ("arches", "caps"):
        items = flt.get(key, [])
        ok = isinstance(items, list) and all(isinstance(x, str) for x in items)
        _require(ok, f"{where}.{key} must be a list of strings")


def _rule_names(rule: Mapping[str, Any]) -> list[Any]:
    """Docker's current ``names`` list, or the legacy single ``name``."""
    names = rule.get("names")
    if names is None and "name" in rule:
        names = [rule["name"]]
    return list(names) if isinstance(names, list) else []


# --------------------------------------------------------------------------- compiling


def compile_profile(profile: dict[str, Any]) -> bytes:
    """Compile a profile to a classic-BPF program for the host's arch and its sub-arches.

    Only exported, never loaded here: bwrap loads it in the sandbox after setting
    no_new_privs itself, so the filter's own NNP attribute is switched off.
    """
    validate_profile(profile)
    try:
        flt = _build_filter(profile)
        return _export_bpf(flt)
    except OSError as exc:
        raise SeccompError(f"libseccomp refused the profile: {exc}") from exc


def _build_filter(profile: Mapping[str, Any]) -> pyseccomp.SyscallFilter:
    default = _action_value(profile["defaultAction"], profile.get("defaultErrnoRet"), None)
    flt = pyseccomp.SyscallFilter(defaction=default)
    flt.set_attr(pyseccomp.Attr.CTL_NNP, 0)
    for arch in _target_arches(profile):
        if not flt.exist_arch(arch):
            flt.add_arch(arch)
    for rule in profile.get("syscalls", []):
        if _rule_applies(rule):
            _add_rule(flt, rule, profile, default)
    return flt


def _action_value(action: str, errno_ret: int | None, default_errno: int | None) -> int:
    """The SCMP_ACT_* constant; ERRNO/TRACE fall back to defaultErrnoRet, then EPERM (runc)."""
    value = _ACTIONS[action]
    if value is not None:
        return value
    code = errno_ret if errno_ret is not None else default_errno
    code = errno.EPERM if code is None else code
    return pyseccomp.ERRNO(code) if action == "SCMP_ACT_ERRNO" else pyseccomp.TRACE(code)


def _add_rule(
    flt: pyseccomp.SyscallFilter, rule: Mapping[str, Any], profile: Mapping[str, Any], default: int
) -> None:
    action = _action_value(rule["action"], rule.get("errnoRet"), profile.get("defaultErrnoRet"))
    if action == default:
        return  # libseccomp refuses rules that repeat the default action; they change nothing
    groups = _arg_groups(rule.get("args") or [])
    for name in _rule_names(rule):
        nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        if nr == _SCMP_ERROR:
            log.debug("seccomp: skipping syscall %r unknown to libseccomp", name)
            continue
        for group in groups:
            try:
                flt.add_rule(action, nr, *group)
            except OSError as exc:
                raise SeccompError(f"libseccomp refused the rule for {name!r}: {exc}") from exc


def _arg_groups(args: list[Mapping[str, Any]]) -> list[tuple[pyseccomp.Arg, ...]]:
    """AND conditions on distinct arguments; OR (one rule each) if an index repeats, like runc."""
    conds = [_arg(a) for a in args]
    indexes = [a["index"] for a in args]
    if len(set(indexes)) == len(indexes):
        return [tuple(conds)]
    return [(c,) for c in conds]


def _arg(arg: Mapping[str, Any]) -> pyseccomp.Arg:
    """Docker's value/valueTwo map straight to libseccomp's datum_a/datum_b (mask, value)."""
    return pyseccomp.Arg(arg["index"], _OPS[arg["op"]], arg.get("value", 0), arg.get("valueTwo", 0))


def _native_arch_name() -> str | None:
    native = pyseccomp.system_arch()
    return next((name for name, value in _ARCHES.items() if value == native), None)


def _target_arches(profile: Mapping[str, Any]) -> list[int]:
    """Native arch plus its archMap sub-arches (Docker's rule), else the listed architectures.

    Arches libseccomp/pyseccomp do not know are skipped; a foreign main arch would only
    grow the program, since the host cannot run it without its own emulation layer.
    """
    native = _native_arch_name()
    names: list[str] = list(profile.get("architectures", []))
    for entry in profile.get("archMap", []):
        if entry.get("architecture") == native:
            names = [entry["architecture"], *(entry.get("subArchitectures") or [])]
            break
    return [_ARCHES[n] for n in names if n in _ARCHES]


def _kernel_version() -> tuple[int, int]:
    match = re.match(r"^(\d+)\.(\d+)", os.uname().release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _rule_applies(rule: Mapping[str, Any]) -> bool:
    """Evaluate includes/excludes for this host: kernel version, arch, and (no) capabilities."""
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    kernel = _kernel_version()
    native = _native_arch_name() or ""
    arch_names = {native, *_ARCH_ALIASES.get(native, set())}
    if inc.get("caps"):
        return False  # sandboxes run with an empty capability set
    if "minKernel" in inc and kernel < _parse_version(inc["minKernel"]):
        return False
    if "minKernel" in exc and kernel >= _parse_version(exc["minKernel"]):
        return False
    if inc.get("arches") and not arch_names & set(inc["arches"]):
        return False
    return not (exc.get("arches") and arch_names & set(exc["arches"]))


def _parse_version(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def _export_bpf(flt: pyseccomp.SyscallFilter) -> bytes:
    """libseccomp writes BPF to an fd only; use an anonymous memfd and read it back."""
    fd = os.memfd_create("sandboxd-seccomp-export", os.MFD_CLOEXEC)
    try:
        with os.fdopen(fd, "w+b", closefd=False) as fh:
            flt.export_bpf(fh)
        os.lseek(fd, 0, os.SEEK_SET)
        size = os.fstat(fd).st_size
        return _read_exact(fd, size)
    finally:
        os.close(fd)


def _read_exact(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = os.read(fd, remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def compiled(path: str | None) -> bytes:
    """BPF for a profile file, cached by (path, mtime, size): compiling costs ~ms per launch."""
    source = os.path.abspath(path) if path is not None else str(DEFAULT_PROFILE_PATH)
    try:
        st = os.stat(source)
    except OSError as exc:
        raise InvalidRequest(
            f"seccomp profile {source}: cannot read: {exc.strerror}", reason="seccomp-profile"
        ) from exc
    return _compiled_cached(source if path is not None else None, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=32)
def _compiled_cached(path: str | None, mtime_ns: int, size: int) -> bytes:
    del mtime_ns, size  # part of the cache key only
    return compile_profile(load_profile(path))


# --------------------------------------------------------------------------- handing over


def seccomp_fd(bpf: bytes) -> int:
    """A memfd at offset 0 holding ``bpf``, for ``bwrap --seccomp FD``.

    Sealed against writes and resizing when the kernel allows, so nothing that shares the fd can
    swap the program between compile and load. It is close-on-exec: pass it with ``pass_fds``
    (which makes it inheritable in that child only) and close it after the spawn.
    """
    if not bpf or len(bpf) % 8:
        raise SeccompError(f"not a BPF program: {len(bpf)} bytes is not a multiple of 8")
    try:
        fd = os.memfd_create("sandboxd-seccomp", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except OSError as exc:
        raise SeccompError(f"memfd_create for the seccomp program failed: {exc}") from exc
    try:
        _write_all(fd, bpf)
        _seal(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError as exc:
        os.close(fd)
        raise SeccompError(f"writing the seccomp program failed: {exc}") from exc
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _seal(fd: int) -> None:
    seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    except OSError as exc:  # old kernel or filesystem without sealing: a plain memfd still works
        log.debug("seccomp: could not seal memfd: %s", exc)


# --------------------------------------------------------------------------- introspection


def denied_syscalls(profile: Mapping[str, Any], universe: Iterable[str] | None = None) -> set[str]:
    """Names for which at least some calls do not get an allowing action (for docs and tests).

    A name counts as denied when a rule denies it, or when the default denies and no
    unconditional allow rule covers it (so conditionally allowed ``clone``/``socket`` count).
    ``universe`` defaults to every name the profile mentions plus the native syscall table.
    """
    names = set(universe) if universe is not None else set(_native_syscall_names())
    rules = [r for r in profile.get("syscalls", []) if _rule_applies(r)]
    for rule in profile.get("syscalls", []):
        names.update(n for n in _rule_names(rule) if isinstance(n, str))
    default_denies = profile.get("defaultAction") not in _ALLOWING
    return {n for n in names if _is_denied(n, rules, default_denies)}


def _is_denied(name: str, rules: list[Mapping[str, Any]], default_denies: bool) -> bool:
    mine = [r for r in rules if name in _rule_names(r)]
    if any(r["action"] not in _ALLOWING for r in mine):
        return True
    fully_allowed = any(r["action"] in _ALLOWING and not r.get("args") for r in mine)
    return default_denies and not fully_allowed


@functools.lru_cache(maxsize=1)
def _native_syscall_names() -> frozenset[str]:
    """Every syscall name libseccomp knows for the native arch (numbers 0..1023)."""
    names = set()
    for nr in range(1024):
        try:
            names.add(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, nr).decode())
        except ValueError:
            continue
    return frozenset(names)
