"""Safe unpacking of hostile layers, as root: every attack is aimed at decoy files this test owns.

Each hostile layer is built by hand with ``tarfile``; each test asserts the refusal (or the
harmless outcome), that the decoys are unchanged, and that nothing was written anywhere but
the layer directory (a snapshot of the whole scratch tree before and after).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from sandboxd.images import unpack

pytestmark = pytest.mark.root

LIMITS = unpack.Limits(max_bytes=64 * 1024 * 1024, max_entries=10_000)


def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object) -> tuple:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.size = len(data) if kind == tarfile.REGTYPE else 0
    ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in kw.items():
        setattr(ti, key, value)
    return ti, data


def layer(*members: tuple, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for ti, data in members:
            tar.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
    return buf.getvalue()


def snapshot(root: Path, skip: Path) -> dict[str, tuple]:
    """Every path under ``root`` but ``skip``, with its type, size, mode, owner, links, mtime."""
    out: dict[str, tuple] = {}
    for base, dirs, files in os.walk(root):
        if Path(base) == skip or skip in Path(base).parents:
            continue
        for name in dirs + files:
            path = Path(base, name)
            if path in (skip, skip.parent):  # the layer, and the dir it is made in
                continue
            st = path.lstat()
            out[str(path)] = (st.st_mode, st.st_size, st.st_uid, st.st_nlink, st.st_mtime_ns)
    return out


class Scratch:
    """A scratch tree: decoy files and a decoy dir next to where the layer is unpacked."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.decoy = root / "decoy.txt"
        self.decoy.write_text("original\n")
        self.decoy_dir = root / "decoy-dir"
        self.decoy_dir.mkdir()
        (self.decoy_dir / "kept").write_text("kept\n")
        self.blob = root / "blob"
        self.dest = root / "store" / "tmp" / "layer"
        self.dest.parent.mkdir(parents=True)
        self.before = snapshot(root, self.dest)

    def run(self, data: bytes, diff_id: str = "", limits: unpack.Limits = LIMITS) -> dict:
        self.blob.write_bytes(data)
        self.before = snapshot(self.root, self.dest)
        return unpack.run_job(str(self.blob), str(self.dest), diff_id, limits)

    def refused(self, data: bytes, reason: str, **kw: object) -> str:
        with pytest.raises(unpack.UnsafeLayer) as info:
            self.run(data, **kw)  # type: ignore[arg-type]
        assert info.value.reason == reason, info.value.message
        assert not self.dest.exists(), "a refused layer must leave nothing behind"
        self.untouched()
        return info.value.message

    def untouched(self) -> None:
        assert self.decoy.read_text() == "original\n"
        assert self.decoy.stat().st_nlink == 1
        assert sorted(os.listdir(self.decoy_dir)) == ["kept"]
        after = snapshot(self.root, self.dest)
        assert after == self.before, set(after) ^ set(self.before)


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    yield Scratch(tmp_path)


