"""Handlers of /api/users/{name}/volumes/{volume}: per-user persistent volumes.

``PUT`` makes the directory if missing and returns ``{"user", "name", "host", "uid",
"created"}`` (``host`` is what a sandbox's ``volumes`` entry binds); ``DELETE`` removes it with
its contents (JupyterHub's ``delete_forever``). Allowed for the user, an admin, or a service
token acting for a plain user. ``?root=`` picks a volume root other than the first.
"""

from __future__ import annotations

from typing import Any

from .. import volumes
from .base import BaseHandler

USER = r"([a-z0-9][a-z0-9_.-]*)"
VOLUME = r"([A-Za-z0-9][A-Za-z0-9_.-]*)"


class VolumeHandler(BaseHandler):
    def put(self, user: str, name: str) -> None:
        actor = self.current()
        model = volumes.ensure(
            self.sbx.config,
            self.sbx.store,
            actor,
            user,
            name,
            self.get_query_argument("root", None),
        )
        if model["created"]:
            self.sbx.store.audit(actor.name, "volume-create", f"{user}/{name}", model["host"])
        self.send(model, 201 if model["created"] else 200)

    def delete(self, user: str, name: str) -> None:
        actor = self.current()
        volumes.remove(
            self.sbx.config,
            self.sbx.store,
            actor,
            user,
            name,
            self.get_query_argument("root", None),
        )
        self.sbx.store.audit(actor.name, "volume-rm", f"{user}/{name}")
        self.set_status(204)
        self.finish()


def routes() -> list[tuple[str, Any]]:
    return [(rf"/api/users/{USER}/volumes/{VOLUME}", VolumeHandler)]
