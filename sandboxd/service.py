"""The daemon's core: users, admission, the sandbox lifecycle and recovery after a restart.

HTTP handlers call this class and nothing below it; it calls the runtime and the state store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any

from . import __version__, admission, metrics
from .config import Config, Quota, parse_quota
from .errors import Conflict, Forbidden, InvalidRequest, NotFound, Refused, SandboxdError
from .network.manager import NetworkManager
from .runtime.sandbox import Exit, LiveSandbox, Runtime
from .spec import Limits, SandboxSpec
from .state import SandboxRecord, Store, User

log = logging.getLogger("sandboxd")

ACTIVE = ("created", "running")
HOUSEKEEPING_SECONDS = 1.0


def iso(ts: float | None) -> str | None:
    """Jupyter-style UTC timestamps: microseconds and a ``Z``."""
    if ts is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts % 1 * 1e6):06d}Z"


class Sandboxd:
    """One sandboxd instance: owns the store, the runtime and every sandbox's lifecycle."""

    def __init__(self, config: Config) -> None:
        self.config = config
        os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
        self.store = Store(
            os.path.join(config.state_dir, "state.db"),
            config.tenant_uid_base,
            config.tenant_uid_count,
        )
        self.runtime = Runtime(
            instance=config.instance, run_dir=config.run_dir, state_dir=config.state_dir
        )
        self.networks = NetworkManager(lambda: self.config, self.store.db)
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[Any]] = []
        self.exit_listeners: list[Any] = []

    # start-up --------------------------------------------------------------------------------

    def bootstrap_admin(self) -> str:
        """Create the admin user and token file on first start; return the token file path."""
        path = os.path.join(self.config.state_dir, "admin-token")
        if self.store.get_user("admin", missing_ok=True) is None:
            self.store.add_user("admin", admin=True)
        if not os.path.exists(path):
            token = self.store.new_token("admin", note="admin-token file")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(token + "\n")
        return path

    async def recover(self) -> None:
        """Re-adopt sandboxes still running; finish those that ended; remove half-made ones."""
        known: set[str] = set()
        for rec in self.store.list_sandboxes():
            known.add(rec.id)
            if rec.state not in ACTIVE:
                continue
            spec = SandboxSpec.from_json(rec.spec)
            if rec.state == "created":
                log.warning("removing %s: half-made when the daemon stopped", rec.id)
                self.runtime.release(spec)
                self.store.delete_sandbox(rec.id)
                continue
            live = self.runtime.adopt(spec, rec.pid)
            if live is None:
                self._record_exit(spec, self.runtime.exit_of_lost(spec))
            else:
                live.on_exit.append(self._on_exit)
                log.info("re-adopted %s (pid %s)", rec.id, rec.pid)
        for user, sid in self.runtime.orphans(known):
            log.warning("removing leftover %s/%s", user, sid)
            self.runtime.remove_orphan(user, sid)
        self.networks.restore({r.id for r in self.store.list_sandboxes(states=("running",))})

    def start_background(self) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(self._housekeeping()))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.store.close()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                self._cap_logs()
                await self._enforce_lifetimes()
            except Exception:
                log.exception("housekeeping failed")

    def _cap_logs(self) -> None:
        cap = self.config.log_max_bytes
        for sid in list(self.runtime.live):
            for stream in ("stdout", "stderr"):
                path = self.runtime.log_path(sid, stream)
                with contextlib.suppress(OSError):
                    if os.path.getsize(path) > cap:
                        _keep_tail(path, cap // 2)

    async def _enforce_lifetimes(self) -> None:
        now = time.time()
        for live in list(self.runtime.live.values()):
            lifetime = live.spec.lifetime
            if lifetime and now - live.started > lifetime and not live.stopping:
                log.info("%s reached its lifetime of %ss", live.spec.id, lifetime)
                asyncio.get_running_loop().create_task(
                    self.runtime.stop(live, self.config.stop_grace_seconds)
                )

    # users -------------------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> User | None:
        return self.store.user_for_token(token) if token else None

    def add_user(self, actor: User, body: Any) -> dict[str, Any]:
        if not actor.service:
            _require_admin(actor)
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise InvalidRequest('expected {"name": ...}')
        name = body["name"]
        if not admission.USER_NAME.fullmatch(name):
            raise InvalidRequest(f"name: {name!r} must match {admission.USER_NAME.pattern}")
        for key in ("admin", "service"):
            if not isinstance(body.get(key, False), bool):
                raise InvalidRequest(f"{key}: expected true or false")
            if body.get(key) and not actor.admin:
                raise Forbidden(f"only an admin may create {key} users", reason="not-admin")
        user = self.store.add_user(
            name, admin=body.get("admin", False), service=body.get("service", False)
        )
        token = self.store.new_token(name)
        self.store.audit(actor.name, "user-add", name)
        return {**user.to_json(), "token": token}

    def user_model(self, actor: User, name: str) -> dict[str, Any]:
        if not actor.admin and actor.name != name:
            target = self.store.get_user(name, missing_ok=True)
            if target is None or not acts_for(actor, target):
                raise NotFound(f"no user {name!r}", reason="unknown-user")
        return self.store.get_user(name).to_json()  # type: ignore[union-attr]

    def list_users(self, actor: User) -> list[dict[str, Any]]:
        _require_admin(actor)
        return [u.to_json() for u in self.store.list_users()]

    async def remove_user(self, actor: User, name: str) -> None:
        _require_admin(actor)
        user = self.store.get_user(name)
        if user and user.admin and name == "admin":
            raise Forbidden("the admin user cannot be removed", reason="admin")
        for rec in self.store.list_sandboxes(user=name):
            await self.remove(actor, rec.id, force=True)
        self.networks.remove_user(name)
        self.store.remove_user(name)
        self.runtime.cgroups.remove_user(name)
        self.store.audit(actor.name, "user-rm", name)

    def new_token(self, actor: User, name: str) -> str:
        if not acts_for(actor, self.store.get_user(name)):  # type: ignore[arg-type]
            _require_admin(actor)
        return self.store.new_token(name)

    # quotas ------------------------------------------------------------------------------------

    def quota_for(self, user: str) -> tuple[Quota, str]:
        override = self.store.get_quota(user)
        if override is not None:
            return parse_quota(override, f"quota of {user}", self.config.quota_for(user)), "api"
        return self.config.quota_for(user), "config"

    def usage(self, user: str) -> admission.Usage:
        usage = admission.Usage()
        for rec in self.store.list_sandboxes(user=user, states=ACTIVE):
            usage.add(Limits.from_json(rec.spec["limits"]), rec.kind)
        return usage

    def quota_model(self, actor: User, name: str) -> dict[str, Any]:
        if not actor.admin and actor.name != name:
            raise NotFound(f"no user {name!r}", reason="unknown-user")
        self.store.get_user(name)
        quota, source = self.quota_for(name)
        return {
            "user": name,
            "quota": quota.to_json(),
            "usage": self.usage(name).to_json(),
            "source": source,
        }

    def set_quota(self, actor: User, name: str, body: Any) -> dict[str, Any]:
        _require_admin(actor)
        self.store.get_user(name)
        current, _ = self.quota_for(name)
        quota = parse_quota(body, "quota", current)
        self.store.set_quota(name, quota.to_json())
        self._apply_user_limits(name, quota)
        self.store.audit(actor.name, "quota-set", name, str(quota.to_json()))
        return self.quota_model(actor, name)

    def reset_quota(self, actor: User, name: str) -> dict[str, Any]:
        _require_admin(actor)
        self.store.delete_quota(name)
        self._apply_user_limits(name, self.config.quota_for(name))
        return self.quota_model(actor, name)

    def _apply_user_limits(self, name: str, quota: Quota) -> None:
        if any(u == name for u, _ in self.runtime.cgroups.list()):
            self.runtime.cgroups.ensure_user(name, _user_limits(quota))

    # sandboxes ---------------------------------------------------------------------------------

    def owner_for(self, actor: User, body: Any) -> User:
        wanted = body.get("user") if isinstance(body, dict) else None
        if wanted is None or wanted == actor.name:
            return actor
        if not isinstance(wanted, str):
            raise InvalidRequest("user: expected a user name")
        target = self.store.get_user(wanted)
        if not acts_for(actor, target):  # type: ignore[arg-type]
            raise Forbidden(
                "only an admin (or a service, for plain users) may create "
                "sandboxes for another user",
                reason="not-admin",
            )
        return target  # type: ignore[return-value]

    async def create(
        self,
        actor: User,
        body: Any,
        *,
        kind: str = "sandbox",
        owner: User | None = None,
        sid: str | None = None,
        extra_dirs: tuple[str, ...] = (),
        prepare: Any = None,
    ) -> tuple[SandboxRecord, LiveSandbox]:
        """Admit, record, build and start a sandbox; nothing is left behind if it fails."""
        owner = owner or self.owner_for(actor, body)
        try:
            spec = admission.build_spec(body, owner, self.config, kind=kind, sid=sid)
            quota, _ = self.quota_for(owner.name)
            admission.check_quota(owner.name, quota, self.usage(owner.name), spec.limits, kind)
        except Refused as exc:
            metrics.admission_refused(owner.name, exc.reason)
            raise
        # the "created" record counts in usage() from here on; admission and the insert run
        # with no await between them, so concurrent starts cannot overshoot a quota
        now = time.time()
        rec = SandboxRecord(
            id=spec.id,
            name=spec.name,
            user=owner.name,
            kind=kind,
            state="created",
            spec=spec.to_json(),
            pid=None,
            created=now,
            started=None,
            finished=None,
            exit_code=None,
            oom_killed=False,
            reason="",
        )
        self.store.insert_sandbox(rec)
        began = time.monotonic()
        try:
            attached = self.networks.attach(spec, self._find_running)
            spec = dataclasses.replace(
                spec, etc_hosts=attached.etc_hosts, etc_resolv=attached.etc_resolv
            )
            self.store.update_sandbox(spec.id, spec=json.dumps(spec.to_json()))
            live = await self.runtime.start(
                spec,
                user_limits=_user_limits(quota),
                extra_dirs=extra_dirs,
                prepare=prepare,
                net=attached.plan,
            )
        except BaseException:
            metrics.observe_start(kind, "failure", time.monotonic() - began)
            self.networks.release(spec.id)
            self.store.delete_sandbox(spec.id)
            raise
        metrics.observe_start(kind, "success", time.monotonic() - began)
        rec.state, rec.pid, rec.started = "running", live.pid, live.started
        self.store.update_sandbox(spec.id, state="running", pid=live.pid, started=live.started)
        live.on_exit.append(self._on_exit)
        self.store.audit(actor.name, "create", spec.id, spec.name)
        return rec, live

    def _on_exit(self, live: LiveSandbox, result: Exit) -> None:
        self._record_exit(live.spec, result)

    def _record_exit(self, spec: SandboxSpec, result: Exit) -> None:
        self.store.update_sandbox(
            spec.id,
            state="exited",
            exit_code=result.code,
            oom_killed=result.oom_killed,
            reason=result.reason,
            finished=result.finished,
        )
        metrics.sandbox_exited(self, spec, result)  # before the cgroup (and its OOM count) goes
        with contextlib.suppress(SandboxdError):
            self.runtime.cgroups.remove(spec.user, spec.id)
        self._release_network(spec.id)
        for listener in self.exit_listeners:
            with contextlib.suppress(Exception):
                listener(spec, result)
        if spec.auto_remove:
            asyncio.get_running_loop().call_later(2.0, self._auto_remove, spec)

    def _release_network(self, sid: str) -> None:
        """Free the sandbox's network; sandboxes that joined it (container:<id>) end too."""
        try:
            joiners = self.networks.release(sid)
        except SandboxdError as exc:
            log.error("releasing the network of %s: %s", sid, exc.message)
            return
        for other in joiners:
            live = self.runtime.live.get(other)
            if live is not None and not live.stopping:
                log.info("stopping %s: the sandbox whose network it joined ended", other)
                asyncio.get_running_loop().create_task(self.runtime.stop(live, 0))

    def _find_running(self, user: str, ref: str) -> tuple[str, str] | None:
        """(id, netns path) of a running sandbox of ``user``, for network container:<ref>."""
        rec = self.store.find_sandbox(ref, user)
        live = self.runtime.live.get(rec.id) if rec else None
        if rec is None or live is None:
            return None
        return rec.id, f"/proc/{live.pid}/ns/net"

    def _auto_remove(self, spec: SandboxSpec) -> None:
        self._release_network(spec.id)
        self.runtime.release(spec)
        self.store.delete_sandbox(spec.id)

    def lookup(self, actor: User, ref: str) -> SandboxRecord:
        rec = self.store.find_sandbox(ref, None if actor.admin else actor.name)
        if rec is None and actor.service:  # a service (a JupyterHub) manages plain users'
            rec = self.store.find_sandbox(ref, None)
            owner = self.store.get_user(rec.user, missing_ok=True) if rec else None
            if owner is None or not acts_for(actor, owner):
                rec = None
        if rec is None:
            raise NotFound(f"no such sandbox: {ref}", reason="unknown-sandbox")
        return rec

    def list(
        self, actor: User, all_states: bool = False, kind: str | None = None
    ) -> list[SandboxRecord]:
        return self.store.list_sandboxes(
            user=None if actor.admin else actor.name,
            kind=kind,
            states=None if all_states else ACTIVE,
        )

    def update_limits(self, actor: User, ref: str, body: Any) -> SandboxRecord:
        """Change cpus / memory / pids of a running sandbox, within its profile and the quota."""
        rec = self.lookup(actor, ref)
        if rec.id not in self.runtime.live:
            raise Conflict(f"sandbox {rec.id} is not running", reason="not-running")
        if not isinstance(body, dict) or not body or set(body) - {"cpus", "memory", "pids"}:
            raise InvalidRequest("expected an object with cpus, memory and/or pids")
        spec = SandboxSpec.from_json(rec.spec)
        old = spec.limits
        merged = {
            "cpus": old.cpus,
            "memory": old.memory,
            "pids": old.pids,
            "swap": old.swap,
            "disk": old.disk,
            **body,
        }
        new = admission.limits_for(merged, self.config.profile(spec.profile))
        new = dataclasses.replace(old, cpus=new.cpus, memory=new.memory, pids=new.pids)
        usage = self.usage(rec.user)
        usage.sandboxes -= 1
        usage.memory -= old.memory or 0
        usage.cpus -= old.cpus or 0.0
        quota, _ = self.quota_for(rec.user)
        admission.check_quota(rec.user, quota, usage, new)
        self.runtime.cgroups.update(rec.user, rec.id, new)
        spec = dataclasses.replace(spec, limits=new)
        self.store.update_sandbox(rec.id, spec=json.dumps(spec.to_json()))
        live = self.runtime.live.get(rec.id)
        if live is not None:
            live.spec = spec
        self.store.audit(actor.name, "update", rec.id, json.dumps(body))
        return self.lookup(actor, rec.id)

    async def stop(self, actor: User, ref: str, timeout: float | None = None) -> SandboxRecord:
        rec = self.lookup(actor, ref)
        live = self.runtime.live.get(rec.id)
        if live is not None:
            grace = self.config.stop_grace_seconds if timeout is None else timeout
            await self.runtime.stop(live, grace)
        return self.lookup(actor, rec.id)

    async def remove(self, actor: User, ref: str, force: bool = False) -> None:
        rec = self.lookup(actor, ref)
        live = self.runtime.live.get(rec.id)
        if live is not None:
            if not force:
                raise Conflict(
                    f"sandbox {rec.id} is running; stop it or use force", reason="running"
                )
            await self.runtime.stop(live, 0)
        self._release_network(rec.id)
        self.runtime.release(SandboxSpec.from_json(rec.spec))
        self.store.delete_sandbox(rec.id)
        self.store.audit(actor.name, "remove", rec.id)

    async def wait(self, actor: User, ref: str) -> dict[str, Any]:
        rec = self.lookup(actor, ref)
        live = self.runtime.live.get(rec.id)
        if live is not None:
            result = await asyncio.shield(live.exited)
            return {
                "exit_code": result.code,
                "oom_killed": result.oom_killed,
                "reason": result.reason,
            }
        rec = self.lookup(actor, rec.id)
        return {"exit_code": rec.exit_code, "oom_killed": rec.oom_killed, "reason": rec.reason}

    def logs(self, actor: User, ref: str, tail: int | None = None) -> dict[str, Any]:
        rec = self.lookup(actor, ref)
        out: dict[str, Any] = {"truncated": False}
        for stream in ("stdout", "stderr"):
            try:
                with open(self.runtime.log_path(rec.id, stream), "rb") as fh:
                    data = fh.read()
            except OSError:
                data = b""
            text = data.decode(errors="replace")
            if tail is not None:
                text = "\n".join(text.splitlines()[-tail:]) + ("\n" if text else "")
            out[stream] = text
        return out

    def raw_stats(self, rec: SandboxRecord) -> dict[str, Any] | None:
        if rec.id not in self.runtime.live:
            return None
        try:
            stats = self.runtime.cgroups.stats(rec.user, rec.id)
        except SandboxdError:
            return None
        return dict(stats.__dict__)

    def network_counters(self, records: list[SandboxRecord]) -> dict[str, dict[str, Any]]:
        """rx/tx counters of each record's veth, by sandbox id; none for sandboxes without one."""
        return self.networks.counters({r.id for r in records})

    def model(self, rec: SandboxRecord) -> dict[str, Any]:
        spec = rec.spec
        return {
            "id": rec.id,
            "name": rec.name,
            "user": rec.user,
            "kind": rec.kind,
            "state": rec.state,
            "command": spec["command"],
            "profile": spec["profile"],
            "image": spec["image"],
            "limits": spec["limits"],
            "uid": spec["uid"],
            "pid": rec.pid if rec.state == "running" else None,
            "network": spec["network"],
            "volumes": spec["volumes"],
            "workdir": spec["workdir"],
            "created": iso(rec.created),
            "started": iso(rec.started),
            "finished": iso(rec.finished),
            "exit_code": rec.exit_code,
            "oom_killed": rec.oom_killed,
            "reason": rec.reason,
            "labels": dict(spec.get("labels", ())),
            "ports": list(spec.get("ports", ())),
            "network_settings": self.networks.describe(rec.id),
        }

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "instance": self.config.instance,
            "cgroup_version": self.runtime.cgroups.version,
            "running": len(self.runtime.live),
            "sandboxes": self.store.count("sandboxes"),
            "users": self.store.count("users"),
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }


def acts_for(actor: User, target: User) -> bool:
    """May ``actor`` manage ``target``'s users, tokens, volumes and sandboxes? Admins manage
    everyone; a service token (a JupyterHub) manages plain users, never admins or services."""
    return actor.admin or (actor.service and not target.admin and not target.service)


def _require_admin(actor: User) -> None:
    if not actor.admin:
        raise Forbidden("this needs an admin token", reason="not-admin")


def _user_limits(quota: Quota) -> Limits:
    """The user-level cgroup carries the user's aggregate quota, enforced by the kernel."""
    return Limits(cpus=quota.cpus, memory=quota.memory)


def _keep_tail(path: str, keep: int) -> None:
    """copytruncate: keep the last ``keep`` bytes; the writer's O_APPEND follows the new end."""
    with open(path, "r+b") as fh:
        fh.seek(-keep, os.SEEK_END)
        tail = fh.read()
        fh.seek(0)
        fh.truncate()
        fh.write(b"[... earlier output dropped: log size limit ...]\n" + tail)