def test_ordinary_layer_keeps_owners_modes_links_and_setuid(scratch: Scratch) -> None:
    data = layer(
        member("./", tarfile.DIRTYPE, mode=0o755),
        member("usr/", tarfile.DIRTYPE),
        member("usr/bin/", tarfile.DIRTYPE, mtime=1_000_000),
        member("usr/bin/tool", data=b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
        member("home/jovyan/", tarfile.DIRTYPE, uid=1000, gid=100, mode=0o750),
        member("home/jovyan/notes", data=b"hi", uid=1000, gid=100, mtime=1_234_567),
        member("etc/localtime", tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/UTC"),
        member("usr/bin/tool2", tarfile.LNKTYPE, linkname="/usr/bin/tool"),
        member("run/fifo", tarfile.FIFOTYPE, mode=0o620),
    )
    result = scratch.run(data, diff_id="sha256:" + hashlib.sha256(data).hexdigest())
    root = scratch.dest
    tool = root / "usr/bin/tool"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o4755  # setuid stays on disk
    assert tool.stat().st_nlink == 2 and (root / "usr/bin/tool2").samefile(tool)
    home = (root / "home/jovyan").stat()
    assert (home.st_uid, home.st_gid, stat.S_IMODE(home.st_mode)) == (1000, 100, 0o750)
    assert (root / "home/jovyan/notes").stat().st_mtime == 1_234_567
    assert (root / "usr/bin").stat().st_mtime == 1_000_000  # dir times set last
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"  # kept, not followed
    assert stat.S_ISFIFO((root / "run/fifo").lstat().st_mode)
    assert stat.S_IMODE((root / "run/fifo").lstat().st_mode) == 0o620
    assert result["entries"] == 9 and result["size"] == len(b"#!/bin/sh\n") + 2
    scratch.untouched()


@pytest.mark.parametrize("name", ["../decoy.txt", "a/../../decoy.txt", "./../../../decoy.txt"])
def test_path_traversal_is_refused(scratch: Scratch, name: str) -> None:
    message = scratch.refused(
        layer(member("a/", tarfile.DIRTYPE), member(name, data=b"pwn")), "unsafe-layer"
    )
    assert ".." in message


def test_absolute_entry_names_stay_inside_the_layer(scratch: Scratch) -> None:
    scratch.run(layer(member(str(scratch.decoy), data=b"pwned\n")))
    inside = scratch.dest / str(scratch.decoy).lstrip("/")
    assert inside.read_text() == "pwned\n"
    scratch.untouched()


@pytest.mark.parametrize("target", ["decoy-dir", "absolute", "../../..", "../../../decoy-dir"])
def test_symlink_then_write_through_it_is_refused(scratch: Scratch, target: str) -> None:
    link = str(scratch.decoy_dir) if target == "absolute" else target
    data = layer(
        member("evil", tarfile.SYMTYPE, linkname=link),
        member("evil/pwned", data=b"pwned\n"),
    )
    scratch.refused(data, "unsafe-layer")


def test_symlink_then_dir_entry_through_it_is_refused(scratch: Scratch) -> None:
    data = layer(
        member("evil", tarfile.SYMTYPE, linkname=str(scratch.decoy_dir)),
        member("evil/sub/", tarfile.DIRTYPE),
    )
    scratch.refused(data, "unsafe-layer")


def test_whiteout_through_a_symlink_is_refused(scratch: Scratch) -> None:
    data = layer(
        member("evil", tarfile.SYMTYPE, linkname=str(scratch.decoy_dir)),
        member("evil/.wh.kept"),
    )
    scratch.refused(data, "unsafe-layer")


def test_opaque_marker_through_a_symlink_is_refused(scratch: Scratch) -> None:
    data = layer(
        member("evil", tarfile.SYMTYPE, linkname=str(scratch.decoy_dir)),
        member("evil/.wh..wh..opq"),
    )
    scratch.refused(data, "unsafe-layer")
    with pytest.raises(OSError):
        os.getxattr(scratch.decoy_dir, "trusted.overlay.opaque")


def test_file_over_a_symlink_replaces_the_link_not_its_target(scratch: Scratch) -> None:
    data = layer(
        member("evil", tarfile.SYMTYPE, linkname=str(scratch.decoy)),
        member("evil", data=b"pwned\n"),
        member("evil2", tarfile.SYMTYPE, linkname=str(scratch.decoy)),
        member("evil2", tarfile.SYMTYPE, linkname="elsewhere"),
    )
    scratch.run(data)
    assert (scratch.dest / "evil").read_text() == "pwned\n"
    assert not (scratch.dest / "evil").is_symlink()
    assert os.readlink(scratch.dest / "evil2") == "elsewhere"
    scratch.untouched()


@pytest.mark.parametrize("how", ["dotdot", "absolute", "through-symlink", "missing"])
def test_hard_link_out_of_the_layer_is_refused(scratch: Scratch, how: str) -> None:
    members = [member("d/", tarfile.DIRTYPE)]
    if how == "dotdot":
        members.append(member("d/hl", tarfile.LNKTYPE, linkname="../../../../decoy.txt"))
        reason = "unsafe-layer"
    elif how == "absolute":  # means <layer>/<that path>, which is not in the layer
        members.append(member("d/hl", tarfile.LNKTYPE, linkname=str(scratch.decoy)))
        reason = "unsafe-layer"
    elif how == "through-symlink":
        members.append(member("out", tarfile.SYMTYPE, linkname=str(scratch.root)))
        members.append(member("d/hl", tarfile.LNKTYPE, linkname="out/decoy.txt"))
        reason = "unsafe-layer"
    else:
        members.append(member("d/hl", tarfile.LNKTYPE, linkname="nowhere"))
        reason = "unsafe-layer"
    scratch.refused(layer(*members), reason)


def test_hard_link_to_a_symlink_links_the_symlink_itself(scratch: Scratch) -> None:
    data = layer(
        member("out", tarfile.SYMTYPE, linkname=str(scratch.decoy)),
        member("hl", tarfile.LNKTYPE, linkname="out"),
    )
    scratch.run(data)
    assert (scratch.dest / "hl").is_symlink()
    assert scratch.decoy.stat().st_nlink == 1
    scratch.untouched()


@pytest.mark.parametrize(
    "kind, major, minor",
    [(tarfile.BLKTYPE, 8, 0), (tarfile.CHRTYPE, 1, 3), (tarfile.CHRTYPE, 0, 1)],
)
def test_device_nodes_are_refused(scratch: Scratch, kind: bytes, major: int, minor: int) -> None:
    data = layer(
        member("dev/", tarfile.DIRTYPE), member("dev/x", kind, devmajor=major, devminor=minor)
    )
    assert "device node" in scratch.refused(data, "unsafe-layer")


def test_whiteouts_and_opaque_dirs_become_overlay_markers(scratch: Scratch) -> None:
    data = layer(
        member("etc/", tarfile.DIRTYPE),
        member("etc/.wh.motd"),
        member("usr/share/doc/", tarfile.DIRTYPE),
        member("usr/share/doc/.wh..wh..opq"),
        member("usr/share/doc/README", data=b"new\n"),
        member("dev/", tarfile.DIRTYPE),
        member("dev/gone", tarfile.CHRTYPE, devmajor=0, devminor=0),  # overlay-format whiteout
        member(".wh..wh.plnk/", tarfile.DIRTYPE),  # aufs metadata: ignored
    )
    result = scratch.run(data)
    motd = (scratch.dest / "etc/motd").lstat()
    assert stat.S_ISCHR(motd.st_mode) and motd.st_rdev == 0
    assert not (scratch.dest / "etc/.wh.motd").exists()
    assert os.getxattr(scratch.dest / "usr/share/doc", "trusted.overlay.opaque") == b"y"
    assert (scratch.dest / "usr/share/doc/README").read_text() == "new\n"
    assert stat.S_ISCHR((scratch.dest / "dev/gone").lstat().st_mode)
    assert not (scratch.dest / ".wh..wh.plnk").exists()
    assert (result["whiteouts"], result["opaque_dirs"]) == (2, 1)


def test_gzip_bomb_stops_at_the_limit(scratch: Scratch) -> None:
    size = 256 * 1024 * 1024
    ti = tarfile.TarInfo("zeros")
    ti.size = size
    raw = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w|") as tar,  # type: ignore[call-overload]
    ):
        tar.addfile(ti, _Zeros(size))
    bomb = raw.getvalue()
    assert len(bomb) < size // 500  # a real bomb: a few hundred KiB
    limits = unpack.Limits(max_bytes=16 * 1024 * 1024, max_entries=100)
    scratch.refused(bomb, "layer-too-large", limits=limits)


def test_too_many_entries_is_refused(scratch: Scratch) -> None:
    data = layer(*(member(f"f{i}") for i in range(50)))
    limits = unpack.Limits(max_bytes=1 << 30, max_entries=20)
    scratch.refused(data, "layer-too-large", limits=limits)


def test_wrong_diff_id_is_refused(scratch: Scratch) -> None:
    data = layer(member("a", data=b"a"))
    message = scratch.refused(data, "digest-mismatch", diff_id="sha256:" + "0" * 64)
    assert hashlib.sha256(data).hexdigest() in message


def test_corrupt_gzip_is_refused(scratch: Scratch) -> None:
    good = gzip.compress(layer(member("a", data=b"a" * 1000)))
    scratch.refused(good[: len(good) // 2], "bad-layer")
    scratch.refused(b"\x1f\x8b" + b"garbage" * 100, "bad-layer")


def test_zstd_layer_unpacks_and_hashes_the_uncompressed_tar(scratch: Scratch) -> None:
    data = layer(member("hello", data=b"zstd!\n"))
    blob = zstandard.ZstdCompressor().compress(data)
    result = scratch.run(blob, diff_id="sha256:" + hashlib.sha256(data).hexdigest())
    assert (scratch.dest / "hello").read_text() == "zstd!\n"
    assert result["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()


def test_gnu_long_names_and_later_entries_replace_earlier_ones(scratch: Scratch) -> None:
    long = "d/" + "x" * 200
    data = layer(
        member(long, data=b"one"),
        member(long, data=b"two"),
        member("e", data=b"e"),
        fmt=tarfile.GNU_FORMAT,
    )
    scratch.run(data)
    assert (scratch.dest / long).read_text() == "two"


class _Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray) -> int:  # type: ignore[override]
        n = min(len(buf), self.left)
        buf[:n] = bytes(n)
        self.left -= n
        return n


def test_hard_link_to_itself_is_kept(scratch: Scratch) -> None:
    data = layer(member("a/f", data=b"once"), member("./a/f", tarfile.LNKTYPE, linkname="./a/f"))
    scratch.run(data)
    assert (scratch.dest / "a/f").read_text() == "once"


@pytest.mark.parametrize("name", ["d/.wh..", "d/.wh...", ".wh...", "d/.wh."])
def test_whiteouts_naming_the_directory_or_its_parent_are_refused(
    scratch: Scratch, name: str
) -> None:
    data = layer(member("d/", tarfile.DIRTYPE), member("d/keep", data=b"k"), member(name))
    scratch.refused(data, "unsafe-layer")
