"""A start request for a kernel, validated: who it is for, which kernelspec, which environment.

Rules (reference/jupyter.md §1.3 and §2.5):
  * ``KERNEL_*`` variables and the admin's ``env_allow`` list pass into the kernel, nothing else
    (jupyter_server sends its own ``KERNEL_*`` variables; the rest is dropped, as KG/EG do);
  * a value longer than 4096 characters or holding control characters, ``$`` or a backtick is
    refused with 400 (EG's hardening against injection);
  * only a *service* token (a JupyterHub's) may act for the user named by ``KERNEL_USERNAME``;
    any other token acts as itself, whatever ``KERNEL_USERNAME`` says;
  * ``KERNEL_WORKING_DIR`` is honoured when it lies inside one of the kernel's volumes,
    otherwise the kernel starts where its image says (its WorkingDir, else its user's home;
    jupyter_server sends the *server's* notebook path, which usually means nothing inside the
    sandbox);
  * ``KERNEL_CPUS`` / ``KERNEL_MEMORY`` ask for limits other than the profile's defaults
    (checked against the profile's maxima like any sandbox request).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import InvalidRequest, NotFound, Reason
from ..models.requests import KernelStart
from ..models.types import validate
from ..state import Store, User
from . import specs

MAX_VALUE = 4096
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
BAD_VALUE = re.compile(r"[\x00-\x1f\x7f$`]")


@dataclass(frozen=True)
class KernelRequest:
    """Everything "start a kernel sandbox for (user, kernelspec, env)" needs; reused on restart."""

    owner: User
    kernelspec: specs.KernelSpec
    env: dict[str, str]
    workdir: str  # "" = the image's own
    volumes: tuple[str, ...]
    limits: dict[str, str]


def clean_env(raw: Any, config: Config) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidRequest("env: expected an object of strings", reason="bad-env")
    allowed = set(config.env_allow)
    out = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not ENV_NAME.fullmatch(key):
            raise InvalidRequest(f"env: {str(key)[:64]!r} is not a variable name", reason="bad-env")
        if not (key.startswith("KERNEL_") or key in allowed):
            continue
        if not isinstance(value, str):
            raise InvalidRequest(f"env: {key} must be a string", reason="bad-env")
        if len(value) > MAX_VALUE:
            raise InvalidRequest(
                f"env: {key} is longer than {MAX_VALUE} characters", reason="bad-env"
            )
        if BAD_VALUE.search(value):
            raise InvalidRequest(
                f"env: {key} holds a control character, '$' or a backtick", reason="bad-env"
            )
        out[key] = value
    return out


def owner_of(actor: User, env: dict[str, str], store: Store) -> User:
    """The user the kernel belongs to: the actor, or for a service token ``KERNEL_USERNAME``."""
    wanted = env.get("KERNEL_USERNAME")
    if not actor.service or not wanted or wanted == actor.name:
        return actor
    user = store.get_user(wanted, missing_ok=True)
    if user is None:
        raise NotFound(f"KERNEL_USERNAME: no user {wanted!r}", reason="unknown-user")
    return user


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def working_dir(env: dict[str, str], volumes: tuple[str, ...]) -> str:
    """``KERNEL_WORKING_DIR`` if it lies in a volume, else "" (the image's own)."""
    wanted = env.get("KERNEL_WORKING_DIR", "")
    if not wanted or not os.path.isabs(wanted) or ".." in wanted.split("/"):
        return ""
    wanted = os.path.normpath(wanted)
    for vol in volumes:
        parts = vol.split(":")
        if len(parts) >= 2 and _inside(wanted, os.path.normpath(parts[1])):
            return wanted
    return ""


def parse(body: Any, actor: User, config: Config, store: Store) -> KernelRequest:
    """Validate ``POST /api/kernels``; raises 400/404 before anything is made."""
    req = validate(KernelStart, body, Reason.BAD_BODY)
    name = req.name or None
    env = clean_env(req.env, config)
    owner = owner_of(actor, env, store)
    visible = specs.visible(config, owner.name, owner.admin)
    name = name or specs.default_name(visible)
    if name not in visible:
        specs.get(config, name)  # 404 if it does not exist at all
        from ..errors import Forbidden

        raise Forbidden(
            f"user {owner.name} may not use kernelspec {name!r}", reason="profile-denied"
        )
    ks = visible[name]
    raw_volumes = ks.sandbox.get("volumes") or []
    volumes = tuple(str(v).replace("{user}", owner.name) for v in raw_volumes)
    limits = {}
    for var, key in (("KERNEL_CPUS", "cpus"), ("KERNEL_MEMORY", "memory")):
        if env.get(var):
            limits[key] = env[var]
    return KernelRequest(
        owner=owner,
        kernelspec=ks,
        env=env,
        workdir=working_dir(env, volumes),
        volumes=volumes,
        limits=limits,
    )
