"""Authorization matrix: every operation of the daemon's own ``/api/openapi.json`` × {no token,
another user, the owner, a service token acting for the owner, an admin}.

The operations are read from the served document, so a new route is in the matrix as soon as it
exists; it fails here until ``TARGETS`` says how to aim at a resource of the owner (its path
parameters). The expected statuses are the contract, written out below independently of the
code (``EXPECTED``); the document's ``x-access`` says which row applies. An allowed caller must
get neither 401 nor 403 nor 404 (nor a 5xx): the probes are chosen so that it then fails later
(409, 400) or succeeds without spoiling the next probe.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
import requests
from conftest import PREFIX, SANDBOXD, Client, Daemon, make_daemon, other_instance, stop_daemon

from sandboxd.errors import Reason

CALLERS = ("none", "other", "owner", "service", "admin")

#: the contract (docs/api.md "Who may call what"): None = allowed
EXPECTED: dict[str, dict[str, int | None]] = {
    "public": dict(none=None, other=None, owner=None, service=None, admin=None),
    "token": dict(none=401, other=None, owner=None, service=None, admin=None),
    "owner": dict(none=401, other=404, owner=None, service=None, admin=None),
    "owner-named": dict(none=401, other=403, owner=None, service=None, admin=None),
    "self": dict(none=401, other=404, owner=None, service=404, admin=None),
    "service": dict(none=401, other=403, owner=403, service=None, admin=None),
    "admin": dict(none=401, other=403, owner=403, service=403, admin=None),
}


def config(volume_root: str) -> str:
    return f"""
volume_roots = ["{volume_root}"]
stop_grace_seconds = 1

[profiles.default]
memory = "256m"
pids = 128
network = "none"
disk = "64m"

[network]
pool = "10.217.0.0/16"      # daemons sharing the test netns need pools of their own

[quotas.default]
max_sandboxes = 12
max_kernels = 4
memory = "8g"
cpus = 8.0
"""


@dataclass
class World:
    """The callers and the owner's resources the probes aim at."""

    d: Daemon
    clients: dict[str, Client]
    owner: str
    counter: Iterator[int] = field(default_factory=itertools.count)
    kernels: list[str] = field(default_factory=list)
    fresh: bool = False  # True: a probe for an allowed caller of an operation in FRESH

    def unique(self, stem: str) -> str:
        return f"{stem}{next(self.counter)}"

    def sandbox(self, command: list[str] | None = None) -> str:
        sb = self.clients["owner"].call(
            "POST", "/api/sandboxes", json={"command": command or ["sleep", "300"]}
        )
        return sb["id"]

    def exited_sandbox(self) -> str:
        sid = self.sandbox(["true"])
        self.clients["owner"].call("POST", f"/api/sandboxes/{sid}/wait")
        return sid

    def kernel(self) -> str:
        """A kernel of the owner, started by the service token (as a JupyterHub does); one
        shared by the probes that leave it running."""
        if self.kernels and not self.fresh:
            return self.kernels[0]
        body = {"name": "python3", "env": {"KERNEL_USERNAME": self.owner}}
        kid = self.clients["service"].call("POST", "/api/kernels", json=body)["id"]
        self.kernels.append(kid)
        return kid

    def volume(self) -> str:
        name = self.unique("vol")
        self.clients["admin"].call("PUT", f"/api/users/{self.owner}/volumes/{name}")
        return name

    def image(self) -> str:
        """A one-layer image loaded by the admin (its name, percent-encoded for a path)."""
        resp = self.clients["admin"].request("POST", "/api/images/load", data=tiny_image())
        assert resp.status_code == 201, resp.text
        return quote(IMAGE_NAME, safe="")

    def network(self) -> str:
        name = self.unique("net")
        body = {"name": name, "user": self.owner}
        self.clients["admin"].call("POST", "/api/networks", json=body)
        return name


@dataclass
class Probe:
    """One request: path parameters, query and body (JSON, or raw bytes in ``data``)."""

    params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    body: Any = None
    data: bytes | None = None


IMAGE_NAME = "example.org/mx/tiny:1"


