"""Issues 10 and 15, as an attacker runs them: the daemon never follows a path a tenant can
write, and a user binds only volumes of their own.

Every attack aims at decoy files and directories this test owns (never at real host files), and
each test asserts both what the attacker gets and what the host keeps.
"""

from __future__ import annotations

import os
import stat
import tempfile
import time
from collections.abc import Iterator

import pytest
from conftest import PREFIX, VOLUME_ROOT, Client, Daemon

pytestmark = pytest.mark.root

DECOY_TEXT = "DECOY-ORIGINAL\n"


@pytest.fixture
def decoy() -> Iterator[str]:
    """A directory of the test's with a file the attacks aim at; checked unchanged after."""
    path = tempfile.mkdtemp(prefix=f"{PREFIX}-decoy-")
    os.chmod(path, 0o755)
    with open(os.path.join(path, "victim.txt"), "w") as fh:
        fh.write(DECOY_TEXT)
    os.makedirs(os.path.join(path, "sub"))
    with open(os.path.join(path, "sub", "marker"), "w") as fh:
        fh.write("DECOY\n")
    yield path
    for base, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(base, name))
        for name in dirs:
            p = os.path.join(base, name)
            os.unlink(p) if os.path.islink(p) else os.rmdir(p)
    os.rmdir(path)


def assert_decoy_intact(decoy: str) -> None:
    with open(os.path.join(decoy, "victim.txt")) as fh:
        assert fh.read() == DECOY_TEXT
    assert sorted(os.listdir(decoy)) == ["sub", "victim.txt"], os.listdir(decoy)
    assert sorted(os.listdir(os.path.join(decoy, "sub"))) == ["marker"]


def volume(client: Client, user: str, name: str) -> str:
    """Make ``user``'s volume ``name`` through the API; its host path (for the test's eyes)."""
    return client.call("PUT", f"/api/users/{user}/volumes/{name}")["host"]


def as_tenant(path: str, uid: int) -> None:
    os.lchown(path, uid, uid)


def run(client: Client, command: list[str], **fields: object) -> tuple[int, dict, str]:
    """(HTTP status, body, stdout) of a create that runs to its end."""
    resp = client.request("POST", "/api/sandboxes", json={"command": command, **fields})
    if resp.status_code != 201:
        return resp.status_code, resp.json(), ""
    sb = resp.json()
    result = client.wait(sb["id"])
    out = client.logs(sb["id"])["stdout"]
    client.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
    return 201, result, out


# -- issue 10, attack 1: the daemon's own writes into a sandbox's root ------------------------


def fake_etc(client: Client, user: str, name: str, decoy: str) -> None:
    """A volume whose hostname, hosts and resolv.conf are links to the decoy file."""
    fake = volume(client, user, name)
    uid = client.call("GET", "/api/whoami")["uid"]
    for entry in ("hostname", "hosts", "resolv.conf"):
        link = os.path.join(fake, entry)
        if not os.path.lexists(link):
            os.symlink(os.path.join(decoy, "victim.txt"), link)
            as_tenant(link, uid)


@pytest.mark.parametrize("target", ["/etc", "/etc/hosts", "/etc/resolv.conf", "/run/kernel"])
def test_volume_over_files_the_daemon_writes_is_refused(
    bob: Client, decoy: str, target: str
) -> None:
    fake_etc(bob, "bob", "fakeetc", decoy)
    status, body, _ = run(bob, ["true"], volumes=[f"fakeetc:{target}"], network="none")
    assert status == 400 and body["reason"] == "bad-volume-target", body
    assert_decoy_intact(decoy)


def test_etc_files_are_written_inside_the_sandbox_only(bob: Client, decoy: str) -> None:
    """The same links, bound elsewhere: the daemon's /etc files land in the sandbox's own /etc."""
    fake_etc(bob, "bob", "fakeetc2", decoy)
    status, result, out = run(
        bob,
        ["sh", "-c", "cat /etc/hostname /etc/hosts"],
        volumes=["fakeetc2:/data"],
        name="etc-probe",
        network="none",
    )
    assert status == 201 and result["exit_code"] == 0, result
    assert out.startswith("etc-probe\n") and "localhost" in out
    assert_decoy_intact(decoy)


@pytest.mark.parametrize("kind", ["absolute", "relative", "parent"])
def test_workdir_through_a_symlink_never_leaves_the_sandbox(
    bob: Client, decoy: str, kind: str
) -> None:
    wd = volume(bob, "bob", f"wd-{kind}")
    uid = bob.call("GET", "/api/whoami")["uid"]
    link = os.path.join(wd, "out")
    if not os.path.lexists(link):
        target = {
            "absolute": decoy,
            "relative": "../" * 12 + decoy.lstrip("/"),
            "parent": "..",
        }[kind]
        os.symlink(target, link)
        as_tenant(link, uid)
    status, body, out = run(
        bob, ["sh", "-c", "pwd"], volumes=[f"wd-{kind}:/data"], workdir="/data/out/x"
    )
    if status == 201:  # made inside the sandbox (the link resolved there), never on the host
        assert body["exit_code"] == 0
    else:
        assert status == 400 and body["reason"] == "bad-workdir", body
    assert_decoy_intact(decoy)
    assert not os.path.exists(os.path.join(os.path.dirname(wd), "x"))


