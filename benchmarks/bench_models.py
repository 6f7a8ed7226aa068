"""Validation cost on the sandbox create path: pydantic v2 against msgspec, in the same run.

Measures, per create request body (a typical one, of a JupyterHub-like client):

1. ``json.loads`` of the body (the floor every option pays);
2. pydantic: ``SandboxCreate.model_validate`` (the model the daemon uses);
3. msgspec: ``msgspec.convert`` into a ``Struct`` of the same fields and constraints (sizes
   converted in ``__post_init__``; msgspec cannot do that in a frozen Struct);
4. the whole of ``admission.build_spec`` (validation + profile, network, volume and quota
   policy), which is what a create pays before the host is touched;
5. with ``--create`` (root): the median ``POST /api/sandboxes`` until the command runs, for the
   ratio of validation to the whole create.

Run: ``.venv/bin/python benchmarks/bench_models.py [--create]``. Prints medians of best-of-5
runs of 20000 calls each, in microseconds.
"""

from __future__ import annotations

import json
import statistics
import sys
import timeit
from typing import Annotated

import msgspec

from sandboxd import admission, config
from sandboxd.models.requests import SandboxCreate
from sandboxd.state import User
from sandboxd.units import parse_size

BODY = {
    "command": ["python3", "-m", "ipykernel_launcher", "-f", "/run/kernel/connection.json"],
    "name": "kernel-6f1c2d3e-4b5a",
    "profile": "default",
    "cpus": 0.5,
    "memory": "256m",
    "env": {"KERNEL_ID": "6f1c2d3e-4b5a-4c3d-9e8f-0123456789ab", "KERNEL_USERNAME": "alice"},
    "volumes": ["work:/home/jovyan/work"],
    "labels": {"kernel_id": "6f1c2d3e-4b5a-4c3d-9e8f-0123456789ab", "kernelspec": "python3"},
    "network": "none",
}
N = 20000

Pattern = msgspec.Meta(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")


class MsgspecCreate(msgspec.Struct, forbid_unknown_fields=True):
    """The same shape as ``SandboxCreate`` (constraints as msgspec can state them)."""

    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    name: Annotated[str, Pattern] | None = None
    profile: str = "default"
    image: str | None = None
    cpus: Annotated[float, msgspec.Meta(gt=0)] | None = None
    memory: int | str | None = None
    swap: int | str | None = None
    disk: int | str | None = None
    pids: Annotated[int, msgspec.Meta(ge=8)] | None = None
    device_read_bps: list[str] = []
    device_write_bps: list[str] = []
    device_read_iops: list[str] = []
    device_write_iops: list[str] = []
    volumes: Annotated[list[str], msgspec.Meta(max_length=32)] = []
    env: dict[str, str] | list[str] = {}
    workdir: str | None = None
    stdin: bool = False
    auto_remove: bool = False
    user: str | None = None
    network: str | None = None
    ports: list[str] = []
    labels: dict[str, str] = {}

    def __post_init__(self) -> None:
        for key in ("memory", "swap", "disk"):
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, parse_size(value))
        if any("\0" in a for a in self.command):
            raise ValueError("command: NUL")


def best(fn, n: int = N) -> float:
    """Microseconds per call, best of 5 runs."""
    return min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6


def create_median() -> float:
    """Median ms of POST /api/sandboxes (network none) until running, on a fresh daemon."""
    from harness import daemon, timed

    with daemon('[profiles.default]\nnetwork = "none"\n') as d:
        ids: list[str] = []

        def create() -> None:
            resp = d.post(
                "/api/sandboxes", {"command": ["sleep", "5"], "memory": "64m", "cpus": 0.1}
            )
            resp.raise_for_status()
            ids.append(resp.json()["id"])
            if len(ids) > 4:
                old = ids.pop(0)
                d.post(f"/api/sandboxes/{old}/stop", {"timeout": 0})
                import requests

                requests.delete(
                    f"{d.url}/api/sandboxes/{old}?force=1", headers=d.admin_headers, timeout=60
                )

        return statistics.median(timed(create, 30)) * 1000


def main() -> None:
    raw = json.dumps(BODY).encode()
    cfg = config.load(overrides={"volume_roots": ["/tmp"], "profiles": {"default": {}}})
    owner = User("alice", 800001, False, False, 0.0)
    assert SandboxCreate.model_validate(BODY).memory == msgspec.convert(BODY, MsgspecCreate).memory
    rows = [
        ("json.loads (floor)", best(lambda: json.loads(raw))),
        ("pydantic SandboxCreate.model_validate", best(lambda: SandboxCreate.model_validate(BODY))),
        (
            "msgspec convert into an equivalent Struct",
            best(lambda: msgspec.convert(BODY, MsgspecCreate)),
        ),
        (
            "admission.build_spec (validation + policy)",
            best(lambda: admission.build_spec(BODY, owner, cfg)),
        ),
    ]
    for name, us in rows:
        print(f"{name:<48} {us:8.2f} us")
    if "--create" in sys.argv:
        ms = create_median()
        print(f"{'POST /api/sandboxes until running (median)':<48} {ms * 1000:8.0f} us")
        for name, us in rows[1:3]:
            print(f"  {name}: {100 * us / (ms * 1000):.3f} % of a create")


if __name__ == "__main__":
    main()
