"""Running an image, admission side: the request's image resolved (pulled on first use when the
profile allows it), and the image's config applied to the spec the way ``docker run`` does.

* ``Entrypoint`` + ``Cmd``: the request's ``command`` replaces ``Cmd``; an ``entrypoint`` in
  the request replaces the image's Entrypoint and drops its Cmd (``docker run --entrypoint``);
  the command run is entrypoint + command. ``[]`` clears an entrypoint.
* ``Env``: the image's variables, then the request's on top.
* ``WorkingDir``: unless the request names one; an image without one starts in its user's home.
* ``User``: resolved in the image's own passwd/group (``guest.py``) into ``spec.guest``.

The spec then records the image id it resolved to (``spec.image_id``): the runtime's image
step takes a hold on exactly that image, whatever the name points at later. The built-in
``host`` image is not in the store: only the entrypoint rule applies to it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

from .. import blocking
from ..errors import InvalidImage, InvalidRequest, NotFound
from ..spec import Guest, SandboxSpec
from .manager import ImageManager, Listener
from .store import ResolvedImage

HOST = "host"
ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
IMAGE_ID = re.compile(r"(sha256:)?[0-9a-f]{12,64}")  # an id or its prefix: never pulled
MAX_ARGV_BYTES = 128 * 1024


def entrypoint_of(body: dict[str, Any]) -> tuple[str, ...] | None:
    """The request's ``entrypoint`` override (None: the image's own)."""
    raw = body.get("entrypoint")
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(a, str) and "\0" not in a for a in raw):
        raise InvalidRequest("entrypoint: expected a list of strings", reason="bad-entrypoint")
    if sum(len(a) for a in raw) > MAX_ARGV_BYTES:
        raise InvalidRequest("entrypoint: too long", reason="bad-entrypoint")
    return tuple(raw)


def _image_env(resolved: ResolvedImage) -> list[tuple[str, str]]:
    out = []
    for item in resolved.config.env:
        key, sep, value = item.partition("=")
        if not sep or not ENV_KEY.fullmatch(key) or "\0" in value:
            raise InvalidImage(
                f"image {resolved.id[:19]}: bad Env entry {item[:64]!r}", reason="bad-image"
            )
        out.append((key, value))
    return out


def _image_argv(values: tuple[str, ...] | None, what: str) -> tuple[str, ...]:
    if values and any("\0" in v for v in values):
        raise InvalidImage(f"the image's {what} holds a NUL byte", reason="bad-image")
    return values or ()


def _workdir(resolved: ResolvedImage, guest: Guest) -> str:
    wanted = resolved.config.working_dir
    if not wanted:
        return guest.home
    if not os.path.isabs(wanted) or ".." in wanted.split("/") or "\0" in wanted:
        raise InvalidImage(
            f"the image's WorkingDir {wanted[:64]!r} is not an absolute path", reason="bad-image"
        )
    return os.path.normpath(wanted)


def apply(
    spec: SandboxSpec,
    body: dict[str, Any],
    resolved: ResolvedImage | None,
    guest: Guest,
) -> SandboxSpec:
    """The spec to run: ``resolved`` (None for the host image) applied under the request."""
    override = entrypoint_of(body)
    if resolved is None:
        command = (override or ()) + spec.command
        if not command:
            raise InvalidRequest(
                "command: the host image has no Cmd; give a command", reason="no-command"
            )
        return dataclasses.replace(spec, command=command)
    config = resolved.config
    if override is not None:
        command = override + spec.command
    else:
        entry = _image_argv(config.entrypoint, "Entrypoint")
        command = entry + (spec.command or _image_argv(config.cmd, "Cmd"))
    if not command:
        raise InvalidRequest(
            f"image {spec.image} has no Entrypoint or Cmd: give a command",
            reason="no-command",
        )
    env = dict(_image_env(resolved))
    env.update(spec.env)
    workdir = spec.workdir if body.get("workdir") else _workdir(resolved, guest)
    return dataclasses.replace(
        spec,
        command=command,
        env=tuple(env.items()),
        workdir=workdir,
        image_id=resolved.id,
        guest=guest,
    )


async def resolve_or_pull(
    images: ImageManager, ref: str, may_pull: bool, on_event: Listener | None = None
) -> ResolvedImage:
    """The image ``ref`` names; pulled first if it is missing and ``may_pull``; else 404."""
    try:
        return images.resolve(ref, check=False)
    except NotFound:
        pullable = may_pull and not IMAGE_ID.fullmatch(ref)
        if pullable:
            try:
                images.check_registry(ref)  # a 403 for a registry not on the allow-list
            except InvalidRequest:  # not a reference at all: nothing to pull
                pullable = False
        if not pullable:
            hint = "" if may_pull else " (pulling on first use needs a profile with allow_pull)"
            raise NotFound(f"no such image: {ref}{hint}", reason="image-not-found") from None
    await images.pull(ref, on_event)
    return images.resolve(ref, check=False)


async def prepare(
    images: ImageManager | None,
    spec: SandboxSpec,
    body: dict[str, Any],
    *,
    may_pull: bool,
    on_event: Listener | None = None,
) -> SandboxSpec:
    """``spec`` with its image resolved and applied (pulls and disk reads off the loop)."""
    if spec.image == HOST:
        return apply(spec, body, None, Guest())
    if images is None:
        raise NotFound(f"no such image: {spec.image}", reason="image-not-found")
    resolved = await resolve_or_pull(images, spec.image, may_pull, on_event)
    guest = images.cached_guest(resolved)
    if guest is None:
        guest = await blocking.run(images.guest_of, resolved)
    return apply(spec, body, resolved, guest)
