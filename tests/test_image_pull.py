"""Pulls from a real registry (CNCF distribution, Debian's docker-registry) on the test netns'
loopback: no auth, basic auth, bearer tokens; indexes, zstd, mirrors, limits; and hostile or
corrupted content, each refused with nothing left in the store.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import tarfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from image_registry import (
    PASSWORD,
    USER,
    Registry,
    blob_file,
    layouts_ready,
    push_raw,
)
from test_image_unpack import layer, member

from sandboxd.errors import Forbidden, InvalidImage, NotFound, QuotaExceeded, RegistryError
from sandboxd.images.manager import ImageManager
from sandboxd.images.settings import parse_images

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not layouts_ready(), reason="image fixtures missing: run `make test-images`"
    ),
]


def run(
    state: Path,
    registries: dict[str, Any],
    body: Callable[[ImageManager], Awaitable[Any]],
    **kw: Any,
) -> Any:
    settings = parse_images({"allowed_registries": ["*"], "registries": registries, **kw})

    async def main() -> Any:
        manager = ImageManager(str(state), lambda: settings)
        try:
            return await body(manager)
        finally:
            await manager.close()

    return asyncio.run(main())


def store_is_empty(state: Path) -> None:
    """Nothing of a failed pull stays: no layer, no link, no temp file, no image."""
    root = state / "images"
    assert os.listdir(root / "layers") == []
    assert os.listdir(root / "l") == []
    assert os.listdir(root / "tmp") == []
    assert os.listdir(root / "blobs/sha256") == []


@pytest.fixture(scope="module")
def plain() -> Iterator[Registry]:
    reg = Registry("none")
    try:
        reg.push("busybox", "busybox:latest")
        reg.push("python", "python:latest")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def basic() -> Iterator[Registry]:
    reg = Registry("htpasswd")
    try:
        reg.push("busybox", "team/busybox:1.0")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def token() -> Iterator[Registry]:
    reg = Registry("token")
    try:
        reg.push("busybox", "team/busybox:1.0")
        yield reg
    finally:
        reg.stop()


def test_anonymous_pull_stores_layers_links_and_config(plain: Registry, tmp_path: Path) -> None:
    events: list[dict] = []

    async def body(m: ImageManager) -> Any:
        model = await m.pull(f"{plain.host}/busybox", events.append)
        return model, m.resolve(f"{plain.host}/busybox:latest"), m.listing()

    model, resolved, listing = run(tmp_path, {plain.host: {"insecure": True}}, body)
    assert model["names"] == [f"{plain.host}/busybox:latest"]
    assert model["digests"][0].startswith(f"{plain.host}/busybox@sha256:")
    assert model["config"]["Cmd"] == ["/bin/sh"]
    assert model["config"]["Labels"] == {"org.sandboxd.test": "busybox"}
    assert [i["id"] for i in listing] == [model["id"]] == [resolved.id]
    (lower,) = resolved.lowerdirs
    assert os.path.isabs(lower) and os.path.dirname(lower) == str(tmp_path / "images/l")
    assert len(os.path.basename(lower)) == 12
    assert os.path.realpath(lower) == str(
        tmp_path / "images/layers" / model["layers"][0].split(":")[1] / "diff"
    )
    assert os.readlink(Path(lower) / "bin/sh") == "busybox"
    assert os.access(Path(lower) / "bin/busybox", os.X_OK)
    statuses = [e["status"] for e in events]
    assert statuses[:2] == ["resolving", "manifest"]
    assert "downloading" in statuses and "extracting" in statuses
    assert events[-1] == {
        "status": "progress",
        "done": 1,
        "total": 1,
        "message": "pulling image: 1 of 1 layers",
    }
    assert os.listdir(tmp_path / "images/tmp") == []


def test_python_image_layers_whiteout_and_opaque_dir(plain: Registry, tmp_path: Path) -> None:
    messages: list[str] = []

    async def body(m: ImageManager) -> Any:
        await m.pull(
            f"{plain.host}/python:latest",
            lambda e: messages.append(e["message"]) if e["status"] == "progress" else None,
        )
        return m.resolve(f"{plain.host}/python")

    img = run(tmp_path, {plain.host: {"insecure": True}}, body)
    assert len(img.lowerdirs) == 4
    top, opaque, whiteout, base = (Path(p) for p in img.lowerdirs)  # top first
    assert (base / "usr/bin/python3").exists() or (base / "usr/bin/python3").is_symlink()
    gone = (whiteout / "etc/issue.net").lstat()
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(opaque / "usr/share/doc", "trusted.overlay.opaque") == b"y"
    home = (top / "home/jovyan").stat()
    assert (home.st_uid, home.st_gid) == (1000, 100)
    assert img.config.user == "1000:100" and img.config.working_dir == "/home/jovyan"
    assert img.config.cmd == ("python3", "-m", "ipykernel_launcher")
    assert "8888/tcp" in img.config.exposed_ports
    assert messages[-1] == "pulling image: 4 of 4 layers"
    # the kernel's overlayfs agrees: mount the stack read-only in a throwaway mount namespace
    script = (
        "set -e; m=$(mktemp -d); "
        f"mount -t overlay overlay -o ro,nosuid,nodev,lowerdir={':'.join(img.lowerdirs)} $m; "
        "test ! -e $m/etc/issue.net; ls $m/usr/share/doc; cat $m/etc/sandboxd-image; "
        "$m/usr/bin/python3 -c 'import ipykernel' 2>/dev/null || test -x $m/usr/bin/python3; "
        "stat -c %u $m/home/jovyan; umount $m; rmdir $m"
    )
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["README", "layer", "2", "1000"]


def test_basic_auth(basic: Registry, tmp_path: Path) -> None:
    ref = f"{basic.host}/team/busybox:1.0"

    async def pull(m: ImageManager) -> Any:
        return await m.pull(ref)

    with pytest.raises(RegistryError) as info:
        run(tmp_path / "a", {basic.host: {"insecure": True}}, pull)
    assert info.value.reason == "registry-auth"
    with pytest.raises(RegistryError) as info:
        run(
            tmp_path / "b",
            {basic.host: {"insecure": True, "username": USER, "password": "no"}},
            pull,
        )
    assert info.value.reason == "registry-auth"
    store_is_empty(tmp_path / "b")
    good = {"insecure": True, "username": USER, "password": PASSWORD}
    assert run(tmp_path / "c", {basic.host: good}, pull)["names"] == [ref]


def test_bearer_token_challenge(token: Registry, tmp_path: Path) -> None:
    ref = f"{token.host}/team/busybox:1.0"
    assert token.token_server is not None
    token.token_server.requests.clear()

    async def pull(m: ImageManager) -> Any:
        return await m.pull(ref)

    good = {"insecure": True, "username": USER, "password": PASSWORD}
    assert run(tmp_path / "a", {token.host: good}, pull)["names"] == [ref]
    asked = token.token_server.requests
    assert {"scope": "repository:team/busybox:pull", "auth": True} in asked
    # no credentials: the token server hands out a token without access; the registry says no
    with pytest.raises(RegistryError) as info:
        run(tmp_path / "b", {token.host: {"insecure": True}}, pull)
    assert info.value.reason == "registry-auth"
    store_is_empty(tmp_path / "b")
    bad = {**good, "password": "wrong"}
    with pytest.raises(RegistryError):
        run(tmp_path / "c", {token.host: bad}, pull)


def test_bearer_token_anonymous_pull(tmp_path: Path) -> None:
    reg = Registry("token", anonymous_pull=True)
    try:
        reg.push("busybox", "pub/busybox:latest")

        async def pull(m: ImageManager) -> Any:
            return await m.pull(f"{reg.host}/pub/busybox")

        assert run(tmp_path, {reg.host: {"insecure": True}}, pull)["layers"]
        assert reg.token_server and {"scope": "repository:pub/busybox:pull", "auth": False} in (
            reg.token_server.requests
        )
    finally:
        reg.stop()


def test_zstd_layers(plain: Registry, tmp_path: Path) -> None:
    plain.push("busybox", "busybox-zstd:latest", compress="zstd")
    manifest = requests.get(
        f"http://{plain.host}/v2/busybox-zstd/manifests/latest",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        timeout=10,
    ).json()
    assert manifest["layers"][0]["mediaType"].endswith("+zstd")

    async def pull(m: ImageManager) -> Any:
        await m.pull(f"{plain.host}/busybox-zstd")
        return m.resolve(f"{plain.host}/busybox-zstd")

    img = run(tmp_path, {plain.host: {"insecure": True}}, pull)
    assert (Path(img.lowerdirs[0]) / "bin/busybox").is_file()


def test_image_index_resolves_to_the_host_platform(plain: Registry, tmp_path: Path) -> None:
    amd = push_raw(plain.host, "multi", [layer(member("arch", data=b"amd64\n"))], tag="amd64")
    arm = push_raw(plain.host, "multi", [layer(member("arch", data=b"arm64\n"))], tag="arm64")
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": arm["manifest"],
                "size": arm["manifest_size"],
                "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            },
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": amd["manifest"],
                "size": amd["manifest_size"],
                "platform": {"os": "linux", "architecture": "amd64"},
            },
        ],
    }
    resp = requests.put(
        f"http://{plain.host}/v2/multi/manifests/latest",
        data=json.dumps(index),
        headers={"Content-Type": index["mediaType"]},
        timeout=10,
    )
    assert resp.status_code == 201, resp.text

    async def pull(m: ImageManager) -> Any:
        model = await m.pull(f"{plain.host}/multi:latest")
        return model, (Path(m.resolve(model["id"]).lowerdirs[0]) / "arch").read_text()

    registries = {plain.host: {"insecure": True}}
    model, arch = run(tmp_path / "a", registries, pull, platform="linux/amd64")
    assert arch == "amd64\n" and model["manifest_digest"] == amd["manifest"]
    _, arch = run(tmp_path / "b", registries, pull, platform="linux/arm64")
    assert arch == "arm64\n"
    with pytest.raises(NotFound) as info:
        run(tmp_path / "c", registries, pull, platform="linux/s390x")
    assert info.value.reason == "no-matching-platform"


def test_pull_by_digest_and_unknown_images(plain: Registry, tmp_path: Path) -> None:
    pushed = push_raw(plain.host, "pinned", [layer(member("x", data=b"x"))])
    ref = f"{plain.host}/pinned@{pushed['manifest']}"

    async def pull(m: ImageManager) -> Any:
        model = await m.pull(ref)
        assert m.resolve(ref).id == model["id"]
        with pytest.raises(NotFound) as info:
            await m.pull(f"{plain.host}/no-such-image:latest")
        assert info.value.reason == "image-not-found"
        return model

    model = run(tmp_path, {plain.host: {"insecure": True}}, pull)
    assert model["names"] == [] and model["digests"] == [ref]


def test_corrupted_blob_in_the_registry_is_refused(plain: Registry, tmp_path: Path) -> None:
    pushed = push_raw(plain.host, "corrupt", [layer(member("good", data=b"good" * 1000))])
    path = blob_file(plain.dir, pushed["layers"][0]["digest"])
    data = bytearray(Path(path).read_bytes())
    data[-20] ^= 0xFF  # same size, other content: only a digest check can tell
    Path(path).write_bytes(bytes(data))

    async def pull(m: ImageManager) -> Any:
        return await m.pull(f"{plain.host}/corrupt")

    with pytest.raises(InvalidImage) as info:
        run(tmp_path, {plain.host: {"insecure": True}}, pull)
    assert info.value.reason == "digest-mismatch"
    store_is_empty(tmp_path)


def test_config_lying_about_diff_ids_is_refused(plain: Registry, tmp_path: Path) -> None:
    push_raw(plain.host, "liar", [layer(member("a", data=b"a"))], diff_ids=["sha256:" + "1" * 64])

    async def pull(m: ImageManager) -> Any:
        return await m.pull(f"{plain.host}/liar")

    with pytest.raises(InvalidImage) as info:
        run(tmp_path, {plain.host: {"insecure": True}}, pull)
    assert info.value.reason == "digest-mismatch"
    store_is_empty(tmp_path)


@pytest.mark.parametrize(
    "kind",
    ["traversal", "symlink-write", "hardlink-out", "device", "bomb"],
)
def test_hostile_image_from_a_registry_is_refused(
    plain: Registry, tmp_path: Path, kind: str
) -> None:
    decoy = tmp_path / "decoy"
    decoy.write_text("original\n")
    good = layer(member("ok", data=b"fine"))
    hostile = {
        "traversal": layer(member("../../../../../../" + str(decoy).lstrip("/"), data=b"pwn")),
        "symlink-write": layer(
            member("d", tarfile.SYMTYPE, linkname=str(tmp_path)),
            member("d/decoy", data=b"pwned\n"),
        ),
        "hardlink-out": layer(member("h", tarfile.LNKTYPE, linkname=str(decoy))),
        "device": layer(member("sda", tarfile.BLKTYPE, devmajor=8, devminor=0)),
        "bomb": layer(member("zeros", data=bytes(32 * 1024 * 1024))),
    }[kind]
    push_raw(plain.host, f"hostile-{kind}", [good, hostile])

    async def pull(m: ImageManager) -> Any:
        return await m.pull(f"{plain.host}/hostile-{kind}")

    with pytest.raises(InvalidImage) as info:
        run(
            tmp_path / "state",
            {plain.host: {"insecure": True}},
            pull,
            max_layer_bytes="8m",
            layer_downloads=1,
        )
    assert info.value.reason == ("layer-too-large" if kind == "bomb" else "unsafe-layer")
    assert decoy.read_text() == "original\n" and decoy.stat().st_nlink == 1
    assert sorted(os.listdir(tmp_path)) == ["decoy", "state"]
    store_is_empty(tmp_path / "state")


def test_concurrent_pulls_of_one_image_share_the_work(plain: Registry, tmp_path: Path) -> None:
    async def pull(m: ImageManager) -> Any:
        ref = f"{plain.host}/busybox:latest"
        a, b = await asyncio.gather(m.pull(ref), m.pull(ref))
        return a, b, m.store.counts()

    a, b, counts = run(tmp_path, {plain.host: {"insecure": True}}, pull)
    assert a == b and counts["images"] == 1 and counts["layers"] == 1


def test_limits_allow_list_store_size_and_pulls_at_once(plain: Registry, tmp_path: Path) -> None:
    registries = {plain.host: {"insecure": True}}

    async def pull(m: ImageManager) -> Any:
        return await m.pull(f"{plain.host}/busybox")

    with pytest.raises(Forbidden) as info:
        run(tmp_path / "a", registries, pull, allowed_registries=["docker.io"])
    assert info.value.reason == "registry-denied"
    with pytest.raises(QuotaExceeded) as quota:
        run(tmp_path / "b", registries, pull, max_store_bytes="100k")
    assert quota.value.reason == "image-store-full"
    store_is_empty(tmp_path / "b")

    async def many(m: ImageManager) -> Any:
        first = asyncio.ensure_future(m.pull(f"{plain.host}/busybox"))
        await asyncio.sleep(0)
        with pytest.raises(QuotaExceeded) as info:
            await m.pull(f"{plain.host}/python")
        assert info.value.reason == "too-many-pulls"
        return await first

    assert run(tmp_path / "c", registries, many, max_concurrent_pulls=1)["layers"]


def test_mirror_is_tried_first(plain: Registry, tmp_path: Path) -> None:
    from conftest import free_port

    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: only the mirror can answer

    async def pull(m: ImageManager) -> Any:
        return await m.pull(f"{dead}/busybox")

    registries = {dead: {"insecure": True, "mirror": f"http://{plain.host}"}}
    assert run(tmp_path / "a", registries, pull)["names"] == [f"{dead}/busybox:latest"]
    with pytest.raises(RegistryError) as info:
        run(tmp_path / "b", {dead: {"insecure": True}}, pull)
    assert info.value.reason == "registry-unreachable"
