"""Kernelspecs served by the daemon: ``<dir>/<name>/kernel.json`` plus resource files (logos).

A kernelspec says which profile and image its kernels get in ``metadata.sandboxd``:

    "metadata": {"sandboxd": {"profile": "default", "image": "host", "volumes": []}}

``volumes`` are ``HOST:CTR[:ro]`` strings (``{user}`` is replaced by the kernel's owner), checked
against the admin's volume roots like any sandbox volume. Directories are read on every request
(they are small), so a new kernelspec needs no restart; earlier directories win on a name clash.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..errors import NotFound

SHIPPED_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "kernelspec"
)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESOURCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
DEFAULT = "python3"


@dataclass(frozen=True)
class KernelSpec:
    name: str
    directory: str
    spec: dict[str, Any]

    @property
    def sandbox(self) -> dict[str, Any]:
        meta = self.spec.get("metadata") or {}
        return meta.get("sandboxd") or {}

    @property
    def profile(self) -> str:
        return str(self.sandbox.get("profile", "default"))

    def resources(self) -> dict[str, str]:
        out = {}
        for fname in sorted(os.listdir(self.directory)):
            stem, ext = os.path.splitext(fname)
            if fname != "kernel.json" and RESOURCE.fullmatch(fname) and ext:
                out[stem] = f"/kernelspecs/{self.name}/{fname}"
        return out

    def model(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec, "resources": self.resources()}


def search_path(config: Config) -> tuple[str, ...]:
    return (*config.kernelspec_dirs, SHIPPED_DIR)


def _load(name: str, directory: str) -> KernelSpec | None:
    try:
        with open(os.path.join(directory, "kernel.json")) as fh:
            spec = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("argv"), list):
        return None
    return KernelSpec(name=name, directory=directory, spec=spec)


def all_specs(config: Config) -> dict[str, KernelSpec]:
    """Every valid kernelspec whose profile exists in the current config."""
    found: dict[str, KernelSpec] = {}
    for root in search_path(config):
        try:
            names = sorted(os.listdir(root))
        except OSError:
            continue
        for name in names:
            if name in found or not NAME.fullmatch(name):
                continue
            ks = _load(name, os.path.join(root, name))
            if ks is not None and ks.profile in config.profiles:
                found[name] = ks
    return found


def visible(config: Config, user: str | None, admin: bool = False) -> dict[str, KernelSpec]:
    """The kernelspecs ``user`` may start (their profile is allowed for them)."""
    specs = all_specs(config)
    allowed = config.user_profiles.get(user) if user else None
    if allowed is None or admin:
        return specs
    return {n: ks for n, ks in specs.items() if ks.profile in allowed}


def get(config: Config, name: str) -> KernelSpec:
    ks = all_specs(config).get(name)
    if ks is None:
        raise NotFound(f"no such kernelspec: {name}", reason="unknown-kernelspec")
    return ks


def default_name(specs: dict[str, KernelSpec]) -> str:
    if DEFAULT in specs or not specs:
        return DEFAULT
    return sorted(specs)[0]


def resource_path(config: Config, name: str, fname: str) -> str:
    """Path of a kernelspec's resource file; 404 for anything else (no path tricks)."""
    ks = get(config, name)
    if not RESOURCE.fullmatch(fname) or fname == "kernel.json":
        raise NotFound(f"no such resource: {fname}", reason="unknown-resource")
    path = os.path.join(ks.directory, fname)
    if not os.path.isfile(path):
        raise NotFound(f"no such resource: {fname}", reason="unknown-resource")
    return path
