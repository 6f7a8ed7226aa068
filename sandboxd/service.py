"""The daemon's core: users, admission, the sandbox lifecycle and recovery after a restart.

Lifecycle: ``create`` admits and records, then ``Runtime.start`` runs the ordered steps
(network included); an exit is recorded at once and released in the background; ``remove``
waits for that release, then deletes the log and the record. ``Runtime.release`` is the one
teardown. Everything that blocks runs in a thread lane (``blocking``); the loop only waits.
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

from . import __version__, admission, blocking, faults, metrics, volumes
from .config import Config, Quota, parse_quota
from .errors import Conflict, Forbidden, InvalidRequest, NotFound, Reason, Refused, SandboxdError
from .images import run as image_run
from .images.manager import ImageManager
from .models.requests import LimitsUpdate, UserCreate
from .models.types import validate
from .network.manager import Attached, NetworkManager
from .runtime import idmap, output
from .runtime.plan import RunDir
from .runtime.sandbox import Exit, LiveSandbox, Runtime
from .spec import Limits, SandboxSpec
from .state import SandboxRecord, Store, User, acts_for

log = logging.getLogger("sandboxd")

ACTIVE = ("created", "running")
HOUSEKEEPING_SECONDS = 1.0
AUTO_REMOVE_DELAY = 2.0  # seconds an auto-removed sandbox's exit stays readable
LAG_TICK = 0.05
AUDIT_TRIM_ROUNDS = 60  # housekeeping rounds between trims of the audit log


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
        self.networks = NetworkManager(lambda: self.config, self.store.db, self.store.connect())
        self.images = ImageManager(config.state_dir, lambda: self.config.images)
        self.runtime = Runtime(
            instance=config.instance,
            run_dir=config.run_dir,
            state_dir=config.state_dir,
            networks=_RuntimeNetworks(self),
            open_volumes=lambda spec: volumes.open_mounts(self.config, spec),
            log_max_bytes=config.log_max_bytes,
            log_rate=config.log_rate_bytes,
            stdin_buffer=config.attach_stdin_buffer,
            images=self.images,
            id_span=min(idmap.SPAN, config.tenant_uid_base),
        )
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[Any]] = []
        self.exit_listeners: list[Any] = []
        self.releasing: dict[str, asyncio.Task[None]] = {}
        self.joins: dict[str, tuple[str, str]] = {}  # sandbox → (target id, "fd:N" of a pidfd)

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
        known: set[str] = set()  # active records: their host objects stay
        for rec in self.store.list_sandboxes():
            if rec.state not in ACTIVE:
                continue  # an exit the daemon died releasing: its leftovers are orphans below
            known.add(rec.id)
            spec = SandboxSpec.from_json(rec.spec)
            if rec.state == "created":
                log.warning("removing %s: half-made when the daemon stopped", rec.id)
                await self.runtime.release(spec)
                await blocking.run(self.runtime.log_file(rec.id).remove)
                self.store.delete_sandbox(rec.id)
                continue
            live = await self.runtime.adopt(spec, rec.pid)
            if live is None:
                self._record_exit(spec, await self.runtime.exit_of_lost(spec))
            else:
                live.on_exit.append(self._on_exit)
                log.info("re-adopted %s (pid %s)", rec.id, rec.pid)
        for user, sid in await blocking.run(self.runtime.orphans, known):
            log.warning("removing leftover %s/%s", user, sid)
            await blocking.run(self.runtime.remove_orphan, user, sid)
        running = {r.id for r in self.store.list_sandboxes(states=("running",))}
        await blocking.run_net(self.networks.restore, running)
        await self.images.store.empty_trash()  # what the store's repair set aside at start
        for sid in self.images.store.holds():  # holds of sandboxes that ended while we were down
            if sid not in self.runtime.live:
                log.info("releasing the image hold of %s: the sandbox is gone", sid)
                self.images.release(sid)

    def start_background(self) -> None:
        self.runtime.idmap.start()  # probed once now, so the log says early if images can run
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._housekeeping()))
        self._tasks.append(loop.create_task(self._watch_loop()))

    async def _watch_loop(self) -> None:
        """The loop-lag histogram: how late a short sleep wakes is how long the loop was busy."""
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await asyncio.sleep(LAG_TICK)
            metrics.observe_loop_lag(max(0.0, loop.time() - began - LAG_TICK))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self.runtime.launcher.close()  # it exits; the sandboxes it launched keep running
        await self.images.close()
        self.store.close()

    async def _housekeeping(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            rounds += 1
            try:
                await self._enforce_lifetimes()
                if rounds % AUDIT_TRIM_ROUNDS == 0:
                    self.store.trim_audit(self.config.audit_max_rows)
            except Exception:
                log.exception("housekeeping failed")

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
        req = validate(UserCreate, body)
        for key in ("admin", "service"):
            if getattr(req, key) and not actor.admin:
                raise Forbidden(f"only an admin may create {key} users", reason="not-admin")
        user = self.store.add_user(req.name, admin=req.admin, service=req.service)
        name = req.name
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
        await blocking.run_net(self.networks.remove_user, name)
        self.store.remove_user(name)
        with contextlib.suppress(SandboxdError):
            await blocking.run(self.runtime.cgroups.remove_user, name)
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

    async def set_quota(self, actor: User, name: str, body: Any) -> dict[str, Any]:
        _require_admin(actor)
        self.store.get_user(name)
        current, _ = self.quota_for(name)
        quota = parse_quota(body, "quota", current, reason=Reason.INVALID)
        self.store.set_quota(name, quota.to_json())
        await self._apply_user_limits(name, quota)
        self.store.audit(actor.name, "quota-set", name, str(quota.to_json()))
        return self.quota_model(actor, name)

    async def reset_quota(self, actor: User, name: str) -> dict[str, Any]:
        _require_admin(actor)
        self.store.delete_quota(name)
        await self._apply_user_limits(name, self.config.quota_for(name))
        return self.quota_model(actor, name)

    async def _apply_user_limits(self, name: str, quota: Quota) -> None:
        def apply() -> None:
            if any(u == name for u, _ in self.runtime.cgroups.sandbox_groups()):
                self.runtime.cgroups.ensure_user(name, _user_limits(quota))

        await blocking.run(apply)

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
        run_dirs: tuple[RunDir, ...] = (),
    ) -> tuple[SandboxRecord, LiveSandbox]:
        """Admit, record, build and start a sandbox; nothing is left behind if it fails."""
        owner = owner or self.owner_for(actor, body)
        began = time.monotonic()
        try:
            spec = admission.build_spec(
                body, owner, self.config, kind=kind, sid=sid, admin=actor.admin
            )
            quota, _ = self.quota_for(owner.name)
            admission.check_quota(owner.name, quota, self.usage(owner.name), spec.limits, kind)
            # the image: resolved, pulled on first use if allowed, its config applied
            may_pull = actor.admin or self.config.profile(spec.profile).allow_pull
            spec = await image_run.prepare(self.images, spec, body, may_pull=may_pull)
            # again, after the awaits above: from here to the insert nothing awaits
            quota, _ = self.quota_for(owner.name)
            admission.check_quota(owner.name, quota, self.usage(owner.name), spec.limits, kind)
            if spec.network.startswith("container:") and self._find_ref(spec) is None:
                raise NotFound(
                    f"network {spec.network}: no running sandbox of yours by that name",
                    reason="unknown-sandbox",
                )
        except SandboxdError as exc:
            if isinstance(exc, Refused):
                metrics.admission_refused(owner.name, exc.reason)
            outcome = "refused" if isinstance(exc, Refused) else "failure"
            metrics.observe_start(kind, outcome, time.monotonic() - began)
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
        faults.point("create:admitted")
        try:
            if spec.network.startswith("container:"):
                self._resolve_join(spec)
            live = await self.runtime.start(
                spec, user_limits=_user_limits(quota), run_dirs=run_dirs
            )
        except BaseException as exc:
            self._forget_join(spec.id)
            outcome = "refused" if isinstance(exc, Refused) else "failure"
            metrics.observe_start(kind, outcome, time.monotonic() - began)
            self.store.delete_sandbox(spec.id)
            raise
        self._forget_join(spec.id)
        metrics.observe_start(kind, "success", time.monotonic() - began)
        rec.state, rec.pid, rec.started = "running", live.pid, live.started
        self.store.update_sandbox(spec.id, state="running", pid=live.pid, started=live.started)
        faults.point("create:running")
        live.on_exit.append(self._on_exit)
        if live.exited.done():  # ended before we listened
            self._on_exit(live, live.exited.result())
        self.store.audit(actor.name, "create", spec.id, spec.name)
        return rec, live

    def _on_exit(self, live: LiveSandbox, result: Exit) -> None:
        self._record_exit(live.spec, result)

    def _record_exit(self, spec: SandboxSpec, result: Exit) -> None:
        """Record the exit now; release the host objects in the background (``releasing``)."""
        rec = self.store.get_sandbox(spec.id)
        if rec is None or rec.state == "exited":
            return
        self.store.update_sandbox(
            spec.id,
            state="exited",
            exit_code=result.code,
            oom_killed=result.oom_killed,
            reason=result.reason,
            finished=result.finished,
        )
        metrics.sandbox_exited(spec, result)
        for listener in self.exit_listeners:
            try:
                listener(spec, result)
            except Exception:
                log.exception("exit listener failed for %s", spec.id)
        self.releasing[spec.id] = asyncio.get_running_loop().create_task(self._release(spec))

    async def _release(self, spec: SandboxSpec) -> None:
        try:
            joiners = self.networks.view.joiners(spec.id)
            await self.runtime.release(spec)
            for other in joiners:
                live = self.runtime.live.get(other)
                if live is not None and not live.stopping:
                    log.info("stopping %s: the sandbox whose network it joined ended", other)
                    asyncio.get_running_loop().create_task(self.runtime.stop(live, 0))
            if spec.auto_remove:
                await asyncio.sleep(AUTO_REMOVE_DELAY)
                await self._forget(spec)
            else:
                await self._enforce_retention(spec.user)
        except Exception:
            log.exception("releasing %s failed", spec.id)
        finally:
            self.releasing.pop(spec.id, None)

    async def _forget(self, spec: SandboxSpec) -> None:
        """The end of a sandbox's record: its log and its row (its host objects are gone)."""
        await blocking.run(self.runtime.log_file(spec.id).remove)
        self.store.delete_sandbox(spec.id)

    async def _enforce_retention(self, user: str) -> None:
        """Keep at most ``max_exited_per_user`` exited sandboxes per user; oldest go first."""
        for old in self.store.exited_beyond(user, self.config.max_exited_per_user):
            if old.id in self.releasing:
                continue
            log.info("removing exited sandbox %s of %s: retention limit", old.id, user)
            await self._forget(SandboxSpec.from_json(old.spec))

    def _find_ref(self, spec: SandboxSpec) -> SandboxRecord | None:
        rec = self.store.find_sandbox(spec.network.split(":", 1)[1], spec.user)
        return rec if rec is not None and rec.id in self.runtime.live else None

    def _resolve_join(self, spec: SandboxSpec) -> None:
        """``network = container:<ref>``: find the running sandbox on the loop, before the net
        lane needs it (the net lane does not touch the loop's state)."""
        found = self._find_running(spec.user, spec.network.split(":", 1)[1])
        if found is None:
            raise NotFound(
                f"network {spec.network}: no running sandbox of yours by that name",
                reason="unknown-sandbox",
            )
        self.joins[spec.id] = found

    def _find_running(self, user: str, ref: str) -> tuple[str, str] | None:
        """(id, "fd:N") of a running sandbox of ``user``, for network container:<ref>: N is a
        duplicate of the pidfd the daemon took when that sandbox started, so joining its network
        namespace can only ever reach that process (a pid reused meanwhile cannot be)."""
        rec = self.store.find_sandbox(ref, user)
        live = self.runtime.live.get(rec.id) if rec else None
        if rec is None or live is None or live.pidfd is None:
            return None
        return rec.id, f"fd:{os.dup(live.pidfd)}"

    def _forget_join(self, sid: str) -> None:
        found = self.joins.pop(sid, None)
        if found is not None:
            with contextlib.suppress(OSError):
                os.close(int(found[1][3:]))

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

    def sandboxes_for(
        self, actor: User, all_states: bool = False, kind: str | None = None
    ) -> list[SandboxRecord]:
        return self.store.list_sandboxes(
            user=None if actor.admin else actor.name,
            kind=kind,
            states=None if all_states else ACTIVE,
        )

    async def update_limits(self, actor: User, ref: str, body: Any) -> SandboxRecord:
        """Change cpus, memory, pids, memory_high or cpu_weight of a running sandbox, within
        its profile and the quota. The new limits are recorded (and so counted by every other
        admission) before the cgroup write is awaited, and put back if it fails: two changes or
        a change and a create racing cannot both pass the quota."""
        rec = self.lookup(actor, ref)
        if rec.id not in self.runtime.live:
            raise Conflict(f"sandbox {rec.id} is not running", reason="not-running")
        req = validate(LimitsUpdate, body)
        spec = SandboxSpec.from_json(rec.spec)
        old = spec.limits
        new = admission.updated_limits(old, req, self.config.profile(spec.profile))
        usage = self.usage(rec.user)
        usage.sandboxes -= 1
        usage.memory -= old.memory or 0
        usage.cpus -= old.cpus or 0.0
        quota, _ = self.quota_for(rec.user)
        admission.check_quota(rec.user, quota, usage, new)
        updated = dataclasses.replace(spec, limits=new)
        self.store.update_sandbox(rec.id, spec=json.dumps(updated.to_json()))
        try:
            await blocking.run(self.runtime.cgroups.update, rec.user, rec.id, new)
        except BaseException:
            self.store.update_sandbox(rec.id, spec=json.dumps(spec.to_json()))
            raise
        live = self.runtime.live.get(rec.id)
        if live is not None:
            live.spec = updated
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
        faults.point("remove:stopped")
        task = self.releasing.get(rec.id)
        if task is not None:
            await asyncio.shield(task)
        spec = SandboxSpec.from_json(rec.spec)
        await self.runtime.release(spec)
        faults.point("remove:released")
        await self._forget(spec)
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

    async def log_records(self, rec: SandboxRecord) -> list[output.Record]:
        """Every kept output record of a sandbox (live: including what is not on disk yet)."""
        live = self.runtime.live.get(rec.id)
        if live is not None:
            return await live.pump.snapshot(lambda r: None)
        return await blocking.run(self.runtime.log_file(rec.id).read)

    async def logs(self, actor: User, ref: str, tail: int | None = None) -> dict[str, Any]:
        rec = self.lookup(actor, ref)
        records = await self.log_records(rec)
        return await blocking.run(_logs_model, records, tail)

    def raw_stats(self, rec: SandboxRecord) -> dict[str, Any] | None:
        """cgroup counters of a running sandbox (blocking: cgroupfs reads; call in a lane)."""
        try:
            stats = self.runtime.cgroups.stats(rec.user, rec.id)
        except SandboxdError:
            return None
        return dict(stats.__dict__)

    async def stats_of(self, records: list[SandboxRecord]) -> dict[str, dict[str, Any] | None]:
        live = [r for r in records if r.id in self.runtime.live]
        return await blocking.run(lambda: {r.id: self.raw_stats(r) for r in live})

    async def network_counters(self, records: list[SandboxRecord]) -> dict[str, dict[str, Any]]:
        """rx/tx counters of each record's veth, by sandbox id; none for sandboxes without one."""
        links = self.networks.links_of({r.id for r in records})
        if not links:
            return {}
        return await blocking.run(self.networks.counters, links)

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
            "image_id": spec.get("image_id") or None,
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

    async def metrics_body(self) -> bytes:
        """The ``/metrics`` page: a snapshot on the loop, reads and rendering in the io lane."""
        records = [
            r for r in self.store.list_sandboxes(states=("running",)) if r.id in self.runtime.live
        ]
        users = [u.name for u in self.store.list_users()]
        overrides = self.store.all_quotas()
        quotas = {
            u: parse_quota(overrides[u], f"quota of {u}", self.config.quota_for(u))
            if u in overrides
            else self.config.quota_for(u)
            for u in users
        }
        usage: dict[str, admission.Usage] = {u: admission.Usage() for u in users}
        for rec in self.store.list_sandboxes(states=ACTIVE):
            usage.setdefault(rec.user, admission.Usage()).add(
                Limits.from_json(rec.spec["limits"]), rec.kind
            )
        snap = metrics.Snapshot(
            records=records,
            users=users,
            quotas=quotas,
            usage=usage,
            instance=self.config.instance,
            cgroup_version=self.runtime.cgroups.version,
            started_at=self.started_at,
        )
        links = self.networks.links_of({r.id for r in records})
        metrics.observe_lanes(blocking.depth())

        def fill_and_render() -> bytes:
            snap.stats = {r.id: self.raw_stats(r) for r in records}
            snap.counters = NetworkManager.counters(links) if links else {}
            for user in users:
                with contextlib.suppress(SandboxdError, OSError):
                    level = self.runtime.cgroups.user_pressure(user)
                    if level:
                        snap.user_pressure[user] = level
            return metrics.render(snap)

        return await blocking.run(fill_and_render)

    def status(self, actor: User) -> dict[str, Any]:
        """The daemon's status; counts over every user only for an admin (they would tell a
        tenant how many other users and sandboxes there are)."""
        out: dict[str, Any] = {
            "version": __version__,
            "instance": self.config.instance,
            "cgroup_version": self.runtime.cgroups.version,
            "uptime_seconds": round(time.time() - self.started_at, 3),
        }
        if actor.admin:
            out["running"] = len(self.runtime.live)
            out["sandboxes"] = self.store.count("sandboxes")
            out["users"] = self.store.count("users")
        return out


