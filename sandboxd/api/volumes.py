"""Handlers of /api/users/{name}/volumes: a user's persistent volumes.

``GET .../volumes`` lists them; ``PUT .../volumes/{volume}`` makes one if missing and returns
``{"user", "name", "host", "uid", "created", ...}``; ``GET`` inspects it; ``DELETE`` removes it
with its contents (409 while a running sandbox binds it, unless ``?force=1``; JupyterHub's
``delete_forever`` uses it). Allowed for the user, an admin, or a service token acting for a
plain user. ``?root=`` picks a volume root other than the first. A sandbox binds a volume by
its name (``-v NAME[/SUBPATH]:TARGET``), never by the host path shown here.
"""

from __future__ import annotations

from typing import Any

from .. import blocking, volumes
from .base import BaseHandler

USER = r"([a-z0-9][a-z0-9_.-]*)"
VOLUME = r"([A-Za-z0-9][A-Za-z0-9_.-]*)"


class VolumesHandler(BaseHandler):
    async def get(self, user: str) -> None:
        actor = self.current()
        self.send(
            await blocking.run(volumes.list_volumes, self.sbx.config, self.sbx.store, actor, user)
        )


class VolumeHandler(BaseHandler):
    async def get(self, user: str, name: str) -> None:
        actor = self.current()
        cfg, store = self.sbx.config, self.sbx.store
        self.send(await blocking.run(volumes.inspect, cfg, store, actor, user, name))

    async def put(self, user: str, name: str) -> None:
        actor = self.current()
        model = await blocking.run(
            volumes.ensure,
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

    async def delete(self, user: str, name: str) -> None:
        actor = self.current()
        target = self.sbx.store.get_user(user)
        assert target is not None
        volumes.check_actor(actor, target)
        if self.get_query_argument("force", "0") not in ("1", "true", "yes"):
            volumes.check_unused(self.sbx.store, user, name)
        await blocking.run(
            volumes.remove,
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
    return [
        (rf"/api/users/{USER}/volumes", VolumesHandler),
        (rf"/api/users/{USER}/volumes/{VOLUME}", VolumeHandler),
    ]