def tiny_image() -> bytes:
    """A ``docker save`` archive of one image with one layer holding one file."""

    def tar_of(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, content in files.items():
                info = tarfile.TarInfo(name)
                info.size, info.mtime = len(content), 1700000000
                tar.addfile(info, io.BytesIO(content))
        return buf.getvalue()

    layer = tar_of({"hello.txt": b"hello\n"})
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    manifest = [{"Config": "config.json", "RepoTags": [IMAGE_NAME], "Layers": ["l/layer.tar"]}]
    return tar_of(
        {
            "config.json": config,
            "l/layer.tar": layer,
            "manifest.json": json.dumps(manifest).encode(),
        }
    )


Target = Callable[[World, str], Probe]


def _sandbox(w: World, method: str) -> Probe:
    return Probe({"ref": w.sandbox()}, body={"memory": "128m"} if method == "patch" else None)


#: per path template: how to aim at the owner's resource (called once per operation, and again
#: per allowed caller for operations listed in FRESH, which use up what they touch)
TARGETS: dict[str, Target] = {
    "/api/sandboxes": lambda w, m: Probe(
        body={"command": ["true"], "auto_remove": True} if m == "post" else None
    ),
    "/api/sandboxes/{ref}": _sandbox,
    "/api/sandboxes/{ref}/stop": lambda w, m: Probe({"ref": w.sandbox()}, body={"timeout": 0}),
    "/api/sandboxes/{ref}/wait": lambda w, m: Probe({"ref": w.exited_sandbox()}),
    "/api/sandboxes/{ref}/logs": lambda w, m: Probe({"ref": w.exited_sandbox()}),
    "/api/sandboxes/{ref}/stats": lambda w, m: Probe({"ref": w.sandbox()}),
    "/api/sandboxes/{ref}/attach": lambda w, m: Probe({"ref": w.sandbox()}),
    "/api/stats": lambda w, m: Probe(),
    "/api/users": lambda w, m: Probe(body={"name": w.unique("mxnew")} if m == "post" else None),
    "/api/users/{name}": lambda w, m: Probe({"name": w.owner}),
    "/api/users/{name}/tokens": lambda w, m: Probe({"name": w.owner}),
    "/api/users/{name}/quota": lambda w, m: Probe(
        {"name": w.owner}, body={"max_sandboxes": 12} if m == "put" else None
    ),
    "/api/users/{user}/volumes": lambda w, m: Probe({"user": w.owner}),
    "/api/users/{user}/volumes/{name}": lambda w, m: Probe({"user": w.owner, "name": w.volume()}),
    "/api/whoami": lambda w, m: Probe(),
    "/api/status": lambda w, m: Probe(),
    "/api/networks": lambda w, m: Probe(body={"name": w.unique("mine")} if m == "post" else None),
    "/api/networks/{name}": lambda w, m: Probe({"name": w.network()}, {"user": w.owner}),
    "/api/kernelspecs": lambda w, m: Probe(),
    "/api/kernelspecs/{name}": lambda w, m: Probe({"name": "python3"}),
    "/kernelspecs/{name}/{fname}": lambda w, m: Probe(
        {"name": "python3", "fname": "logo-64x64.png"}
    ),
    # a bad env value is refused (400) after the token was accepted: no kernel is started
    "/api/kernels": lambda w, m: Probe(body={"env": {"KERNEL_X": "`id`"}} if m == "post" else None),
    "/api/kernels/{kernel_id}": lambda w, m: Probe({"kernel_id": w.kernel()}),
    "/api/kernels/{kernel_id}/interrupt": lambda w, m: Probe({"kernel_id": w.kernel()}, body={}),
    "/api/kernels/{kernel_id}/restart": lambda w, m: Probe({"kernel_id": w.kernel()}, body={}),
    "/api/kernels/{kernel_id}/channels": lambda w, m: Probe({"kernel_id": w.kernel()}),
    "/api/images": lambda w, m: Probe(),
    # a reference that does not parse: refused (400) once the caller may pull, before any
    # registry is asked
    "/api/images/pull": lambda w, m: Probe(body={"ref": "Not/A/Reference"}),
    "/api/images/load": lambda w, m: Probe(data=tiny_image()),
    "/api/images/prune": lambda w, m: Probe(),
    "/api/images/{ref}": lambda w, m: Probe({"ref": w.image()}),
    "/api/openapi.json": lambda w, m: Probe(),
    "/metrics": lambda w, m: Probe(),
}
#: operations that use up their target: each allowed caller gets a new one
FRESH = {
    ("delete", "/api/users/{name}"),
    ("delete", "/api/users/{user}/volumes/{name}"),
    ("delete", "/api/networks/{name}"),
    ("delete", "/api/kernels/{kernel_id}"),
}
#: operations whose target is its owner's account itself: a user made for the probe
OWN_ACCOUNT = {("delete", "/api/users/{name}")}


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    vol = tempfile.mkdtemp(prefix=f"{PREFIX}-mxvol-")
    os.chmod(vol, 0o755)
    d = make_daemon(other_instance("m"), config(vol))
    d.start()
    admin = d.admin
    hub = admin.call("POST", "/api/users", json={"name": "mxhub", "service": True})
    clients = {
        "none": Client(d.url, None),
        "other": d.user("mxother"),
        "owner": d.user("mxowner"),
        "service": Client(d.url, hub["token"]),
        "admin": admin,
    }
    w = World(d, clients, "mxowner")
    try:
        yield w
    finally:
        for kid in w.kernels:
            admin.request("DELETE", f"/api/kernels/{kid}")
        for user in admin.call("GET", "/api/users"):
            if user["name"] != "admin":
                admin.request("DELETE", f"/api/users/{user['name']}")
        stop_daemon(d)
        subprocess.run(
            [SANDBOXD, "cleanup", "--instance", d.instance, "--state-dir", d.state_dir, "--purge"],
            capture_output=True,
        )
        shutil.rmtree(vol, ignore_errors=True)


def test_the_contract_in_the_code_is_the_one_written_here() -> None:
    from sandboxd.api.routing import MATRIX

    assert {str(k): v for k, v in MATRIX.items()} == EXPECTED


def _call(w: World, caller: str, method: str, template: str, probe: Probe) -> requests.Response:
    path = template
    for name, value in probe.params.items():
        path = path.replace("{" + name + "}", value)
    client = w.clients[caller]
    kw: dict[str, Any] = {"params": probe.query}
    if probe.body is not None:
        kw["json"] = probe.body
    if probe.data is not None:
        kw["data"] = probe.data
    return client.request(method.upper(), path, **kw)


def _check(resp: requests.Response, expected: int | None, where: str) -> None:
    assert resp.status_code < 500, (where, resp.status_code, resp.text)
    if expected is None:
        assert resp.status_code not in (401, 403, 404), (where, resp.status_code, resp.text)
        return
    assert resp.status_code == expected, (where, resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"reason", "message"} and body["reason"] in set(Reason), body


def test_every_operation_for_every_caller(world: World) -> None:
    doc = requests.get(world.d.url + "/api/openapi.json", timeout=30).json()
    missing = [path for path in doc["paths"] if path not in TARGETS]
    assert missing == [], f"add a target to TARGETS for {missing}"
    checked = 0
    for template, item in doc["paths"].items():
        for method, op in item.items():
            expected = EXPECTED[op["x-access"]]
            probe = TARGETS[template](world, method)
            if (method, template) in OWN_ACCOUNT:
                name = world.unique("mxdel")
                world.clients["owner"] = world.d.user(name)
                probe = Probe({"name": name})
            for caller in CALLERS:
                if (method, template) in FRESH - OWN_ACCOUNT and expected[caller] is None:
                    world.fresh = True
                    probe = TARGETS[template](world, method)
                    world.fresh = False
                resp = _call(world, caller, method, template, probe)
                _check(resp, expected[caller], f"{caller} {method.upper()} {template}")
                checked += 1
            world.clients["owner"] = world.d.users["mxowner"]
    assert checked == 5 * sum(len(item) for item in doc["paths"].values())


def test_a_service_never_acts_for_an_admin_or_another_service(world: World) -> None:
    service = world.clients["service"]
    world.clients["admin"].call("POST", "/api/users", json={"name": "mxhub2", "service": True})
    for target in ("admin", "mxhub2"):
        assert service.request("GET", f"/api/users/{target}").status_code == 404
        assert service.request("POST", f"/api/users/{target}/tokens").status_code == 403
        assert service.request("GET", f"/api/users/{target}/volumes").status_code == 403
        body = {"command": ["true"], "user": target}
        assert service.request("POST", "/api/sandboxes", json=body).status_code == 403
    body = {"name": "mxsneaky", "admin": True}
    assert service.request("POST", "/api/users", json=body).status_code == 403
