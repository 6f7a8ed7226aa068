"""Pure parts of the image code: references, the [images] config table, OCI documents."""

from __future__ import annotations

import json

import pytest

from sandboxd import config
from sandboxd.errors import InvalidImage, InvalidRequest
from sandboxd.images import oci, reference
from sandboxd.images.registry import parse_challenge


@pytest.mark.parametrize(
    "ref, tagged, asked",
    [
        ("busybox", "docker.io/library/busybox:latest", "latest"),
        ("jupyter/scipy-notebook:2024-01-01", "docker.io/jupyter/scipy-notebook:2024-01-01", None),
        ("quay.io/jupyter/base-notebook", "quay.io/jupyter/base-notebook:latest", "latest"),
        ("localhost/x", "localhost/x:latest", "latest"),
        ("127.0.0.1:5000/a/b:c", "127.0.0.1:5000/a/b:c", "c"),
        ("ghcr.io/o/r@sha256:" + "a" * 64, "ghcr.io/o/r:latest", "sha256:" + "a" * 64),
    ],
)
def test_references(ref: str, tagged: str, asked: str | None) -> None:
    parsed = reference.parse(ref)
    assert parsed.tagged == tagged
    if asked:
        assert parsed.reference == asked


@pytest.mark.parametrize(
    "ref", ["", "UPPER/case", "a/../b", "a:b:c", "x@sha512:00", "a" * 300, "a//b", "-a"]
)
def test_bad_references(ref: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        reference.parse(ref)
    assert info.value.reason == "bad-reference"


def test_images_config_defaults_and_overrides(tmp_path) -> None:
    default = config.load().images
    assert default.allowed("docker.io") and not default.allowed("evil.example")
    assert default.max_store_bytes == 50 * 1024**3
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    path = tmp_path / "c.toml"
    path.write_text(
        f"""
[profiles.default]
allow_pull = true
[images]
max_store_bytes = "2g"
allowed_registries = ["*"]
platform = "linux/arm64/v8"
[images.registries."reg.example:5000"]
insecure = true
username = "bot"
password_file = "{secret}"
mirror = "https://mirror.example"
"""
    )
    cfg = config.load(str(path))
    images = cfg.images
    assert cfg.profiles["default"].allow_pull
    assert images.max_store_bytes == 2 * 1024**3 and images.allowed("anything.example")
    assert images.target_platform() == ("linux", "arm64", "v8")
    reg = images.registry("reg.example:5000")
    assert reg.password == "hunter2" and reg.endpoint == "http://reg.example:5000"
    assert reg.endpoints() == ("https://mirror.example", "http://reg.example:5000")
    assert images.registry("docker.io").endpoint == "https://registry-1.docker.io"
    assert "hunter2" not in repr(reg)


@pytest.mark.parametrize(
    "table, key",
    [
        ("[images]\nbogus = 1", "images.bogus"),
        ('[images]\nmax_store_bytes = "lots"', "images.max_store_bytes"),
        ("[images]\nunpack_workers = 0", "images.unpack_workers"),
        ("[images]\nmax_layers = 900", "images.max_layers"),
        ('[images]\nplatform = "amd64"', "images.platform"),
        ("[images]\nallowed_registries = 5", "images.allowed_registries"),
        (
            '[images.registries."r.example"]\nmirror = "ftp://x"',
            "images.registries.r.example.mirror",
        ),
        ('[images.registries."r.example"]\npassword = "x"', "images.registries.r.example.username"),
        ('[images.registries."r.example"]\npassword_file = "/nonexistent/pw"', "password_file"),
        ('[profiles.default]\nallow_pull = "yes"', "profiles.default.allow_pull"),
    ],
)
def test_bad_images_config_is_refused_with_its_key(tmp_path, table: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(table + "\n")
    with pytest.raises(InvalidRequest) as info:
        config.load(str(path))
    assert key in info.value.message and info.value.reason == "bad-config"


def test_challenges() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example/token",
        "service": "reg",
        "scope": "repository:a/b:pull,push",
    }
    assert parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_manifest_validation() -> None:
    layer = {"mediaType": oci.LAYER_TYPES.__iter__().__next__(), "digest": "sha256:" + "0" * 64}
    good = {
        "schemaVersion": 2,
        "mediaType": oci.DOCKER_MANIFEST,
        "config": {"mediaType": oci.DOCKER_CONFIG, "digest": "sha256:" + "1" * 64, "size": 2},
        "layers": [{**layer, "size": 10}],
    }
    assert len(oci.parse_manifest(good, 10).layers) == 1
    for bad in (
        {**good, "schemaVersion": 1},
        {**good, "layers": []},
        {**good, "layers": [{**layer, "size": -1}]},
        {**good, "layers": [{**layer, "size": 1, "digest": "md5:00"}]},
        {**good, "layers": [{**layer, "size": 1, "mediaType": "application/x-foreign"}]},
        {**good, "config": {"digest": "sha256:" + "1" * 64, "size": 10**9}},
    ):
        with pytest.raises(InvalidImage):
            oci.parse_manifest(bad, 10)
    with pytest.raises(InvalidImage) as info:
        oci.parse_manifest({**good, "layers": [{**layer, "size": 1}] * 11}, 10)
    assert info.value.reason == "too-many-layers"
    with pytest.raises(InvalidImage) as info:
        oci.verify(b"abc", oci.sha256_digest(b"abd"))
    assert info.value.reason == "digest-mismatch"
    raw = {"rootfs": {"type": "layers", "diff_ids": ["sha256:" + "2" * 64]}, "config": {}}
    assert oci.parse_config(json.loads(json.dumps(raw))).entrypoint is None
    with pytest.raises(InvalidImage):
        oci.parse_config({**raw, "config": {"Env": "PATH=/bin"}})


def test_platform_choice() -> None:
    def entry(arch: str, variant: str = "") -> oci.Descriptor:
        plat = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        return oci.Descriptor(oci.OCI_MANIFEST, "sha256:" + arch[0] * 64, 1, plat)

    entries = (entry("arm", "v6"), entry("arm", "v7"), entry("amd64"), entry("unknown"))
    assert oci.choose_platform(entries, ("linux", "amd64", "")) == entries[2]
    assert oci.choose_platform(entries, ("linux", "arm", "v7")) == entries[1]
    assert oci.choose_platform(entries, ("linux", "s390x", "")) is None
