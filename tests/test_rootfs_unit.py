"""The host image's skeleton and the volume rules, without starting a sandbox."""

from __future__ import annotations

import os
import stat

import pytest

from sandboxd.errors import InvalidRequest
from sandboxd.runtime import rootfs


def test_skeleton_keeps_tmp_world_writable_when_an_env_lives_under_tmp(tmp_path) -> None:
    skeleton = str(tmp_path / "skel")
    os.makedirs(skeleton)
    rootfs._make_skeleton(skeleton, ("/tmp/checkout/.venv", "/root/.pyenv/versions/3.11.7"))
    for d in ("tmp", "var/tmp"):
        assert stat.S_IMODE(os.stat(os.path.join(skeleton, d)).st_mode) == 0o1777
    assert stat.S_IMODE(os.stat(os.path.join(skeleton, "root")).st_mode) == 0o755
    assert os.listdir(os.path.join(skeleton, "root")) == [".pyenv"]
    assert not os.path.exists(os.path.join(skeleton, "etc", "shadow"))
    with open(os.path.join(skeleton, "etc", "passwd")) as fh:
        assert "jovyan:x:1000:1000" in fh.read()


def test_volume_rules(tmp_path) -> None:
    root = tmp_path / "vols"
    (root / "alice").mkdir(parents=True)
    os.symlink("/etc", root / "out")
    allowed = (str(root),)
    vol = rootfs.resolve_volume(f"{root}/alice:/data:ro", allowed)
    assert vol.read_only and vol.container == "/data"
    for bad in (
        f"{root}/out:/x",
        "/etc:/x",
        f"{root}/../x:/x",
        f"{root}/alice:rel",
        f"{root}/alice:/proc",
        f"{root}/alice:/x:rwx",
        "nocolon",
    ):
        with pytest.raises(InvalidRequest):
            rootfs.resolve_volume(bad, allowed)
