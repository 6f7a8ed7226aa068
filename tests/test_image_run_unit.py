"""The pure parts of running an image, without a daemon: id maps, reading a file through merged
layers (whiteouts, opaque dirs, symlinks that must stay inside the image), the image's user,
and docker's rules for Entrypoint/Cmd/Env/WorkingDir. Layers are real directories made here,
with real overlay whiteouts (0/0 character devices) and opaque xattrs, as unpacking makes them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxd.errors import InvalidImage, InvalidRequest
from sandboxd.images import guest, oci, rootview
from sandboxd.images.run import apply
from sandboxd.images.store import ResolvedImage
from sandboxd.runtime import idmap
from sandboxd.spec import Guest, SandboxSpec

# -- id maps ---------------------------------------------------------------------------------------


def parse(text: str) -> list[tuple[int, int, int]]:
    return [tuple(map(int, line.split())) for line in text.splitlines()]  # type: ignore[misc]


def mapped(lines: list[tuple[int, int, int]], on_disk: int) -> int | None:
    for inside, outside, count in lines:
        if inside <= on_disk < inside + count:
            return outside + on_disk - inside
    return None


@pytest.mark.parametrize(
    ("guest_id", "host", "span"),
    [(1000, 800123, 65536), (100, 800123, 65536), (1000, 1005, 1000), (0, 900000, 65536)],
)
def test_id_map_sends_the_guest_to_the_tenant_and_nothing_else(
    guest_id: int, host: int, span: int
) -> None:
    lines = parse(idmap.id_map(guest_id, host, span))
    assert len(lines) <= 4
    assert mapped(lines, guest_id) == host
    outsides = [mapped(lines, i) for i in range(70000)]
    assert outsides.count(host) == 1  # only the guest's id becomes the tenant
    assert mapped(lines, host) is None  # the tenant's own id on disk is nobody's
    for i in (0, 1, 100, 65534):
        if i not in (guest_id, host) and i < span:
            assert mapped(lines, i) == i  # root and the rest stay themselves
    assert mapped(lines, span + 7) is None  # other tenants' ids: unmapped
    # the kernel refuses overlapping ranges on either side
    inside = sorted((a, a + c) for a, _, c in lines)
    outside = sorted((b, b + c) for _, b, c in lines)
    for ranges in (inside, outside):
        assert all(x[1] <= y[0] for x, y in zip(ranges, ranges[1:], strict=False))


# -- reading through merged layers ----------------------------------------------------------------


def whiteout(path: Path) -> None:
    os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))


def opaque(path: Path) -> None:
    os.setxattr(path, "trusted.overlay.opaque", b"y")


@pytest.fixture
def layers(tmp_path: Path) -> list[str]:
    """Three layers, top first: top, mid, base."""
    base, mid, top = (tmp_path / n for n in ("base", "mid", "top"))
    for root in (base, mid, top):
        (root / "etc").mkdir(parents=True)
    (base / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (base / "etc" / "group").write_text("root:x:0:\nusers:x:100:\nstaff:x:50:\n")
    (base / "etc" / "hidden").write_text("base\n")
    (base / "etc" / "old").mkdir()
    (base / "etc" / "old" / "file").write_text("base\n")
    (base / "usr").mkdir()
    (base / "usr" / "only-base").write_text("base\n")
    # mid: deletes etc/hidden, replaces etc/old with an opaque dir, adds jovyan
    whiteout(mid / "etc" / "hidden")
    (mid / "etc" / "old").mkdir()
    opaque(mid / "etc" / "old")
    (mid / "etc" / "old" / "new").write_text("mid\n")
    (mid / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\njovyan:x:1000:100:J:/home/jovyan:/bin/bash\n"
        "rooty:x:0:0::/:/bin/sh\nodd:x:2000:2000::../../escape:/bin/sh\n"
    )
    # top: links
    (top / "etc" / "link-abs").symlink_to("/etc/passwd")
    (top / "etc" / "link-up").symlink_to("../../../../../../etc/passwd")
    (top / "etc" / "loop").symlink_to("loop")
    (top / "etc" / "to-usr").symlink_to("../usr")
    return [str(top), str(mid), str(base)]


@pytest.mark.root
def test_read_file_merges_like_overlayfs(layers: list[str]) -> None:
    read = rootview.read_file
    assert b"jovyan" in (read(layers, "/etc/passwd") or b"")  # the topmost copy
    assert read(layers, "/etc/hidden") is None  # whited out
    assert read(layers, "/etc/old/file") is None  # under an opaque dir
    assert read(layers, "/etc/old/new") == b"mid\n"
    assert read(layers, "/usr/only-base") == b"base\n"  # merged dirs reach down
    assert read(layers, "/etc/to-usr/only-base") == b"base\n"
    assert read(layers, "/etc") is None and read(layers, "/nope") is None
    # symlinks resolve inside the image: absolute and ..-heavy ones end at its root
    assert read(layers, "/etc/link-abs") == read(layers, "/etc/passwd")
    assert read(layers, "/etc/link-up") == read(layers, "/etc/passwd")
    with pytest.raises(OSError):
        read(layers, "/etc/loop")


def test_read_file_never_reads_the_host(tmp_path: Path) -> None:
    decoy = tmp_path / "decoy"
    decoy.write_text("secret\n")
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "passwd").symlink_to(decoy)
    (layer / "etc" / "rel").symlink_to("../" * 20 + str(decoy).lstrip("/"))
    (layer / "dir").symlink_to(tmp_path)
    (layer / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(layer / "fifo")
    for path in ("/etc/passwd", "/etc/rel", "/dir/decoy", "/fifo"):
        assert rootview.read_file([str(layer)], path) is None, path
    big = layer / "big"
    big.write_bytes(b"x" * 100)
    with pytest.raises(OSError):
        rootview.read_file([str(layer)], "/big", limit=10)


@pytest.mark.root
def test_image_user_resolution(layers: list[str]) -> None:
    assert guest.resolve(layers, "jovyan") == Guest(1000, 100, "jovyan", "/home/jovyan")
    assert guest.resolve(layers, "1000") == Guest(1000, 100, "jovyan", "/home/jovyan")
    assert guest.resolve(layers, "1000:staff") == Guest(1000, 50, "jovyan", "/home/jovyan")
    assert guest.resolve(layers, "1000:7") == Guest(1000, 7, "jovyan", "/home/jovyan")
    assert guest.resolve(layers, "4242") == Guest(4242, 4242, "jovyan", "/home/jovyan")
    # never root: root (or nothing) runs as 1000, with the image's entry for 1000
    for user in ("", "root", "0", "0:0", "rooty"):
        assert guest.resolve(layers, user) == Guest(1000, 100, "jovyan", "/home/jovyan"), user
    assert guest.resolve(layers, "odd").home == "/home/jovyan"  # a home with '..' is not used
    for user in ("ghost", "jovyan:nogroup"):
        with pytest.raises(InvalidImage) as info:
            guest.resolve(layers, user)
        assert info.value.reason == "bad-image-user"


# -- docker's rules --------------------------------------------------------------------------------


def image(**config: object) -> ResolvedImage:
    doc = {"rootfs": {"type": "layers", "diff_ids": []}, "config": config}
    return ResolvedImage("sha256:" + "1" * 64, (), "/x", (), (), oci.parse_config(doc))


SPEC = SandboxSpec(id="s", name="n", user="u", uid=800001, command=(), image="img")
JOVYAN = Guest(1000, 100, "jovyan", "/home/jovyan")


def test_entrypoint_cmd_env_and_workdir() -> None:
    img = image(Entrypoint=["tini", "--"], Cmd=["start"], Env=["PATH=/opt/bin", "A=1"])
    out = apply(SPEC, {}, img, JOVYAN)
    assert out.command == ("tini", "--", "start") and out.workdir == "/home/jovyan"
    assert dict(out.env) == {"PATH": "/opt/bin", "A": "1"}
    assert out.image_id == img.id and out.guest == JOVYAN
    spec = SandboxSpec(**{**SPEC.__dict__, "command": ("run",), "env": (("A", "2"),)})
    out = apply(spec, {"command": ["run"]}, img, JOVYAN)
    assert out.command == ("tini", "--", "run") and dict(out.env)["A"] == "2"
    out = apply(spec, {"entrypoint": ["sh", "-c"]}, img, JOVYAN)
    assert out.command == ("sh", "-c", "run")
    out = apply(SPEC, {"entrypoint": ["echo"]}, img, JOVYAN)
    assert out.command == ("echo",)  # an entrypoint override drops the image's Cmd
    out = apply(spec, {"entrypoint": []}, img, JOVYAN)
    assert out.command == ("run",)
    out = apply(SPEC, {}, image(Cmd=["x"], WorkingDir="/srv/app"), JOVYAN)
    assert out.workdir == "/srv/app"
    spec = SandboxSpec(**{**SPEC.__dict__, "workdir": "/tmp"})
    assert (
        apply(spec, {"workdir": "/tmp"}, image(Cmd=["x"], WorkingDir="/srv"), JOVYAN).workdir
        == "/tmp"
    )


def test_refusals() -> None:
    with pytest.raises(InvalidRequest) as info:
        apply(SPEC, {}, image(), JOVYAN)
    assert info.value.reason == "no-command"
    for bad in ({"Cmd": ["x"], "Env": ["NOEQUALS"]}, {"Cmd": ["x"], "WorkingDir": "rel/dir"}):
        with pytest.raises(InvalidImage):
            apply(SPEC, {}, image(**bad), JOVYAN)
    with pytest.raises(InvalidRequest):
        apply(SPEC, {"entrypoint": "sh"}, image(Cmd=["x"]), JOVYAN)
    host = SandboxSpec(**{**SPEC.__dict__, "image": "host"})
    with pytest.raises(InvalidRequest):
        apply(host, {}, None, Guest())
    assert apply(host, {"entrypoint": ["env"]}, None, Guest()).command == ("env",)