def _require_admin(actor: User) -> None:
    if not actor.admin:
        raise Forbidden("this needs an admin token", reason="not-admin")


def _user_limits(quota: Quota) -> Limits:
    """The user-level cgroup carries the user's aggregate quota, enforced by the kernel: all of
    a user's sandboxes together never hold more memory, CPU or tasks than it grants."""
    return Limits(cpus=quota.cpus, memory=quota.memory, pids=quota.pids)


def _logs_model(records: list[output.Record], tail: int | None) -> dict[str, Any]:
    """``{"stdout", "stderr", "truncated"}`` from the kept records (``tail``: last lines)."""
    out: dict[str, Any] = {"truncated": bool(records) and records[0].seq > 1}
    for name, code in output.STREAMS.items():
        text = b"".join(r.data for r in records if r.stream == code).decode(errors="replace")
        if tail is not None:
            text = "\n".join(text.splitlines()[-tail:]) + ("\n" if text and tail else "")
        out[name] = text
    return out


class _RuntimeNetworks:
    """The network manager as the runtime's network step sees it (run on the net lane)."""

    def __init__(self, sbx: Sandboxd) -> None:
        self.sbx = sbx

    def attach(self, spec: SandboxSpec) -> Attached:
        joins = self.sbx.joins
        return self.sbx.networks.attach(spec, lambda user, ref: joins.get(spec.id))

    def release(self, sid: str) -> list[str]:
        return self.sbx.networks.release(sid)
