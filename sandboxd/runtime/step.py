"""The interface of one step of a sandbox's start (``STEPS`` in ``sandbox.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..spec import SandboxSpec

if TYPE_CHECKING:
    from .sandbox import Build, Runtime


class Step:
    """One stage of a start: ``prepare`` fills the Build; ``release`` undoes it from the spec
    alone (idempotent), so a restarted daemon can release what a crashed one made."""

    name = "step"

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def prepare(self, build: Build) -> None:
        raise NotImplementedError

    async def release(self, spec: SandboxSpec) -> None:
        return None
