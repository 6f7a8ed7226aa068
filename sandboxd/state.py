"""SQLite state: users, tokens, sandboxes, kernels, live quota changes and an audit log.

The loop's connection (``Store.db``) serves the event loop: every statement is a small indexed
read or write. The network manager changes its tables on the net lane through a connection of
its own (``connect()``); WAL lets them work side by side, and ``busy_timeout`` covers the rare
moment both write. Runtime files live under the run dir; this database survives a restart.
A kernel's HMAC key lives here, never read back from the tenant's side.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from .errors import Conflict, NotFound, ResourcesExhausted

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    uid INTEGER UNIQUE NOT NULL,
    admin INTEGER NOT NULL DEFAULT 0,
    service INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    note TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    user TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    spec TEXT NOT NULL,
    pid INTEGER,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    exit_code INTEGER,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    UNIQUE (user, name)
);
CREATE TABLE IF NOT EXISTS kernels (
    id TEXT PRIMARY KEY,
    sandbox TEXT NOT NULL,
    user TEXT NOT NULL,
    creator TEXT NOT NULL,
    kernelspec TEXT NOT NULL,
    key TEXT NOT NULL,
    request TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS quotas (
    user TEXT PRIMARY KEY,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    ts REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class User:
    name: str
    uid: int
    admin: bool
    service: bool
    created: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "uid": self.uid,
            "admin": self.admin,
            "service": self.service,
            "created": self.created,
        }


def acts_for(actor: User, target: User) -> bool:
    """May ``actor`` manage ``target``'s users, tokens, volumes and sandboxes? Admins manage
    everyone; a service token (a JupyterHub) manages plain users, never admins or services."""
    return actor.admin or (actor.service and not target.admin and not target.service)


@dataclass
class SandboxRecord:
    id: str
    name: str
    user: str
    kind: str
    state: str  # created | running | exited | removing
    spec: dict[str, Any]
    pid: int | None
    created: float
    started: float | None
    finished: float | None
    exit_code: int | None
    oom_killed: bool
    reason: str


_COUNT = {t: f"SELECT COUNT(*) FROM {t}" for t in ("users", "sandboxes")}


def _user(row: sqlite3.Row) -> User:
    return User(row["name"], row["uid"], bool(row["admin"]), bool(row["service"]), row["created"])


class Store:
    """Typed access to the state database."""

    def __init__(self, path: str, uid_base: int, uid_count: int) -> None:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self.path = path
        self.db = self.connect()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        os.chmod(path, 0o600)
        self.uid_base = uid_base
        self.uid_count = uid_count

    def connect(self) -> sqlite3.Connection:
        """A connection to the same database, for one other thread."""
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def close(self) -> None:
        self.db.close()

    # users and tokens -------------------------------------------------------------------

    def add_user(self, name: str, *, admin: bool = False, service: bool = False) -> User:
        if self.get_user(name, missing_ok=True):
            raise Conflict(f"user {name!r} exists", reason="user-exists")
        used = {row[0] for row in self.db.execute("SELECT uid FROM users")}
        uid = next(
            (self.uid_base + i for i in range(self.uid_count) if self.uid_base + i not in used),
            None,
        )
        if uid is None:
            raise ResourcesExhausted("no tenant uid left", reason="uids-exhausted")
        now = time.time()
        self.db.execute(
            "INSERT INTO users VALUES (?, ?, ?, ?, ?)", (name, uid, int(admin), int(service), now)
        )
        return User(name, uid, admin, service, now)

    def get_user(self, name: str, missing_ok: bool = False) -> User | None:
        row = self.db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            if missing_ok:
                return None
            raise NotFound(f"no user {name!r}", reason="unknown-user")
        return _user(row)

    def list_users(self) -> list[User]:
        return [_user(r) for r in self.db.execute("SELECT * FROM users ORDER BY name")]

    def count(self, table: str) -> int:
        """Rows of ``users`` or ``sandboxes`` (for status), without loading them."""
        return int(self.db.execute(_COUNT[table]).fetchone()[0])

    def remove_user(self, name: str) -> None:
        self.get_user(name)
        self.db.execute("DELETE FROM tokens WHERE user = ?", (name,))
        self.db.execute("DELETE FROM quotas WHERE user = ?", (name,))
        self.db.execute("DELETE FROM users WHERE name = ?", (name,))

    def new_token(self, user: str, note: str = "") -> str:
        token = secrets.token_hex(24)
        self.db.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?)", (hash_token(token), user, note, time.time())
        )
        return token

    def user_for_token(self, token: str) -> User | None:
        row = self.db.execute(
            "SELECT user FROM tokens WHERE hash = ?", (hash_token(token),)
        ).fetchone()
        return self.get_user(row[0], missing_ok=True) if row else None

    # sandboxes ---------------------------------------------------------------------------

    def insert_sandbox(self, rec: SandboxRecord) -> None:
        try:
            self.db.execute(
                "INSERT INTO sandboxes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    rec.id,
                    rec.name,
                    rec.user,
                    rec.kind,
                    rec.state,
                    json.dumps(rec.spec),
                    rec.pid,
                    rec.created,
                    rec.started,
                    rec.finished,
                    rec.exit_code,
                    int(rec.oom_killed),
                    rec.reason,
                ),
            )
        except sqlite3.IntegrityError:
            raise Conflict(f"a sandbox named {rec.name!r} exists", reason="name-taken") from None

    def update_sandbox(self, sid: str, **fields: Any) -> None:
        if "oom_killed" in fields:
            fields["oom_killed"] = int(fields["oom_killed"])
        cols = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE sandboxes SET {cols} WHERE id = ?", (*fields.values(), sid))

    def delete_sandbox(self, sid: str) -> None:
        self.db.execute("DELETE FROM sandboxes WHERE id = ?", (sid,))

    def _record(self, row: sqlite3.Row) -> SandboxRecord:
        return SandboxRecord(
            id=row["id"],
            name=row["name"],
            user=row["user"],
            kind=row["kind"],
            state=row["state"],
            spec=json.loads(row["spec"]),
            pid=row["pid"],
            created=row["created"],
            started=row["started"],
            finished=row["finished"],
            exit_code=row["exit_code"],
            oom_killed=bool(row["oom_killed"]),
            reason=row["reason"],
        )

    def get_sandbox(self, sid: str) -> SandboxRecord | None:
        row = self.db.execute("SELECT * FROM sandboxes WHERE id = ?", (sid,)).fetchone()
        return self._record(row) if row else None

    def find_sandbox(self, ref: str, user: str | None) -> SandboxRecord | None:
        """By id, unique id prefix (≥ 4 chars) or name; ``user`` None = any user (admin)."""
        clause, args = ("", ()) if user is None else (" AND user = ?", (user,))
        row = self.db.execute(
            f"SELECT * FROM sandboxes WHERE id = ?{clause}", (ref, *args)
        ).fetchone()
        if row is None:
            rows = self.db.execute(
                f"SELECT * FROM sandboxes WHERE name = ?{clause}", (ref, *args)
            ).fetchall()
            if len(rows) == 1:
                row = rows[0]
        if row is None and len(ref) >= 4:
            rows = self.db.execute(
                f"SELECT * FROM sandboxes WHERE id LIKE ?{clause}",
                (ref.replace("%", "") + "%", *args),
            ).fetchall()
            if len(rows) == 1:
                row = rows[0]
        return self._record(row) if row else None

    def list_sandboxes(
        self,
        user: str | None = None,
        kind: str | None = None,
        states: tuple[str, ...] | None = None,
    ) -> list[SandboxRecord]:
        query, args = "SELECT * FROM sandboxes WHERE 1=1", []
        if user is not None:
            query += " AND user = ?"
            args.append(user)
        if kind is not None:
            query += " AND kind = ?"
            args.append(kind)
        if states:
            query += f" AND state IN ({','.join('?' * len(states))})"
            args.extend(states)
        return [self._record(r) for r in self.db.execute(query + " ORDER BY created", args)]

    def exited_beyond(self, user: str, keep: int) -> list[SandboxRecord]:
        """The user's exited sandboxes past the ``keep`` newest, oldest first (to remove)."""
        rows = self.db.execute(
            "SELECT * FROM sandboxes WHERE user = ? AND state = 'exited' "
            "ORDER BY finished DESC, created DESC LIMIT -1 OFFSET ?",
            (user, keep),
        ).fetchall()
        return [self._record(r) for r in reversed(rows)]

    # kernels ---------------------------------------------------------------------------

    def put_kernel(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO kernels VALUES (?,?,?,?,?,?,?,?)",
            (
                row["id"],
                row["sandbox"],
                row["user"],
                row["creator"],
                row["kernelspec"],
                row["key"],
                json.dumps(row["request"]),
                row.get("created", time.time()),
            ),
        )

    def kernels(self) -> list[dict[str, Any]]:
        out = []
        for r in self.db.execute("SELECT * FROM kernels ORDER BY created"):
            row = dict(r)
            row["request"] = json.loads(row["request"])
            out.append(row)
        return out

    def delete_kernel(self, kernel_id: str) -> None:
        self.db.execute("DELETE FROM kernels WHERE id = ?", (kernel_id,))

    # quotas and audit ----------------------------------------------------------------------

    def set_quota(self, user: str, data: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO quotas VALUES (?, ?)", (user, json.dumps(data)))

    def get_quota(self, user: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT data FROM quotas WHERE user = ?", (user,)).fetchone()
        return json.loads(row[0]) if row else None

    def all_quotas(self) -> dict[str, dict[str, Any]]:
        return {r[0]: json.loads(r[1]) for r in self.db.execute("SELECT user, data FROM quotas")}

    def delete_quota(self, user: str) -> None:
        self.db.execute("DELETE FROM quotas WHERE user = ?", (user,))

    def audit(self, actor: str, action: str, target: str, detail: str = "") -> None:
        self.db.execute(
            "INSERT INTO audit VALUES (?, ?, ?, ?, ?)", (time.time(), actor, action, target, detail)
        )