# -- issue 10, attack 2: a volume source swapped between admission and mount --------------------


RACER = """
cd /v
rm -rf t d l dd ll
mkdir -p d/sub dd/t/sub
echo REAL > d/sub/marker
echo REAL > dd/t/sub/marker
ln -s {decoy} l
ln -s {decoy} ll
i=0
while [ $i -lt 2000000 ]; do
  mv -T d t; mv -T t d; mv -T l t; mv -T t l
  mv -T dd p; mv -T p dd; mv -T ll p; mv -T p ll
  i=$((i+1))
done
"""


def test_volume_swap_race_never_binds_the_decoy(bob: Client, decoy: str) -> None:
    """A sandbox of bob's renames ``t`` (and a parent ``p``) between a real directory and a
    symlink to the decoy, as fast as it can; bob creates sandboxes binding them meanwhile. Each
    create is refused or binds the real directory; none sees or writes the decoy."""
    volume(bob, "bob", "race")
    racer = bob.run(
        ["sh", "-c", RACER.format(decoy=decoy)], volumes=["race:/v"], name="racer", network="none"
    )
    outcomes: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 60
        tries = 0
        while tries < 40 and time.monotonic() < deadline:
            tries += 1
            source = "race/t/sub" if tries % 2 else "race/p/t/sub"
            status, body, out = run(
                bob,
                ["sh", "-c", "cat /mnt/marker; echo pwned > /mnt/pwned 2>/dev/null; true"],
                volumes=[f"{source}:/mnt"],
                network="none",
            )
            assert status < 500, body
            if status == 201:
                assert out == "REAL\n", out
                outcomes["bound"] = outcomes.get("bound", 0) + 1
            else:
                assert status in (400, 403), body
                outcomes[body["reason"]] = outcomes.get(body["reason"], 0) + 1
    finally:
        bob.call("DELETE", f"/api/sandboxes/{racer['id']}?force=1")
    print("race outcomes", outcomes)
    assert sum(outcomes.values()) >= 10, outcomes
    assert outcomes.get("bound", 0) > 0 and len(outcomes) > 1, outcomes
    assert_decoy_intact(decoy)


# -- issue 15: a bind source belongs to the user who asks ---------------------------------------


@pytest.fixture
def alice_diary(alice: Client) -> str:
    """alice's volume ``work`` with notes/diary.txt in ordinary modes (0755 dir, 0644 file)."""
    work = volume(alice, "alice", "work")
    status, result, _ = run(
        alice,
        [
            "sh",
            "-c",
            "mkdir -p /w/notes && chmod 755 /w/notes && echo dear-diary > "
            "/w/notes/diary.txt && chmod 644 /w/notes/diary.txt",
        ],
        volumes=["work:/w"],
        network="none",
    )
    assert status == 201 and result["exit_code"] == 0
    return work


@pytest.mark.parametrize(
    "source",
    [
        "{work}",
        "{work}/notes",
        "{work}/notes/diary.txt",
        "{root}/bob/../alice/work/notes",
        "../alice/work/notes",
        "x/../../alice/work",
    ],
)
def test_bob_cannot_bind_alice_s_volume(bob: Client, alice_diary: str, source: str) -> None:
    src = source.format(work=alice_diary, root=VOLUME_ROOT)
    status, body, out = run(bob, ["cat", "/x/diary.txt"], volumes=[f"{src}:/x:ro"])
    assert status == 403, (status, body)
    assert body["reason"] in ("host-path-denied", "volume-denied"), body
    assert body["message"]
    assert "dear-diary" not in out


@pytest.mark.parametrize("kind", ["absolute", "relative", "parent-dir"])
def test_symlink_into_alice_s_volume_is_refused(bob: Client, alice_diary: str, kind: str) -> None:
    mine = volume(bob, "bob", f"links-{kind}")
    uid = bob.call("GET", "/api/whoami")["uid"]
    target = {
        "absolute": os.path.join(alice_diary, "notes"),
        "relative": "../../alice/work/notes",
        "parent-dir": "../../alice",
    }[kind]
    link = os.path.join(mine, "l")
    if not os.path.lexists(link):
        os.symlink(target, link)
        as_tenant(link, uid)
    for source in (f"links-{kind}/l", f"links-{kind}/l/diary.txt", f"links-{kind}/l/work"):
        status, body, out = run(
            bob, ["sh", "-c", "cat /x/diary.txt /x 2>&1"], volumes=[f"{source}:/x"]
        )
        assert status == 403 and body["reason"] == "volume-denied", (source, body)
        assert "dear-diary" not in out


