"""Configuration: one TOML file over the embedded defaults; refused at load with key and reason.

The keys, their types and defaults are the models in ``sandboxd/models/config.py`` (documented
in ``docs/config.md``, generated from them), so ``sandboxd serve`` needs no file and a file only
names what it changes: tables are merged key by key over what came before. This module loads,
merges and validates, and holds the rules that span several keys.
"""

from __future__ import annotations

import copy
import tomllib
from typing import Any

from pydantic import PrivateAttr, ValidationError

from .errors import InvalidRequest, NotFound, Reason
from .images.settings import check_images
from .models.config import ConfigFile, Profile, Quota, QuotaPatch
from .models.types import first_error
from .network.settings import NetworkConfig, check_network
from .units import format_size

__all__ = ["Config", "NetworkConfig", "Profile", "Quota", "load", "parse_quota"]


class Config(ConfigFile):
    """The validated config, and the views of it the daemon asks for."""

    _source: str = PrivateAttr("<embedded>")

    def model_post_init(self, context: Any) -> None:
        for name, profile in self.profiles.items():
            profile._name = name

    @property
    def source(self) -> str:
        return self._source

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def default_quota(self) -> Quota:
        return self.quotas.default

    @property
    def user_groups(self) -> dict[str, tuple[str, ...]]:
        return {name: table.groups for name, table in self.users.items()}

    @property
    def user_profiles(self) -> dict[str, tuple[str, ...]]:
        return {n: t.profiles for n, t in self.users.items() if t.profiles is not None}

    @property
    def user_quotas(self) -> dict[str, Quota]:
        return {
            name: QuotaPatch(**table.model_dump(include=set(QuotaPatch.model_fields))).over(
                self.default_quota
            )
            for name, table in self.users.items()
            if table.model_fields_set & set(QuotaPatch.model_fields)
        }

    @property
    def group_quotas(self) -> dict[str, Quota]:
        return {name: patch.over(self.default_quota) for name, patch in self.groups.items()}

    def profile(self, name: str) -> Profile:
        try:
            return self.profiles[name]
        except KeyError:
            raise NotFound(f"unknown profile {name!r}", reason=Reason.UNKNOWN_PROFILE) from None

    def quota_for(self, user: str) -> Quota:
        """Per-user quota, else the largest of the user's groups', else the default."""
        mine = self.user_quotas
        if user in mine:
            return mine[user]
        groups = self.group_quotas
        found = [groups[g] for g in self.user_groups.get(user, ()) if g in groups]
        if found:
            return max(found, key=lambda q: (q.memory, q.cpus, q.max_sandboxes))
        return self.default_quota


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _bad(key: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"config: {key}: {why}", reason=Reason.BAD_CONFIG)


def _check_profile(name: str, p: Profile) -> None:
    """A profile's defaults must lie within its own maxima."""
    where = f"profiles.{name}"
    for key, value, most, show in (
        ("cpus", p.cpus, p.max_cpus, str),
        ("memory", p.memory, p.max_memory, format_size),
        ("pids", p.pids, p.max_pids, str),
        ("disk", p.disk, p.max_disk, format_size),
    ):
        if value > most:
            raise _bad(f"{where}.{key}", f"default {show(value)} is above max_{key} {show(most)}")


def build(data: dict[str, Any], source: str = "<embedded>") -> Config:
    """Validate a merged TOML document into a Config, naming the first bad key."""
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        key, why = first_error(exc)
        raise _bad(key, why) from None
    for name, profile in config.profiles.items():
        _check_profile(name, profile)
    check_network(config.network)
    check_images(config.images)
    config._source = source
    return config


def parse_quota(
    raw: Any, where: str, base: Quota | None = None, reason: Reason = Reason.BAD_CONFIG
) -> Quota:
    """A quota from ``raw`` laid over ``base`` (a stored override, or the admin API's change)."""
    if not isinstance(raw, dict):
        raise InvalidRequest(f"{where}: expected an object", reason=reason)
    try:
        patch = QuotaPatch.model_validate(raw)
    except ValidationError as exc:
        key, why = first_error(exc)
        raise InvalidRequest(f"{where}.{key}: {why}", reason=reason) from None
    return patch.over(base or Quota())


def load(path: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load the defaults, merge ``path`` (if any) and ``overrides`` over it, validate."""
    data: dict[str, Any] = {}
    source = "<embedded>"
    if path:
        try:
            with open(path, "rb") as fh:
                data = _merge(data, tomllib.load(fh))
        except OSError as exc:
            raise _bad(path, f"cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise _bad(path, f"not valid TOML: {exc}") from None
        source = path
    if overrides:
        data = _merge(data, {k: v for k, v in overrides.items() if v is not None})
    return build(data, source)
