"""/api/images and ``sandboxctl image`` against a real daemon and a real registry, both on the
test netns' loopback: streamed pulls, policy (who may pull, load, remove), uploads and their
limit, errors as JSON, metrics and the OpenAPI document."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from conftest import CONFIG, SANDBOXCTL, Daemon, make_daemon, other_instance, stop_daemon
from helpers import wait_until
from image_registry import LAYOUTS, Registry, layouts_ready
from test_api import error

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not layouts_ready(), reason="image fixtures missing: run `make test-images`"
    ),
]


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    reg = Registry("none")
    try:
        reg.push("busybox", "busybox:latest")
        reg.push("busybox", "tools/busybox:1")
        reg.push("python", "python:latest")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def daemon(registry: Registry) -> Iterator[Daemon]:
    config = (
        CONFIG
        + f"""
[profiles.puller]
allow_pull = true

[users.carol]
profiles = ["default"]

[images]
allowed_registries = ["{registry.host}"]
max_load_bytes = "8m"

[images.registries."{registry.host}"]
insecure = true
"""
    )
    d = make_daemon(other_instance("m"), config)
    d.start()
    try:
        yield d
    finally:
        stop_daemon(d)
        subprocess.run(
            [os.path.join(os.path.dirname(SANDBOXCTL), "sandboxd"), "cleanup", "--purge"]
            + ["--instance", d.instance, "--state-dir", d.state_dir],
            capture_output=True,
        )
        shutil.rmtree(d.state_dir, ignore_errors=True)


def ctl(daemon: Daemon, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SANDBOXCTL, *args],
        env=daemon.env(token),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_streamed_pull_then_inspect_list_remove_prune(daemon: Daemon, registry: Registry) -> None:
    ref = f"{registry.host}/busybox:latest"
    resp = daemon.admin.request("POST", "/api/images/pull", json={"ref": ref, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    events = [json.loads(line) for line in resp.text.splitlines()]
    assert events[0] == {"status": "resolving", "ref": ref}
    assert {"status": "progress", "done": 1, "total": 1}.items() <= events[-2].items()
    assert events[-1]["status"] == "done"
    image = events[-1]["image"]
    assert image["names"] == [ref]
    assert daemon.admin.call("GET", f"/api/images/{quote(ref, safe='')}")["id"] == image["id"]
    assert daemon.admin.call("GET", f"/api/images/{image['id'][7:19]}")["id"] == image["id"]
    assert image["id"] in [i["id"] for i in daemon.admin.call("GET", "/api/images")]
    out = daemon.admin.call("DELETE", f"/api/images/{quote(ref, safe='')}")
    assert out["deleted"] == [image["id"]] and len(out["layers"]) == 1
    error(daemon.admin.request("GET", f"/api/images/{quote(ref, safe='')}"), 404, "image-not-found")
    assert daemon.admin.call("POST", "/api/images/prune")["images"] == []


def test_who_may_pull_load_and_remove(daemon: Daemon, registry: Registry) -> None:
    alice, carol = daemon.user("alice"), daemon.user("carol")
    ref = f"{registry.host}/tools/busybox:1"
    error(requests.get(daemon.url + "/api/images"), 401, "no-token")
    error(alice.request("POST", "/api/images/pull", json={"ref": ref}), 403, "pull-denied")
    error(
        carol.request("POST", "/api/images/pull", json={"ref": ref, "profile": "puller"}),
        403,
        "profile-denied",
    )
    image = alice.call("POST", "/api/images/pull", json={"ref": ref, "profile": "puller"})
    assert image["names"] == [ref]
    assert [i["id"] for i in carol.call("GET", "/api/images")] == [image["id"]]
    error(alice.request("DELETE", f"/api/images/{quote(ref, safe='')}"), 403, "not-admin")
    error(alice.request("POST", "/api/images/prune"), 403, "not-admin")
    error(alice.request("POST", "/api/images/load", data=b"x"), 403, "not-admin")
    daemon.admin.call("DELETE", f"/api/images/{quote(ref, safe='')}")


@pytest.mark.parametrize(
    "body, status, reason",
    [
        ({"ref": "Not A Ref"}, 400, "bad-reference"),
        ({"ref": "docker.io/library/busybox"}, 403, "registry-denied"),
        ({"ref": "x", "bogus": 1}, 400, None),
        ({}, 400, None),
    ],
)
def test_bad_pulls_are_refused(daemon: Daemon, body: dict, status: int, reason: str) -> None:
    error(daemon.admin.request("POST", "/api/images/pull", json=body), status, reason)


def test_pull_of_a_missing_image(daemon: Daemon, registry: Registry) -> None:
    ref = f"{registry.host}/nothing-here:latest"
    error(
        daemon.admin.request("POST", "/api/images/pull", json={"ref": ref}), 404, "image-not-found"
    )
    resp = daemon.admin.request("POST", "/api/images/pull", json={"ref": ref, "stream": True})
    last = json.loads(resp.text.splitlines()[-1])
    assert last["status"] == "error" and last["reason"] == "image-not-found"


def test_load_uploads_and_their_limit(daemon: Daemon, tmp_path: Path) -> None:
    archive = tmp_path / "bb.tar"
    subprocess.run(
        [
            "skopeo",
            "copy",
            "--quiet",
            f"oci:{os.path.join(LAYOUTS, 'busybox')}:latest",
            f"docker-archive:{archive}:example.org/loaded/busybox:v1",
        ],
        check=True,
        timeout=120,
    )
    with open(archive, "rb") as fh:
        out = daemon.admin.call("POST", "/api/images/load", data=fh, expect=201)
    (image,) = out["images"]
    assert image["names"] == ["example.org/loaded/busybox:v1"] and image["source"] == "load"
    big = tmp_path / "big.tar"
    with open(big, "wb") as fh:
        fh.truncate(9 * 1024 * 1024)
    with open(big, "rb") as fh:
        error(daemon.admin.request("POST", "/api/images/load", data=fh), 413, "body-too-large")
    error(
        daemon.admin.request("POST", "/api/images/load", data=b"not a tar" * 99), 422, "bad-archive"
    )
    # the upload is removed once the answer is out (asynchronously, off the loop)
    wait_until(lambda: os.listdir(os.path.join(daemon.state_dir, "images/tmp")) == [])
    daemon.admin.call("DELETE", "/api/images/" + quote("example.org/loaded/busybox:v1", safe=""))


def test_sandboxctl_image_commands(daemon: Daemon, registry: Registry, tmp_path: Path) -> None:
    ref = f"{registry.host}/busybox"
    pulled = ctl(daemon, "image", "pull", ref)
    assert pulled.returncode == 0, pulled.stderr
    assert f"Pulling {ref}" in pulled.stdout and "Pull complete" in pulled.stdout
    assert "Status: pulled" in pulled.stdout
    again = ctl(daemon, "image", "pull", ref)
    assert "Already exists" in again.stdout
    listing = ctl(daemon, "image", "ls")
    assert listing.returncode == 0 and f"{registry.host}/busybox" in listing.stdout
    assert listing.stdout.splitlines()[0].split()[:3] == ["REPOSITORY", "TAG", "IMAGE"]
    images = json.loads(ctl(daemon, "image", "ls", "--json").stdout)
    (image,) = [i for i in images if f"{ref}:latest" in i["names"]]
    inspected = json.loads(ctl(daemon, "image", "inspect", f"{ref}:latest").stdout)
    assert inspected[0]["id"] == image["id"]
    loaded = ctl(
        daemon,
        "image",
        "load",
        "-i",
        os.path.join(LAYOUTS, "busybox"),
        "--tag",
        "example.org/from-dir:1",
    )
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith("Loaded image: ") and "example.org/from-dir:1" in loaded.stdout
    denied = ctl(daemon, "image", "pull", ref, token=daemon.user("alice").token)
    assert denied.returncode == 1 and "(pull-denied)" in denied.stderr
    missing = ctl(daemon, "image", "pull", f"{registry.host}/nope")
    assert missing.returncode == 1 and "(image-not-found)" in missing.stderr
    removed = ctl(daemon, "image", "rm", f"{ref}:latest", "example.org/from-dir:1")
    assert removed.returncode == 0, removed.stderr
    assert f"Untagged: {ref}:latest" in removed.stdout
    pruned = json.loads(ctl(daemon, "image", "prune", "--json").stdout)
    assert set(pruned) == {"images", "layers", "blobs", "bytes_freed"}
    assert ctl(daemon, "image", "rm", "nope:nope").returncode == 1


def test_metrics_and_openapi(daemon: Daemon, registry: Registry) -> None:
    daemon.admin.call("POST", "/api/images/pull", json={"ref": f"{registry.host}/busybox"})
    text = daemon.admin.request("GET", "/metrics").text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and line[0] != "#")
    assert float(lines['sandboxd_image_pulls_total{outcome="success",source="pull"}']) >= 1
    assert 'sandboxd_image_pulls_total{outcome="failure",source="load"}' in lines
    assert float(lines["sandboxd_image_store_bytes"]) > 1_000_000  # busybox, unpacked
    assert float(lines["sandboxd_image_store_layers"]) >= 1
    assert 'sandboxd_image_pull_duration_seconds_count{outcome="success",source="pull"}' in lines
    doc = requests.get(daemon.url + "/api/openapi.json", timeout=10).json()
    assert {"/api/images", "/api/images/pull", "/api/images/load", "/api/images/{ref}"} <= set(
        doc["paths"]
    )
    assert "Image" in doc["components"]["schemas"]


def test_the_loop_keeps_answering_while_a_layer_unpacks(daemon: Daemon, registry: Registry) -> None:
    """While the Python image's big layer unpacks (in a worker), other requests are served:
    answers to /api/status arrive between that layer's "extracting" and "complete" events."""
    import threading

    ref = f"{registry.host}/python:latest"
    marks: list[tuple[str, str]] = []
    sizes: dict[str, int] = {}
    stop = threading.Event()
    headers = {"Authorization": f"token {daemon.admin.token}"}

    def poll() -> None:
        while not stop.is_set():
            resp = requests.get(daemon.url + "/api/status", headers=headers, timeout=60)
            assert resp.status_code == 200
            marks.append(("status", ""))

    with requests.post(
        daemon.url + "/api/images/pull",
        json={"ref": ref, "stream": True},
        headers=headers,
        stream=True,
        timeout=600,
    ) as resp:
        poller = threading.Thread(target=poll)
        poller.start()
        try:
            for line in resp.iter_lines():
                event = json.loads(line)
                marks.append((event["status"], event.get("layer", "")))
                if "layer" in event:
                    sizes[event["layer"]] = event["total"]
        finally:
            stop.set()
            poller.join()
    assert [m for m in marks if m[0] != "status"][-1][0] == "done"
    big = max(sizes, key=lambda layer: sizes[layer])
    begin, end = marks.index(("extracting", big)), marks.index(("complete", big))
    assert ("status", "") in marks[begin:end]
    daemon.admin.call("DELETE", f"/api/images/{quote(ref, safe='')}")
