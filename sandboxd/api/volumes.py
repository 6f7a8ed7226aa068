"""Handlers of /api/users/{name}/volumes: a user's persistent volumes.

``GET .../volumes`` lists them; ``PUT .../volumes/{volume}`` makes one if missing and returns
``{"user", "name", "host", "uid", "created", ...}``; ``GET`` inspects it; ``DELETE`` removes it
with its contents (409 while a running sandbox binds it, unless ``?force=1``; JupyterHub's
``delete_forever`` uses it). Allowed for the user, an admin, or a service token acting for a
plain user. ``?root=`` picks a volume root other than the first. A sandbox binds a volume by
its name (``-v NAME[/SUBPATH]:TARGET``), never by the host path shown here.
"""

from __future__ import annotations

from .. import blocking, volumes
from ..models.requests import VolumeDeleteQuery, VolumeQuery, flag
from .base import BaseHandler


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
            self.query(VolumeQuery).root,
        )
        if model["created"]:
            self.sbx.store.audit(actor.name, "volume-create", f"{user}/{name}", model["host"])
        self.send(model, 201 if model["created"] else 200)

    async def delete(self, user: str, name: str) -> None:
        actor = self.current()
        target = self.sbx.store.get_user(user)
        assert target is not None
        volumes.check_actor(actor, target)
        query = self.query(VolumeDeleteQuery)
        if not flag(query.force):
            volumes.check_unused(self.sbx.store, user, name)
        await blocking.run(
            volumes.remove,
            self.sbx.config,
            self.sbx.store,
            actor,
            user,
            name,
            query.root,
        )
        self.sbx.store.audit(actor.name, "volume-rm", f"{user}/{name}")
        self.set_status(204)
        self.finish()
