"""Handlers of /api/users (admin) and the quota endpoints."""

from __future__ import annotations

from .base import BaseHandler


class UsersHandler(BaseHandler):
    def post(self) -> None:
        self.send(self.sbx.add_user(self.current(), self.body()), 201)

    def get(self) -> None:
        self.send(self.sbx.list_users(self.current()))


class UserHandler(BaseHandler):
    def get(self, name: str) -> None:
        self.send(self.sbx.user_model(self.current(), name))

    async def delete(self, name: str) -> None:
        await self.sbx.remove_user(self.current(), name)
        self.set_status(204)
        self.finish()


class TokensHandler(BaseHandler):
    def post(self, name: str) -> None:
        self.send({"token": self.sbx.new_token(self.current(), name)}, 201)


class QuotaHandler(BaseHandler):
    def get(self, name: str) -> None:
        self.send(self.sbx.quota_model(self.current(), name))

    async def put(self, name: str) -> None:
        self.send(await self.sbx.set_quota(self.current(), name, self.body()))

    async def delete(self, name: str) -> None:
        self.send(await self.sbx.reset_quota(self.current(), name))


class WhoamiHandler(BaseHandler):
    def get(self) -> None:
        self.send(self.current().to_json())


class StatusHandler(BaseHandler):
    def get(self) -> None:
        self.send(self.sbx.status(self.current()))