def test_alice_binds_her_own_volume_dir_subdir_and_file(alice: Client, alice_diary: str) -> None:
    status, result, out = run(
        alice,
        [
            "sh",
            "-c",
            "cat /a/notes/diary.txt /s/diary.txt /f; echo more >> /s/diary.txt; "
            "(echo x > /ro/y) 2>&1; (echo x >> /fro) 2>&1; cat /f",
        ],
        volumes=[
            "work:/a",
            "work/notes:/s",
            "work/notes/diary.txt:/f",
            "work:/ro:ro",
            "work/notes/diary.txt:/fro:ro",
        ],
    )
    assert status == 201 and result["exit_code"] == 0, result
    lines = out.splitlines()
    assert lines[:3] == ["dear-diary"] * 3
    assert out.count("Read-only file system") == 2
    assert lines[-2:] == ["dear-diary", "more"]
    with open(os.path.join(alice_diary, "notes", "diary.txt")) as fh:
        assert fh.read() == "dear-diary\nmore\n"


def test_admin_binds_a_host_path_and_a_user_cannot(
    daemon: Daemon, alice: Client, decoy: str
) -> None:
    status, result, out = run(
        daemon.admin, ["cat", "/x/victim.txt"], volumes=[f"{decoy}:/x:ro"], user="alice"
    )
    assert status == 201 and out == DECOY_TEXT, (status, result)
    status, body, _ = run(alice, ["cat", "/x/victim.txt"], volumes=[f"{decoy}:/x:ro"])
    assert status == 403 and body["reason"] == "host-path-denied"
    # an admin's host path is opened with no symlink followed either
    link = decoy + "-link"
    os.symlink(decoy, link)
    try:
        status, body, _ = run(daemon.admin, ["true"], volumes=[f"{link}:/x"])
        assert status == 403 and body["reason"] == "volume-denied", body
    finally:
        os.unlink(link)
    assert_decoy_intact(decoy)


def test_special_files_and_foreign_owners_in_a_volume_are_refused(bob: Client, decoy: str) -> None:
    odd = volume(bob, "bob", "odd")
    uid = bob.call("GET", "/api/whoami")["uid"]
    fifo = os.path.join(odd, "fifo")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
        as_tenant(fifo, uid)
    dev = os.path.join(odd, "null")
    if not os.path.exists(dev):
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        as_tenant(dev, uid)
    hard = os.path.join(odd, "hard")
    if not os.path.exists(hard):
        os.link(os.path.join(decoy, "victim.txt"), hard)  # root's file, linked in
    for name, reason, code in (
        ("fifo", "bad-volume", 400),
        ("null", "bad-volume", 400),
        ("hard", "volume-denied", 403),
    ):
        status, body, _ = run(bob, ["sh", "-c", "echo pwned > /x"], volumes=[f"odd/{name}:/x"])
        assert status == code and body["reason"] == reason, (name, body)
    os.unlink(hard)
    assert_decoy_intact(decoy)


# -- issue 10: tokens stay out of logs ----------------------------------------------------


def test_query_tokens_never_reach_the_log(daemon: Daemon, alice: Client) -> None:
    secret = "feedface" * 6
    import requests

    requests.get(f"{daemon.url}/api/sandboxes?token={secret}", timeout=10)
    requests.get(f"{daemon.url}/api/nothing-here?a=1&token={alice.token}", timeout=10)
    time.sleep(0.3)
    with open(daemon.log_path) as fh:
        text = fh.read()
    assert "token=REDACTED" in text
    assert secret not in text and alice.token not in text


def test_volumes_per_user_are_bounded() -> None:
    """Beyond ``max_volumes_per_user`` a new volume is refused (429), by the API and by a
    sandbox naming one; existing volumes still bind."""
    from conftest import CONFIG, other_instance, running_daemon

    config = CONFIG.replace(
        "stop_grace_seconds = 3", "stop_grace_seconds = 3\nmax_volumes_per_user = 2"
    )
    with running_daemon(other_instance("v"), config) as d:
        vic = d.user("vic")
        vic.call("PUT", "/api/users/vic/volumes/one", expect=201)
        vic.call("PUT", "/api/users/vic/volumes/two", expect=201)
        resp = vic.request("PUT", "/api/users/vic/volumes/three")
        assert resp.status_code == 429 and resp.json()["reason"] == "max-volumes", resp.text
        status, body, _ = run(vic, ["true"], volumes=["four:/x"], network="none")
        assert status == 429 and body["reason"] == "max-volumes", body
        status, result, _ = run(vic, ["ls", "/x"], volumes=["one:/x"], network="none")
        assert status == 201 and result["exit_code"] == 0
        vic.call("PUT", "/api/users/vic/volumes/one", expect=200)  # existing: fine
        for name in ("one", "two"):
            vic.call("DELETE", f"/api/users/vic/volumes/{name}", expect=204)
