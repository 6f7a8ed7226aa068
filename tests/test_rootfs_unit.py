"""The host image's skeleton and the volume rules, without starting a sandbox."""

from __future__ import annotations

import os
import stat

import pytest

from sandboxd.errors import Forbidden, InvalidRequest
from sandboxd.runtime import rootfs


@pytest.mark.root
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


def test_volume_syntax() -> None:
    vol = rootfs.parse_volume("work/notes:/data:ro")
    assert (vol.name, vol.subpath, vol.container, vol.read_only) == ("work", "notes", "/data", True)
    assert vol.text() == "work/notes:/data:ro" and not vol.host
    host = rootfs.parse_volume("/srv/data/:/x/")
    assert host.host == "/srv/data" and host.container == "/x" and not host.read_only
    for bad in (
        "work:rel",
        "work:/proc",
        "work:/proc/sys",
        "work:/dev",
        "work:/sys",
        "work:/etc",
        "work:/etc/hosts",
        "work:/run/kernel",
        "work:/run/kernel/connection.json",
        "work:/run",
        "work:/",
        "work:/x:rwx",
        "work:/x/../etc",
        "nocolon",
        "bad name:/x",
        ":/x",
    ):
        with pytest.raises(InvalidRequest):
            rootfs.parse_volume(bad)
    for dotdot in ("../alice/work:/x", "/srv/../etc:/x", "work/../../bob:/x"):
        with pytest.raises(Forbidden):
            rootfs.parse_volume(dotdot)
    assert rootfs.parse_volume("work:/run/other").container == "/run/other"
