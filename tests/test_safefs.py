"""The fd-based path operations (``runtime/safefs.py``), aimed at decoys with real symlinks,
hard links, FIFOs and a renaming race. Nothing here needs a daemon."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from sandboxd.runtime import safefs

DECOY = "DECOY-ORIGINAL\n"


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, int]:
    """(a sandbox-like root, a decoy dir outside it, an O_PATH fd of the root)."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "victim").write_text(DECOY)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    yield root, decoy, fd
    os.close(fd)


def intact(decoy: Path) -> None:
    assert (decoy / "victim").read_text() == DECOY
    assert sorted(p.name for p in decoy.iterdir()) == ["victim"]


@pytest.mark.parametrize("how", ["absolute", "relative", "dotdot-chain"])
def test_replace_file_never_writes_through_a_symlink(world, how: str) -> None:
    root, decoy, fd = world
    target = {
        "absolute": str(decoy / "victim"),
        "relative": "../../decoy/victim",
        "dotdot-chain": "../" * 20 + str(decoy / "victim").lstrip("/"),
    }[how]
    os.symlink(target, root / "etc" / "hosts")
    safefs.replace_file_in_root(fd, "etc/hosts", b"127.0.0.1 me\n")
    assert (root / "etc" / "hosts").read_text() == "127.0.0.1 me\n"
    assert not (root / "etc" / "hosts").is_symlink()
    intact(decoy)


def test_replace_file_through_a_symlinked_directory_stays_inside(world) -> None:
    root, decoy, fd = world
    (root / "etc").rmdir()
    os.symlink(str(decoy), root / "etc")  # /etc -> the decoy dir, absolute
    with pytest.raises(OSError):  # resolved inside the root, where that path does not exist
        safefs.replace_file_in_root(fd, "etc/hosts", b"x\n")
    intact(decoy)
    inside = root / str(decoy).lstrip("/")
    inside.mkdir(parents=True)  # now it exists inside the root: the file is made there
    safefs.replace_file_in_root(fd, "etc/hosts", b"x\n")
    assert (inside / "hosts").read_text() == "x\n"
    intact(decoy)


@pytest.mark.root
def test_make_dirs_in_root_resolves_links_inside_and_owns_what_it_made(world) -> None:
    root, decoy, fd = world
    os.symlink(str(decoy), root / "out")
    (root / str(decoy).lstrip("/")).mkdir(parents=True)
    made = safefs.make_dirs_in_root(fd, "out/x/y", 0o750, 4242)
    os.close(made)
    intact(decoy)
    inside = root / str(decoy).lstrip("/") / "x" / "y"
    assert inside.is_dir()
    st = os.stat(inside)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (4242, 0o750)
    # an existing directory keeps its owner
    (root / "keep").mkdir()
    os.close(safefs.make_dirs_in_root(fd, "keep/new", 0o755, 4242))
    assert os.stat(root / "keep").st_uid == 0


@pytest.mark.root
def test_open_beneath_refuses_links_dotdot_and_reports_kinds(world) -> None:
    root, decoy, fd = world
    os.symlink(str(decoy), root / "l")
    os.symlink("..", root / "up")
    link = safefs.open_beneath(fd, "l")  # the trailing link itself, never its target
    try:
        assert safefs.kind_of(link) == "symlink"
    finally:
        os.close(link)
    for path in ("l/victim", "up/decoy/victim"):
        with pytest.raises(OSError):
            os.close(safefs.open_beneath(fd, path))
    with pytest.raises(OSError):
        safefs.open_beneath(fd, "etc/../../decoy/victim")
    os.mkfifo(root / "fifo")
    f = safefs.open_beneath(fd, "fifo")  # O_PATH: never blocks on a FIFO
    try:
        assert safefs.kind_of(f) == "FIFO"
    finally:
        os.close(f)
    os.link(decoy / "victim", root / "hard")
    f = safefs.open_beneath(fd, "hard")
    try:
        assert safefs.kind_of(f) == "file" and os.fstat(f).st_uid == 0  # caller checks owner
    finally:
        os.close(f)


def test_make_file_in_root_refuses_a_directory_and_keeps_an_existing_file(world) -> None:
    root, decoy, fd = world
    (root / "etc" / "dir").mkdir()
    with pytest.raises(IsADirectoryError):
        safefs.make_file_in_root(fd, "etc/dir")
    (root / "etc" / "file").write_text("kept")
    os.close(safefs.make_file_in_root(fd, "etc/file"))
    assert (root / "etc" / "file").read_text() == "kept"
    os.symlink(str(decoy / "victim"), root / "etc" / "link")
    with pytest.raises(OSError):  # resolved inside the root, where it leads nowhere
        safefs.make_file_in_root(fd, "etc/link")
    intact(decoy)


def test_make_dirs_races_a_renamer_and_never_leaves_the_root(world) -> None:
    """Another thread swaps ``a`` between a real directory and a link to the decoy as fast as
    it can while directories are made below it: nothing ever lands in the decoy."""
    root, decoy, fd = world
    (root / "a.real").mkdir()
    os.symlink(str(decoy), root / "a.link")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for name in ("a.real", "a.link"):
                try:
                    os.rename(root / name, root / "a")
                    os.rename(root / "a", root / name)
                except OSError:
                    pass  # "a" was made meanwhile, or is gone: the race goes on

    racer = threading.Thread(target=swap)
    racer.start()
    try:
        for i in range(300):
            try:
                os.close(safefs.make_dirs_in_root(fd, f"a/d{i}", 0o755, 4242))
            except OSError:
                pass
    finally:
        stop.set()
        racer.join()
    intact(decoy)
