"""The network tables, in the daemon's SQLite database (created here, next to state.py's).

``net_networks``: one row per network (its subnet is its allocation).
``net_attachments``: one row per sandbox with a network (its address is its allocation).
``net_ports``: published host ports, unique per protocol and port.
Released rows are deleted, so the lowest-free choice in ipam.py reuses them.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS net_networks (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    name TEXT NOT NULL,
    subnet TEXT NOT NULL UNIQUE,
    is_default INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    UNIQUE (user, name)
);
CREATE TABLE IF NOT EXISTS net_attachments (
    sandbox TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    mode TEXT NOT NULL,
    network INTEGER,
    address TEXT,
    netns TEXT NOT NULL DEFAULT '',
    link TEXT NOT NULL DEFAULT '',
    mac TEXT NOT NULL DEFAULT '',
    policy TEXT NOT NULL DEFAULT '',
    joined TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    UNIQUE (network, address)
);
CREATE TABLE IF NOT EXISTS net_ports (
    proto TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    host_ip TEXT NOT NULL DEFAULT '',
    ctr_port INTEGER NOT NULL,
    sandbox TEXT NOT NULL,
    PRIMARY KEY (proto, host_port)
);
"""

MACVLAN_NETWORK = -1  # net_attachments.network of macvlan addresses


@dataclass(frozen=True)
class Network:
    id: int
    user: str
    name: str
    subnet: str
    is_default: bool
    created: float


@dataclass(frozen=True)
class Attachment:
    sandbox: str
    user: str
    mode: str  # bridge | macvlan | container
    network: int | None
    address: str | None
    netns: str
    link: str
    mac: str
    policy: str
    joined: str


class NetworkDB:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(SCHEMA)

    # networks
    def networks(self, user: str | None = None) -> list[Network]:
        q = "SELECT * FROM net_networks"
        args: tuple[Any, ...] = ()
        if user is not None:
            q, args = q + " WHERE user = ?", (user,)
        return [self._net(r) for r in self.db.execute(q + " ORDER BY id", args)]

    def network(self, user: str, name: str) -> Network | None:
        row = self.db.execute(
            "SELECT * FROM net_networks WHERE user = ? AND name = ?", (user, name)
        ).fetchone()
        return self._net(row) if row else None

    def network_by_id(self, nid: int) -> Network | None:
        row = self.db.execute("SELECT * FROM net_networks WHERE id = ?", (nid,)).fetchone()
        return self._net(row) if row else None

    def add_network(self, user: str, name: str, subnet: str, is_default: bool) -> Network:
        cur = self.db.execute(
            "INSERT INTO net_networks (user, name, subnet, is_default, created) "
            "VALUES (?, ?, ?, ?, ?)",
            (user, name, subnet, int(is_default), time.time()),
        )
        return self.network_by_id(int(cur.lastrowid or 0))  # type: ignore[return-value]

    def delete_network(self, nid: int) -> None:
        self.db.execute("DELETE FROM net_networks WHERE id = ?", (nid,))

    @staticmethod
    def _net(row: Any) -> Network:
        return Network(
            row["id"],
            row["user"],
            row["name"],
            row["subnet"],
            bool(row["is_default"]),
            row["created"],
        )

    # attachments
    def attachments(self, network: int | None = None) -> list[Attachment]:
        q = "SELECT * FROM net_attachments"
        args: tuple[Any, ...] = ()
        if network is not None:
            q, args = q + " WHERE network = ?", (network,)
        rows = [dict(r) for r in self.db.execute(q, args)]
        return [Attachment(**{k: v for k, v in r.items() if k != "created"}) for r in rows]

    def attachment(self, sid: str) -> Attachment | None:
        found = [a for a in self.attachments() if a.sandbox == sid]
        return found[0] if found else None

    def used_addresses(self, network: int) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT address FROM net_attachments WHERE network = ? AND address IS NOT NULL",
                (network,),
            )
        ]

    def add_attachment(self, a: Attachment) -> None:
        self.db.execute(
            "INSERT INTO net_attachments VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                a.sandbox,
                a.user,
                a.mode,
                a.network,
                a.address,
                a.netns,
                a.link,
                a.mac,
                a.policy,
                a.joined,
                time.time(),
            ),
        )

    def set_mac(self, sid: str, mac: str) -> None:
        self.db.execute("UPDATE net_attachments SET mac = ? WHERE sandbox = ?", (mac, sid))

    def delete_attachment(self, sid: str) -> None:
        self.db.execute("DELETE FROM net_ports WHERE sandbox = ?", (sid,))
        self.db.execute("DELETE FROM net_attachments WHERE sandbox = ?", (sid,))

    def joiners(self, sid: str) -> list[str]:
        return [
            r[0]
            for r in self.db.execute("SELECT sandbox FROM net_attachments WHERE joined = ?", (sid,))
        ]

    # ports
    def ports(self, sid: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT * FROM net_ports"
        args: tuple[Any, ...] = ()
        if sid is not None:
            q, args = q + " WHERE sandbox = ?", (sid,)
        return [dict(r) for r in self.db.execute(q + " ORDER BY proto, host_port", args)]

    def port_owner(self, proto: str, port: int) -> str | None:
        row = self.db.execute(
            "SELECT sandbox FROM net_ports WHERE proto = ? AND host_port = ?", (proto, port)
        ).fetchone()
        return row[0] if row else None

    def add_port(
        self, sid: str, proto: str, host_port: int, host_ip: str | None, ctr_port: int
    ) -> None:
        self.db.execute(
            "INSERT INTO net_ports VALUES (?, ?, ?, ?, ?)",
            (proto, host_port, host_ip or "", ctr_port, sid),
        )


def dumps(data: Any) -> str:
    return json.dumps(data, sort_keys=True)
