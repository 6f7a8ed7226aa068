"""Handlers of /api/networks: a user's networks (list, create, inspect, remove).

A user sees and changes only their own networks; an admin sees all and names another user's
network with ``?user=NAME`` (or ``"user"`` in the create body); a service token (a JupyterHub)
may do the same for plain users. ``GET /api/networks/default`` makes the default network if the
user has none yet, so a spawner can learn its gateway before the first sandbox.
"""

from __future__ import annotations

from typing import Any

from .. import blocking
from ..errors import Forbidden, InvalidRequest
from ..network.settings import DEFAULT_NAME
from ..service import acts_for
from ..state import User
from .base import BaseHandler

NAME = r"([A-Za-z0-9][A-Za-z0-9_.-]*)"


def _owner(handler: BaseHandler, actor: User, wanted: Any) -> str:
    if wanted in (None, "", actor.name):
        return actor.name
    if not isinstance(wanted, str):
        raise InvalidRequest("user: expected a user name")
    target = handler.sbx.store.get_user(wanted)
    if not acts_for(actor, target):  # type: ignore[arg-type]
        raise Forbidden("only an admin may manage another user's networks", reason="not-admin")
    return wanted


class NetworksHandler(BaseHandler):
    def get(self) -> None:
        actor = self.current()
        user = self.get_query_argument("user", None)
        if user is None and actor.admin:
            nets = self.sbx.networks.view.networks()
        else:
            nets = self.sbx.networks.view.networks(_owner(self, actor, user))
        self.send([self.sbx.networks.network_model(n) for n in nets])

    async def post(self) -> None:
        actor = self.current()
        body = self.body()
        if not isinstance(body, dict) or not isinstance(body.get("name"), str):
            raise InvalidRequest('expected {"name": ...}')
        if set(body) - {"name", "user"}:
            raise InvalidRequest(f"unknown field {sorted(set(body) - {'name', 'user'})[0]!r}")
        owner = _owner(self, actor, body.get("user"))
        net = await blocking.run_net(self.sbx.networks.create_network, owner, body["name"])
        self.sbx.store.audit(actor.name, "network-create", f"{owner}/{net.name}", net.subnet)
        self.set_header("Location", f"/api/networks/{net.name}")
        self.send(self.sbx.networks.network_model(net), 201)


class NetworkHandler(BaseHandler):
    async def get(self, name: str) -> None:
        actor = self.current()
        owner = _owner(self, actor, self.get_query_argument("user", None))
        if name == DEFAULT_NAME:  # every user has one; reading it makes it (as its first use does)
            net = await blocking.run_net(self.sbx.networks.default_network, owner)
        else:
            net = self.sbx.networks.lookup_network(owner, name)
        self.send(self.sbx.networks.network_model(net))

    async def delete(self, name: str) -> None:
        actor = self.current()
        owner = _owner(self, actor, self.get_query_argument("user", None))
        await blocking.run_net(self.sbx.networks.remove_network, owner, name)
        self.sbx.store.audit(actor.name, "network-rm", f"{owner}/{name}")
        self.set_status(204)
        self.finish()


def routes() -> list[tuple[str, Any]]:
    return [
        (r"/api/networks", NetworksHandler),
        (rf"/api/networks/{NAME}", NetworkHandler),
    ]
