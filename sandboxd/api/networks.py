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
from ..models.requests import NetworkCreate, UserQuery
from ..models.types import validate
from ..network.settings import DEFAULT_NAME
from ..state import User, acts_for
from .base import BaseHandler


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
        user = self.query(UserQuery).user
        if user is None and actor.admin:
            nets = self.sbx.networks.view.networks()
        else:
            nets = self.sbx.networks.view.networks(_owner(self, actor, user))
        self.send([self.sbx.networks.network_model(n) for n in nets])

    async def post(self) -> None:
        actor = self.current()
        req = validate(NetworkCreate, self.body())
        owner = _owner(self, actor, req.user)
        net = await blocking.run_net(self.sbx.networks.create_network, owner, req.name)
        self.sbx.store.audit(actor.name, "network-create", f"{owner}/{net.name}", net.subnet)
        self.set_header("Location", f"/api/networks/{net.name}")
        self.send(self.sbx.networks.network_model(net), 201)


class NetworkHandler(BaseHandler):
    async def get(self, name: str) -> None:
        actor = self.current()
        owner = _owner(self, actor, self.query(UserQuery).user)
        if name == DEFAULT_NAME:  # every user has one; reading it makes it (as its first use does)
            net = await blocking.run_net(self.sbx.networks.default_network, owner)
        else:
            net = self.sbx.networks.lookup_network(owner, name)
        self.send(self.sbx.networks.network_model(net))

    async def delete(self, name: str) -> None:
        actor = self.current()
        owner = _owner(self, actor, self.query(UserQuery).user)
        await blocking.run_net(self.sbx.networks.remove_network, owner, name)
        self.sbx.store.audit(actor.name, "network-rm", f"{owner}/{name}")
        self.set_status(204)
        self.finish()
