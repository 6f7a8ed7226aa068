"""The vocabulary of the API contract: who may call an operation, what it takes and answers.

A ``Route`` is an OpenAPI path template with its handler; tornado's route regex is made from the
template and the parameters' patterns, so the served routes and the documented ones are one list
(``contract.ROUTES``). Adding a route: write the handler and its models, add one ``Route``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class Access(StrEnum):
    """Who may call an operation. "Owner" is the user the path (or ``?user=``) names, or whose
    sandbox, kernel, network or volume it is.

    ============  =====  ==========  =====  ==================  =====
    access        none   other user  owner  service for owner   admin
    ============  =====  ==========  =====  ==================  =====
    public        ok     ok          ok     ok                  ok
    token         401    ok          ok     ok                  ok
    owner         401    404         ok     ok                  ok
    owner-named   401    403         ok     ok                  ok
    self          401    404         ok     404                 ok
    service       401    403         403    ok                  ok
    admin         401    403         403    403                 ok
    ============  =====  ==========  =====  ==================  =====

    ``token``: any valid token, acting on the caller's own things (lists show only those; an
    admin's show everyone's). ``owner``: another user's resource is *unknown* (404), so its
    existence does not leak. ``owner-named``: the owner is named in the request itself, so
    refusing says nothing new (403). A service token (a JupyterHub's) acts for plain users only,
    never for an admin or another service; for kernels, for those it started.
    """

    PUBLIC = "public"
    TOKEN = "token"
    OWNER = "owner"
    OWNER_NAMED = "owner-named"
    SELF = "self"
    SERVICE = "service"
    ADMIN = "admin"


#: the expected status per caller (None: allowed, the answer depends on the request)
MATRIX: dict[Access, dict[str, int | None]] = {
    Access.PUBLIC: dict(none=None, other=None, owner=None, service=None, admin=None),
    Access.TOKEN: dict(none=401, other=None, owner=None, service=None, admin=None),
    Access.OWNER: dict(none=401, other=404, owner=None, service=None, admin=None),
    Access.OWNER_NAMED: dict(none=401, other=403, owner=None, service=None, admin=None),
    Access.SELF: dict(none=401, other=404, owner=None, service=404, admin=None),
    Access.SERVICE: dict(none=401, other=403, owner=403, service=None, admin=None),
    Access.ADMIN: dict(none=401, other=403, owner=403, service=403, admin=None),
}


@dataclass(frozen=True)
class Op:
    """One method of a route.

    ``response``: a model, ``list[model]``, a media type string (``"text/plain"``), or None
    (no body); ``also``: other success statuses and what they answer; ``body``: a model (JSON)
    or a media type (the raw body); ``errors``: statuses beyond those the access and the
    parameters imply.
    """

    summary: str
    access: Access
    ok: int = 200
    response: Any = None
    body: type[BaseModel] | str | None = None
    query: type[BaseModel] | None = None
    errors: tuple[int, ...] = ()
    websocket: bool = False
    also: dict[int, Any] = field(default_factory=dict)


_PARAM = re.compile(r"\{(\w+)(?:=(\w+))?\}")


@dataclass(frozen=True)
class Route:
    """``path`` is the OpenAPI template; ``{name}`` takes ``params[name]`` (a regex pattern
    anchored with ``^...$``), ``{name=literal}`` is a fixed segment passed to the handler as
    ``name``. Tornado matches the path still percent-encoded: ``encoded[name]`` is the pattern
    there, where a value's encoding differs from the value (``%2F`` for ``/``)."""

    path: str
    handler: type
    ops: dict[str, Op]
    params: dict[str, str] = field(default_factory=dict)
    encoded: dict[str, str] = field(default_factory=dict)

    @property
    def template(self) -> str:
        """The path as OpenAPI writes it (fixed segments as their literal)."""
        return _PARAM.sub(lambda m: m.group(2) or "{" + m.group(1) + "}", self.path)

    def regex(self) -> str:
        def group(m: re.Match[str]) -> str:
            name, literal = m.group(1), m.group(2)
            if literal:
                return f"(?P<{name}>{literal})"
            pattern = self.encoded.get(name) or self.params[name]
            body = pattern.removeprefix("^").removesuffix("$")
            return f"(?P<{name}>{body})"

        out, i = "", 0
        for m in _PARAM.finditer(self.path):
            out += re.escape(self.path[i : m.start()]) + group(m)
            i = m.end()
        return out + re.escape(self.path[i:])

    def path_params(self) -> list[str]:
        return [m.group(1) for m in _PARAM.finditer(self.path) if not m.group(2)]
