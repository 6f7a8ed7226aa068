"""The store's lifecycle: archive loads (docker save, OCI layout/archive), reference counting,
holds, rm and prune (exactly the unreferenced layers go), and repair after a crash."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from image_registry import LAYOUTS, layouts_ready
from test_image_unpack import layer, member

from sandboxd.errors import Conflict, HostError, InvalidImage, NotFound
from sandboxd.images.manager import ImageManager
from sandboxd.images.settings import parse_images

pytestmark = pytest.mark.root


def run(state: Path, body: Callable[[ImageManager], Awaitable[Any]], **kw: Any) -> Any:
    settings = parse_images(kw)

    async def main() -> Any:
        manager = ImageManager(str(state), lambda: settings)
        try:
            return await body(manager)
        finally:
            await manager.close()

    return asyncio.run(main())


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def oci_archive(path: Path, images: list[tuple[str, list[bytes]]]) -> list[dict[str, Any]]:
    """Write an OCI image layout as a tar: one manifest per (name, layer tars) in index.json."""
    blobs: dict[str, bytes] = {}
    entries, out = [], []
    for name, tars in images:
        layers = []
        for tar in tars:
            blob = gzip.compress(tar, mtime=0)
            blobs[sha(blob)] = blob
            layers.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha(blob),
                    "size": len(blob),
                }
            )
        config = json.dumps(
            {
                "os": "linux",
                "architecture": "amd64",
                "config": {"Cmd": ["/bin/sh"], "Labels": {"name": name}},
                "rootfs": {"type": "layers", "diff_ids": [sha(t) for t in tars]},
            }
        ).encode()
        blobs[sha(config)] = config
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": sha(config),
                    "size": len(config),
                },
                "layers": layers,
            }
        ).encode()
        blobs[sha(manifest)] = manifest
        entries.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": sha(manifest),
                "size": len(manifest),
                "annotations": {"io.containerd.image.name": name},
            }
        )
        out.append({"id": sha(config), "diff_ids": [sha(t) for t in tars]})
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps({"schemaVersion": 2, "manifests": entries}).encode(),
        **{f"blobs/sha256/{d[7:]}": b for d, b in blobs.items()},
    }
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    return out


L1 = layer(member("shared/one", data=b"1" * 5000))
L2 = layer(member("only-a/two", data=b"2" * 7000))
L3 = layer(member("only-b/three", data=b"3" * 9000))


def test_gc_removes_exactly_the_unreferenced_layers(tmp_path: Path) -> None:
    archive = tmp_path / "two.tar"
    a, b = oci_archive(archive, [("example.org/a:1", [L1, L2]), ("example.org/b:1", [L1, L3])])
    layers = tmp_path / "state/images/layers"

    async def body(m: ImageManager) -> None:
        loaded = await m.load(str(archive))
        assert [x["id"] for x in loaded] == [a["id"], b["id"]]
        assert sorted(os.listdir(layers)) == sorted(d[7:] for d in {*a["diff_ids"], *b["diff_ids"]})
        # two sandboxes of one image get the same (shared) layer directories
        m.acquire("sbx1", b["id"])
        m.acquire("sbx2", b["id"])
        assert m.resolve("example.org/b:1").lowerdirs == m.resolve(b["id"]).lowerdirs
        out = await m.remove("example.org/a:1")
        assert out["deleted"] == [a["id"]] and out["layers"] == [sha(L2)]
        assert sorted(os.listdir(layers)) == sorted(d[7:] for d in b["diff_ids"])
        assert (Path(m.resolve("example.org/b:1").lowerdirs[1]) / "shared/one").exists()
        with pytest.raises(Conflict) as info:
            await m.remove("example.org/b:1")
        assert info.value.reason == "image-in-use"
        forced = await m.remove("example.org/b:1", force=True)
        assert forced == {"untagged": ["example.org/b:1"], "deleted": [], "layers": []}
        assert m.inspect(b["id"])["names"] == [] and m.inspect(b["id"])["sandboxes"] == 2
        assert (await m.prune())["layers"] == []  # held: nothing goes
        m.release("sbx1")
        assert (await m.prune())["images"] == []  # still held by sbx2
        m.release("sbx2")
        m.release("sbx2")  # idempotent
        pruned = await m.prune()
        assert pruned["images"] == [b["id"]]
        assert sorted(pruned["layers"]) == sorted(b["diff_ids"])
        assert pruned["bytes_freed"] > 5000 + 9000
        assert os.listdir(layers) == [] and os.listdir(tmp_path / "state/images/l") == []
        assert m.store.counts() == {"images": 0, "layers": 0, "bytes": 0}
        with pytest.raises(NotFound):
            m.resolve("example.org/b:1")

    run(tmp_path / "state", body)


def test_rm_by_id_and_a_second_name(tmp_path: Path) -> None:
    archive = tmp_path / "one.tar"
    (a,) = oci_archive(archive, [("example.org/a:1", [L1])])

    async def body(m: ImageManager) -> None:
        await m.load(str(archive), tag="example.org/a:2")
        assert m.inspect(a["id"][7:19])["names"] == ["example.org/a:1", "example.org/a:2"]
        out = await m.remove("example.org/a:1")
        assert out == {"untagged": ["example.org/a:1"], "deleted": [], "layers": []}
        out = await m.remove(a["id"])
        assert out["deleted"] == [a["id"]] and out["layers"] == [sha(L1)]

    run(tmp_path / "state", body)


@pytest.mark.skipif(not layouts_ready(), reason="image fixtures missing: run `make test-images`")
@pytest.mark.parametrize("fmt", ["docker-archive", "docker-archive-gz", "oci-archive", "oci-dir"])
def test_load_real_archives(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / "image.tar"
    source = f"oci:{os.path.join(LAYOUTS, 'busybox')}:latest"
    if fmt.startswith("docker-archive"):
        dest = f"docker-archive:{path}:example.org/saved/busybox:v1"
        subprocess.run(["skopeo", "copy", "--quiet", source, dest], check=True, timeout=120)
        assert "manifest.json" in tarfile.open(path).getnames()
        if fmt.endswith("-gz"):
            path.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    elif fmt == "oci-archive":
        dest = f"oci-archive:{path}:v1"
        subprocess.run(["skopeo", "copy", "--quiet", source, dest], check=True, timeout=120)
    else:  # the cached layout directory itself, as the CLI sends it
        with tarfile.open(path, "w") as tar:
            tar.add(os.path.join(LAYOUTS, "busybox"), arcname=".")
    tag = None if fmt.startswith("docker-archive") else "example.org/saved/busybox:v1"

    async def body(m: ImageManager) -> Any:
        (model,) = await m.load(str(path), tag=tag)
        return model, m.resolve("example.org/saved/busybox:v1")

    model, img = run(tmp_path / "state", body)
    assert model["names"] == ["example.org/saved/busybox:v1"] and model["source"] == "load"
    assert model["config"]["Cmd"] == ["/bin/sh"]
    assert (Path(img.lowerdirs[0]) / "bin/busybox").is_file()


def test_hostile_archives_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    decoy = tmp_path / "decoy"
    decoy.write_text("original\n")
    cases: dict[str, tuple[bytes, str]] = {}
    # a docker save archive whose manifest.json is a symlink out of the archive
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ti = tarfile.TarInfo("manifest.json")
        ti.type, ti.linkname = tarfile.SYMTYPE, "../../../../" + str(decoy)
        tar.addfile(ti)
    cases["link-out"] = (buf.getvalue(), "bad-archive")
    # an OCI layout whose layer writes through a symlink
    hostile = layer(
        member("d", tarfile.SYMTYPE, linkname=str(tmp_path)), member("d/decoy", data=b"pwned")
    )
    oci_archive(tmp_path / "h.tar", [("example.org/h:1", [L1, hostile])])
    cases["unsafe-layer"] = ((tmp_path / "h.tar").read_bytes(), "unsafe-layer")
    # an OCI layout whose layer blob does not match its digest
    oci_archive(tmp_path / "c.tar", [("example.org/c:1", [L2])])
    raw = bytearray((tmp_path / "c.tar").read_bytes())
    blob = gzip.compress(L2, mtime=0)
    at = raw.find(blob)
    raw[at + len(blob) - 12] ^= 0xFF
    cases["corrupt"] = (bytes(raw), "digest-mismatch")
    cases["not-a-tar"] = (b"hello" * 100, "bad-archive")
    for name, (data, reason) in cases.items():
        path = tmp_path / f"{name}.upload"
        path.write_bytes(data)

        async def body(m: ImageManager, path: Path = path) -> Any:
            return await m.load(str(path))

        with pytest.raises(InvalidImage) as info:
            run(tmp_path / f"state-{name}", body)
        assert info.value.reason == reason, (name, info.value.message)
        root = tmp_path / f"state-{name}/images"
        for sub in ("layers", "l", "tmp", "blobs/sha256"):
            assert os.listdir(root / sub) == [], (name, sub)
    assert decoy.read_text() == "original\n"


def test_recover_repairs_the_store_after_a_crash(tmp_path: Path) -> None:
    archive = tmp_path / "one.tar"
    (a,) = oci_archive(archive, [("example.org/a:1", [L1, L2])])

    async def load(m: ImageManager) -> None:
        await m.load(str(archive))

    run(tmp_path / "state", load)
    root = tmp_path / "state/images"
    (root / "tmp/half-unpacked/diff").mkdir(parents=True)  # a crash mid-unpack
    (root / "layers" / ("f" * 64) / "diff").mkdir(parents=True)  # renamed, never recorded
    os.symlink("../layers/nowhere/diff", root / "l/STRAYLINKXYZ")
    link = next(iter(os.listdir(root / "l")))
    os.unlink(root / "l" / link)  # a recorded layer lost its link
    shutil.rmtree(root / "layers" / sha(L2)[7:])  # a recorded layer lost its directory

    async def check(m: ImageManager) -> None:
        await m.store.empty_trash()
        assert sorted(os.listdir(root / "layers")) == [sha(L1)[7:]]
        assert os.listdir(root / "tmp") == []
        assert "STRAYLINKXYZ" not in os.listdir(root / "l")
        links = {os.path.realpath(root / "l" / n) for n in os.listdir(root / "l")}
        assert str(root / "layers" / sha(L1)[7:] / "diff") in links  # the lost link is back
        with pytest.raises(HostError) as info:  # an image whose layer vanished says so
            m.resolve("example.org/a:1")
        assert info.value.reason == "image-broken"
        out = await m.remove("example.org/a:1")
        assert sorted(out["layers"]) == sorted([sha(L1), sha(L2)])
        assert os.listdir(root / "l") == [] and m.store.counts()["layers"] == 0

    run(tmp_path / "state", check)
