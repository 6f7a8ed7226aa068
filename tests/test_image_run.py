"""Running sandboxes and kernels from OCI images, with real parts: a real registry in the test
netns, the cached fixture images (busybox; the Python kernel image in 4 layers), idmapped
layers under a real overlay, real bwrap.

Docker semantics (Env, WorkingDir, Entrypoint/Cmd and the overrides), ownership (the image's
user 1000 becomes the tenant: its files are the tenant's inside and writable there; on the
host the tenant's uid is in the upper layer only, the shared layer untouched), one copy of
each layer for every sandbox, pulls on first use and refusals, and the hold a sandbox keeps
on its image, released on every way a sandbox ends. Attacks (a hostile image's passwd or home
as symlinks to host decoys, setuid binaries, files of another tenant) aim at decoys this test
owns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from conftest import (
    PREFIX,
    SANDBOXCTL,
    Client,
    Daemon,
    make_daemon,
    other_instance,
    stop_daemon,
)
from helpers import wait_until
from image_registry import Registry, layouts_ready, push_raw
from test_api import error
from test_image_unpack import layer, member
from test_kernel_fixtures import KERNELSPEC_ARGV, execute, stdout_of, ws_connect

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not layouts_ready(), reason="image fixtures missing: run `make test-images`"
    ),
]


def busybox_members(*extra: tuple) -> list[tuple]:
    """A layer with busybox and a few applet links (the host's busybox-static)."""
    with open("/bin/busybox", "rb") as fh:
        data = fh.read()
    out = [
        member("bin", tarfile.DIRTYPE),
        member("bin/busybox", data=data, mode=0o755),
        member("tmp", tarfile.DIRTYPE, mode=0o1777),
    ]
    for app in ("sh", "echo", "id", "cat", "stat", "ls", "sleep", "touch", "pwd", "env"):
        out.append(member(f"bin/{app}", tarfile.SYMTYPE, linkname="busybox"))
    return out + list(extra)


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    reg = Registry("none")
    try:
        reg.push("busybox", "busybox:latest")
        reg.push("python", "python:latest")
        base = layer(*busybox_members())
        push_raw(
            reg.host,
            "semantics",
            [base, layer(member("work", tarfile.DIRTYPE))],
            config={
                "Entrypoint": ["/bin/echo", "entry"],
                "Cmd": ["default-cmd"],
                "Env": ["PATH=/bin", "FOO=image", "BAR=image"],
                "WorkingDir": "/work",
            },
        )
        push_raw(reg.host, "nocmd", [base], config={"Cmd": None})
        push_raw(reg.host, "ghost", [base], config={"User": "ghost"})
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def ksdir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix=f"{PREFIX}-imgks-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def write_kernelspec(ksdir: str, name: str, image: str, profile: str) -> None:
    os.makedirs(os.path.join(ksdir, name), exist_ok=True)
    with open(os.path.join(ksdir, name, "kernel.json"), "w") as fh:
        json.dump(
            {
                "argv": KERNELSPEC_ARGV,
                "display_name": f"Python ({image})",
                "language": "python",
                "metadata": {"sandboxd": {"profile": profile, "image": image}},
            },
            fh,
        )


def image_config(registry: Registry, ksdir: str) -> str:
    return f"""
stop_grace_seconds = 2
kernelspec_dirs = ["{ksdir}"]

[profiles.default]
cpus = 1.0
memory = "512m"
pids = 256
network = "none"
disk = "256m"

[profiles.puller]
network = "none"
memory = "512m"
disk = "256m"
allow_pull = true

[profiles.bb]                   # a profile whose default image is an OCI image
network = "none"
memory = "256m"
disk = "4m"
image = "{registry.host}/busybox:latest"

[quotas.default]
max_sandboxes = 12
memory = "8g"
cpus = 8.0

[images]
allowed_registries = ["{registry.host}"]

[images.registries."{registry.host}"]
insecure = true
"""


@pytest.fixture(scope="module")
def daemon(registry: Registry, ksdir: str) -> Iterator[Daemon]:
    write_kernelspec(ksdir, "python3-image", f"{registry.host}/python:latest", "puller")
    d = make_daemon(other_instance("i"), image_config(registry, ksdir))
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


def ref(registry: Registry, name: str) -> str:
    return f"{registry.host}/{name}:latest"


def image_model(d: Daemon, reference: str) -> dict[str, Any]:
    return d.admin.call("GET", f"/api/images/{quote(reference, safe='')}")


def holds(d: Daemon, reference: str) -> int:
    return image_model(d, reference)["sandboxes"]


def pull(d: Daemon, reference: str) -> dict[str, Any]:
    return d.admin.call("POST", "/api/images/pull", json={"ref": reference})


def run(client: Client, image: str, command: list[str] | None = None, **fields: Any) -> Any:
    body: dict[str, Any] = {**({"image": image} if image else {}), **fields}
    if command is not None:
        body["command"] = command
    return client.call("POST", "/api/sandboxes", json=body)


def run_to_end(client: Client, image: str, command: list[str] | None = None, **fields: Any):
    sb = run(client, image, command, **fields)
    result = client.wait(sb["id"])
    logs = client.logs(sb["id"])
    client.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
    return sb, result, logs["stdout"], logs["stderr"]


def wait_output(client: Client, sid: str, marker: str, timeout: float = 60) -> str:
    return wait_until(
        lambda: marker in (out := client.logs(sid)["stdout"]) and out, timeout=timeout
    )


def layer_dir(d: Daemon, diff_id: str) -> str:
    return os.path.join(d.state_dir, "images", "layers", diff_id.split(":", 1)[1], "diff")


def sandbox_path(sb: dict[str, Any], d: Daemon, *parts: str) -> str:
    """A path in the sandbox's own mount namespace (its run dir's tmpfs and lower mounts), from
    the host: through its outer bwrap process, which stays in the launcher child's namespace."""
    return os.path.join(f"/proc/{sb['pid']}/root", d.run_dir.lstrip("/"), sb["id"], *parts)


# -- refusals and pulls -------------------------------------------------------------------------


def test_missing_image_is_404_without_allow_pull_and_nothing_is_pulled(
    daemon: Daemon, registry: Registry
) -> None:
    alice = daemon.user("alice")
    busybox = ref(registry, "busybox")
    resp = alice.request("POST", "/api/sandboxes", json={"image": busybox, "command": ["true"]})
    body = error(resp, 404, "image-not-found")
    assert "allow_pull" in body["message"]
    assert daemon.admin.call("GET", "/api/images") == []
    # an id we do not have is not pullable, even with allow_pull
    resp = alice.request(
        "POST",
        "/api/sandboxes",
        json={"image": "sha256:" + "ab" * 32, "command": ["true"], "profile": "puller"},
    )
    error(resp, 404, "image-not-found")
    # a registry off the allow-list is refused before anything is contacted
    resp = alice.request(
        "POST",
        "/api/sandboxes",
        json={"image": "elsewhere.example:5000/x:1", "command": ["true"], "profile": "puller"},
    )
    error(resp, 403, "registry-denied")
    assert daemon.admin.call("GET", "/api/sandboxes?all=1") == []


def test_pull_on_first_use_then_the_hold_follows_the_sandbox(
    daemon: Daemon, registry: Registry
) -> None:
    alice = daemon.user("alice")
    busybox = ref(registry, "busybox")
    sb = run(alice, busybox, ["sleep", "30"], profile="puller")
    model = image_model(daemon, busybox)
    assert sb["image"] == busybox and sb["image_id"] == model["id"]
    assert model["sandboxes"] == 1
    error(daemon.admin.request("DELETE", f"/api/images/{quote(busybox, safe='')}"), 409)
    alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
    assert holds(daemon, busybox) == 0


def test_image_cmd_env_and_workdir_apply_and_the_request_overrides_them(
    daemon: Daemon, registry: Registry
) -> None:
    alice = daemon.user("alice")
    image = ref(registry, "semantics")
    pull(daemon, image)
    # the image's Entrypoint + Cmd
    _, result, out, _ = run_to_end(alice, image)
    assert result["exit_code"] == 0 and out == "entry default-cmd\n"
    # a command replaces Cmd, the Entrypoint stays
    sb, _, out, _ = run_to_end(alice, image, ["mine"])
    assert out == "entry mine\n" and sb["command"] == ["/bin/echo", "entry", "mine"]
    # an entrypoint replaces the image's and drops its Cmd
    _, _, out, _ = run_to_end(alice, image, entrypoint=["/bin/echo", "only"])
    assert out == "only\n"
    # Env and WorkingDir of the image, the request's variables on top
    script = 'echo "$FOO $BAR $(pwd) $HOME $USER"'
    _, _, out, _ = run_to_end(
        alice, image, [script], entrypoint=["/bin/sh", "-c"], env={"BAR": "request"}
    )
    assert out == "image request /work /home/jovyan jovyan\n"
    # a working directory in the request wins; [] clears the entrypoint
    _, _, out, _ = run_to_end(alice, image, ["/bin/sh", "-c", "pwd"], entrypoint=[], workdir="/tmp")
    assert out == "/tmp\n"


def test_a_profiles_image_the_disk_cap_and_the_etc_files(
    daemon: Daemon, registry: Registry
) -> None:
    """A profile may name an OCI image as its default; the writable layer stays capped by
    --disk (4m here); /etc/hostname and /etc/hosts are the daemon's, as with the host image."""
    alice = daemon.user("alice")
    pull(daemon, ref(registry, "busybox"))
    script = (
        "cat /etc/hostname; grep -c imgbox /etc/hosts; "
        "head -c 8000000 /dev/zero > /tmp/big 2>/dev/null && echo FILLED || echo full"
    )
    sb, result, out, _ = run_to_end(
        alice, "", ["/bin/sh", "-c", script], profile="bb", name="imgbox"
    )
    assert sb["image"] == ref(registry, "busybox") and sb["image_id"]
    assert out.splitlines() == ["imgbox", "1", "full"], out


def test_refused_image_configs(daemon: Daemon, registry: Registry) -> None:
    alice = daemon.user("alice")
    for name in ("nocmd", "ghost"):
        pull(daemon, ref(registry, name))
    resp = alice.request("POST", "/api/sandboxes", json={"image": ref(registry, "nocmd")})
    error(resp, 400, "no-command")
    resp = alice.request(
        "POST", "/api/sandboxes", json={"image": ref(registry, "ghost"), "command": ["true"]}
    )
    assert "ghost" in error(resp, 422, "bad-image-user")["message"]
    # the host image still needs a command
    error(alice.request("POST", "/api/sandboxes", json={}), 400, "no-command")
    assert holds(daemon, ref(registry, "ghost")) == 0


# -- kernels ---------------------------------------------------------------------------------

KERNEL_PROBE = (
    "import json, os, sys\n"
    "print(json.dumps({'exe': sys.executable, 'prefix': sys.prefix, 'uid': os.getuid(),"
    " 'gid': os.getgid(), 'cwd': os.getcwd(), 'marker': os.path.exists('/etc/sandboxd-image'),"
    " 'issue_net': os.path.exists('/etc/issue.net'), 'doc': sorted(os.listdir('/usr/share/doc')),"
    " 'host_python': os.path.exists(%r)}))"
)


def kernel_facts(d: Daemon, client: Client, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start a kernel of kernelspec ``name`` (it answered kernel_info when this returns), run
    the probe in it; (kernel model, what it printed)."""
    kernel = client.call("POST", "/api/kernels", expect=201, json={"name": name})
    ws = ws_connect(d, client, kernel["id"])
    try:
        _, iopub = execute(ws, KERNEL_PROBE % os.path.realpath(sys.executable), timeout=120)
    finally:
        ws.close()
    return kernel, json.loads(stdout_of(iopub).strip().splitlines()[-1])


def test_kernel_from_the_python_image_runs_the_images_python(
    daemon: Daemon, registry: Registry
) -> None:
    """The kernelspec names the image (pulled on first use: its profile allows it); the kernel
    answers kernel_info, and its interpreter, files and user are the image's, not the host's."""
    alice = daemon.user("alice")
    kernel, facts = kernel_facts(daemon, alice, "python3-image")
    try:
        sb = alice.call("GET", f"/api/sandboxes/{kernel['sandbox']}")
        python = image_model(daemon, ref(registry, "python"))
        assert sb["image"] == ref(registry, "python") and sb["image_id"] == python["id"]
        assert python["sandboxes"] == 1
        assert facts == {
            "exe": "/usr/bin/python3",
            "prefix": "/usr",
            "uid": 1000,  # the image's user 1000:100
            "gid": 100,
            "cwd": "/home/jovyan",  # its WorkingDir
            "marker": True,  # layer 2's file
            "issue_net": False,  # deleted by layer 2 (a whiteout)
            "doc": ["README"],  # layer 3's opaque /usr/share/doc
            "host_python": False,
        }
    finally:
        alice.request("DELETE", f"/api/kernels/{kernel['id']}")
    # the same check against a kernel of the built-in image: its Python is the host's
    kernel, host = kernel_facts(daemon, alice, "python3")
    alice.request("DELETE", f"/api/kernels/{kernel['id']}")
    assert host["exe"] != "/usr/bin/python3" and host["host_python"] is True
    assert host["marker"] is False and (host["uid"], host["gid"]) == (1000, 1000)
    wait_until(lambda: holds(daemon, ref(registry, "python")) == 0, timeout=30)


# -- ownership and sharing ---------------------------------------------------------------------

OWNERSHIP_SCRIPT = """
set -e
echo "home $(stat -c %u:%g /home/jovyan) file $(stat -c %u:%g /home/jovyan/hello.py)"
echo "root $(stat -c %u /) python $(stat -c %u /usr/bin/python3.11) me $(id -u):$(id -g)"
echo "# appended in the sandbox" >> /home/jovyan/hello.py
echo new > /home/jovyan/new.txt
if echo x >> /usr/bin/python3.11 2>/dev/null; then echo "system WRITABLE"; else echo "system ro"; fi
echo ready
exec sleep 60
"""


def test_the_image_users_files_are_the_tenants_and_the_shared_layer_is_untouched(
    daemon: Daemon, registry: Registry
) -> None:
    alice = daemon.user("alice")
    image = ref(registry, "python")
    pull(daemon, image)
    uid = daemon.admin.call("GET", "/api/users/alice")["uid"]
    top = layer_dir(daemon, image_model(daemon, image)["layers"][-1])  # /home/jovyan's layer
    shared = os.path.join(top, "home", "jovyan", "hello.py")
    before = (os.stat(shared), open(shared).read())
    sb = run(alice, image, ["/bin/sh", "-c", OWNERSHIP_SCRIPT])
    try:
        out = wait_output(alice, sb["id"], "ready")
        assert "home 1000:100 file 1000:100" in out, out  # the image's user: the tenant
        assert "root 65534 python 65534 me 1000:100" in out, out  # root's stays root's
        assert "system ro" in out, out
        # on the host: the tenant's uid, in this sandbox's upper layer only
        upper = sandbox_path(sb, daemon, "rw", "upper", "home", "jovyan")
        for name in ("hello.py", "new.txt"):
            st = os.stat(os.path.join(upper, name))
            assert (st.st_uid, st.st_gid) == (uid, uid), name
        with open(os.path.join(upper, "hello.py")) as fh:
            assert fh.read() == before[1] + "# appended in the sandbox\n"
        assert not os.path.exists(os.path.join(upper, "..", "..", "usr", "bin", "python3.11"))
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
    after = os.stat(shared)
    assert (after.st_uid, after.st_gid) == (1000, 100)  # never chowned
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before[0].st_ino,
        before[0].st_mtime_ns,
        before[0].st_size,
    )
    assert open(shared).read() == before[1]
    assert not os.path.exists(os.path.join(top, "home", "jovyan", "new.txt"))


def _lower_mounts(sb: dict[str, Any], d: Daemon) -> dict[str, tuple[str, str]]:
    """The sandbox's idmapped layer mounts: {mount point name: (device, root in its fs)}; each
    is read-only, nosuid, nodev and idmapped, and the overlay over them nosuid, nodev."""
    prefix = os.path.join(d.run_dir, sb["id"], "rw", "lower") + "/"
    root = os.path.join(d.run_dir, sb["id"], "root")
    out, overlay = {}, []
    with open(f"/proc/{sb['pid']}/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            options = set(fields[5].split(","))
            if fields[4].startswith(prefix):
                out[fields[4][len(prefix) :]] = (fields[2], fields[3])
                assert {"ro", "nosuid", "nodev", "idmapped"} <= options, line
            elif fields[4] == root:
                overlay.append(line)
                assert {"nosuid", "nodev"} <= options, line
    assert len(overlay) == 1, overlay
    return out


def test_two_sandboxes_share_one_copy_of_each_layer(daemon: Daemon, registry: Registry) -> None:
    alice, bob = daemon.user("alice"), daemon.user("bob")
    image = ref(registry, "python")
    pull(daemon, image)
    layers = [layer_dir(daemon, d) for d in image_model(daemon, image)["layers"]]
    on_disk = sorted(os.listdir(os.path.join(daemon.state_dir, "images", "layers")))
    one = run(alice, image, ["sleep", "60"])
    two = run(bob, image, ["sleep", "60"])
    try:
        assert holds(daemon, image) == 2
        mounts = [_lower_mounts(sb, daemon) for sb in (one, two)]
        assert mounts[0] == mounts[1] and len(mounts[0]) == len(layers)  # the same directories
        device = os.stat(layers[0]).st_dev
        dev = f"{os.major(device)}:{os.minor(device)}"
        assert sorted(root for _, root in mounts[0].values()) == sorted(layers)
        assert {d for d, _ in mounts[0].values()} == {dev}
        # the same inode in both sandboxes and in the store: one copy on disk
        python = [
            os.stat(sandbox_path(sb, daemon, "rw", "lower", "3", "usr", "bin", "python3.11"))
            for sb in (one, two)
        ]
        stored = os.stat(os.path.join(layers[0], "usr", "bin", "python3.11"))
        assert {(s.st_dev, s.st_ino) for s in python} == {(stored.st_dev, stored.st_ino)}
        assert sorted(os.listdir(os.path.join(daemon.state_dir, "images", "layers"))) == on_disk
    finally:
        alice.call("DELETE", f"/api/sandboxes/{one['id']}?force=1")
        bob.call("DELETE", f"/api/sandboxes/{two['id']}?force=1")
    assert holds(daemon, image) == 0


# -- the hold on every way out --------------------------------------------------------------------


def restart(d: Daemon, fault: str = "") -> None:
    """SIGKILL the daemon (its sandboxes keep running) and start it again, maybe with a fault
    point armed (``faults.py``: it then kills itself there)."""
    if d.proc is not None and d.proc.poll() is None:
        d.kill(signal.SIGKILL)
    if fault:
        os.environ["SANDBOXD_FAULT"] = fault
    try:
        d.start()
    finally:
        os.environ.pop("SANDBOXD_FAULT", None)


def test_the_hold_goes_with_a_failed_start_an_exit_and_a_removal(
    daemon: Daemon, registry: Registry
) -> None:
    alice = daemon.user("alice")
    image = ref(registry, "busybox")
    pull(daemon, image)
    # a start that fails after the image step (bwrap cannot exec the command)
    resp = alice.request("POST", "/api/sandboxes", json={"image": image, "command": ["/nope"]})
    error(resp, 400, "bad-command")
    assert holds(daemon, image) == 0
    # an exit: the record stays, the hold does not
    sb = run(alice, image, ["true"])
    assert alice.wait(sb["id"])["exit_code"] == 0
    wait_until(lambda: holds(daemon, image) == 0, timeout=30)
    assert alice.call("GET", f"/api/sandboxes/{sb['id']}")["state"] == "exited"
    alice.call("DELETE", f"/api/sandboxes/{sb['id']}")
    # a removal of a running sandbox
    sb = run(alice, image, ["sleep", "60"])
    assert holds(daemon, image) == 1
    alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
    assert holds(daemon, image) == 0


def test_the_hold_after_a_daemon_crash(daemon: Daemon, registry: Registry) -> None:
    image = ref(registry, "busybox")
    pull(daemon, image)
    alice = daemon.user("alice")
    stays = run(alice, image, ["sleep", "120"])
    ends = run(alice, image, ["sleep", "2"])
    assert holds(daemon, image) == 2
    # the daemon dies; one sandbox ends while it is down, the other keeps running; and a hold
    # whose sandbox has no record at all (a release interrupted after the record went)
    daemon.kill(signal.SIGKILL)
    wait_until(lambda: not os.path.exists(f"/proc/{ends['pid']}"), timeout=30)
    index = sqlite3.connect(os.path.join(daemon.state_dir, "images", "index.db"))
    with index:
        index.execute(
            "INSERT INTO holds VALUES (?, ?, ?)", ("0123456789abcdef", stays["image_id"], 0.0)
        )
    index.close()
    restart(daemon)
    assert alice.call("GET", f"/api/sandboxes/{ends['id']}")["state"] == "exited"
    wait_until(lambda: holds(daemon, image) == 1, timeout=30)  # re-adopted: still held
    alice.call("DELETE", f"/api/sandboxes/{stays['id']}?force=1")
    alice.call("DELETE", f"/api/sandboxes/{ends['id']}")
    assert holds(daemon, image) == 0
    # the daemon dies in the middle of a start, after the image step and after the launch
    for point in ("create:image", "create:launch"):
        restart(daemon, fault=point)
        with pytest.raises(OSError):
            alice.request(
                "POST", "/api/sandboxes", json={"image": image, "command": ["sleep", "60"]}
            )
        daemon.proc.wait(timeout=30)  # type: ignore[union-attr]
        restart(daemon)
        assert holds(daemon, image) == 0, point
        assert alice.call("GET", "/api/sandboxes?all=1") == [], point


# -- hostile images ------------------------------------------------------------------------------


def push_and_pull(
    d: Daemon, registry: Registry, name: str, layers: list[bytes], **config: Any
) -> str:
    push_raw(registry.host, name, [layer(*busybox_members()), *layers], config=config)
    image = ref(registry, name)
    pull(d, image)
    return image


def test_the_image_user_is_looked_up_inside_the_image_never_on_the_host(
    daemon: Daemon, registry: Registry, tmp_path: Any
) -> None:
    alice = daemon.user("alice")
    decoy_dir = tmp_path / "decoy-etc"
    decoy_dir.mkdir()
    (decoy_dir / "passwd").write_text("evil:x:4242:4242:evil:/evil:/bin/sh\n")
    decoy = decoy_dir / "passwd"
    before = decoy.stat()
    hostile = {
        "abs": [
            member("etc", tarfile.DIRTYPE),
            member("etc/passwd", tarfile.SYMTYPE, linkname=str(decoy)),
        ],
        "rel": [
            member("etc", tarfile.DIRTYPE),
            member("etc/passwd", tarfile.SYMTYPE, linkname="../../../../../../.." + str(decoy)),
        ],
        "dir": [member("etc", tarfile.SYMTYPE, linkname=str(decoy_dir))],
    }
    for name, members in hostile.items():
        image = push_and_pull(daemon, registry, f"evil-{name}", [layer(*members)], User="evil")
        resp = alice.request("POST", "/api/sandboxes", json={"image": image, "command": ["true"]})
        error(resp, 422, "bad-image-user")
    # the control: the same user in the image's own passwd is found, and runs as its uid
    image = push_and_pull(
        daemon,
        registry,
        "evil-own",
        [layer(member("etc", tarfile.DIRTYPE), member("etc/passwd", data=decoy.read_bytes()))],
        User="evil",
    )
    _, result, out, _ = run_to_end(
        alice, image, ["/bin/sh", "-c", 'echo "$(id -u):$(id -g) $HOME"']
    )
    assert (result["exit_code"], out) == (0, "4242:4242 /evil\n")
    after = decoy.stat()
    assert (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, before.st_size)
    assert sorted(os.listdir(decoy_dir)) == ["passwd"]


def test_a_home_that_is_a_symlink_to_the_host_stays_inside(
    daemon: Daemon, registry: Registry, tmp_path: Any
) -> None:
    alice = daemon.user("alice")
    decoy = tmp_path / "decoy-home"
    decoy.mkdir(mode=0o755)
    (decoy / "kept").write_text("kept\n")
    before = sorted(os.listdir(decoy)), decoy.stat()
    passwd = b"root:x:0:0:root:/root:/bin/sh\njov:x:1000:1000::/home/jov:/bin/sh\n"
    members = [
        member("etc", tarfile.DIRTYPE),
        member("etc/passwd", data=passwd),
        member("home", tarfile.DIRTYPE),
        member("home/jov", tarfile.SYMTYPE, linkname=str(decoy)),
    ]
    image = push_and_pull(daemon, registry, "evil-home", [layer(*members)], User="jov")
    resp = alice.request(
        "POST",
        "/api/sandboxes",
        json={"image": image, "command": ["/bin/sh", "-c", "echo x > $HOME/planted; ls $HOME"]},
    )
    if resp.status_code == 201:  # it ran: whatever it wrote is in its own root
        sid = resp.json()["id"]
        alice.wait(sid)
        alice.call("DELETE", f"/api/sandboxes/{sid}?force=1")
    else:  # or the start was refused: the home could not be made inside the root
        error(resp, 400, "bad-workdir")
    after = sorted(os.listdir(decoy)), decoy.stat()
    assert after[0] == before[0] == ["kept"]
    assert (after[1].st_uid, after[1].st_mode, after[1].st_mtime_ns) == (
        before[1].st_uid,
        before[1].st_mode,
        before[1].st_mtime_ns,
    )


def test_setuid_bits_and_other_tenants_files_give_nothing(
    daemon: Daemon, registry: Registry
) -> None:
    alice, bob = daemon.user("alice"), daemon.user("bob")
    bob_uid = daemon.admin.call("GET", "/api/users/bob")["uid"]
    with open("/bin/busybox", "rb") as fh:
        busybox = fh.read()
    members = [
        member("bin", tarfile.DIRTYPE),
        member("bin/busybox.suid", data=busybox, mode=0o4755, uid=0, gid=0),
        member("bobs", data=b"bob's secret\n", mode=0o600, uid=bob_uid, gid=bob_uid),
        member("mine", data=b"the image user's\n", mode=0o600, uid=1000, gid=1000),
    ]
    image = push_and_pull(daemon, registry, "evil-ids", [layer(*members)], User="1000")
    script = (
        "echo suid $(stat -c %a /bin/busybox.suid) $(/bin/busybox.suid id -u)\n"
        "echo bobs $(stat -c %u /bobs) $(cat /bobs 2>/dev/null || echo denied)\n"
        "echo mine $(stat -c %u /mine) $(cat /mine)\n"
    )
    _, result, out, _ = run_to_end(alice, image, ["/bin/sh", "-c", script])
    assert out.splitlines() == [
        "suid 4755 1000",  # the bit is on disk, the mount is nosuid: still the tenant
        "bobs 65534 denied",  # another tenant's uid on disk is nobody's here, never bob's
        "mine 1000 the image user's",
    ], out
    del bob


def test_sandboxctl_run_image(daemon: Daemon, registry: Registry) -> None:
    alice = daemon.user("alice")
    image = ref(registry, "semantics")
    pull(daemon, image)

    def ctl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SANDBOXCTL, "run", "--rm", "--image", image, *args],
            env=daemon.env(alice.token),
            capture_output=True,
            text=True,
            timeout=120,
        )

    done = ctl()  # no command: the image's Entrypoint and Cmd
    assert (done.returncode, done.stdout) == (0, "entry default-cmd\n"), done.stderr
    done = ctl("--entrypoint", "/bin/sh", "--", "-c", "id -u; exit 3")
    assert (done.returncode, done.stdout) == (3, "1000\n"), done.stderr
    done = ctl("--entrypoint", "", "--", "/bin/echo", "plain")
    assert (done.returncode, done.stdout) == (0, "plain\n"), done.stderr
    done = subprocess.run(
        [SANDBOXCTL, "run", "--rm", "--image", ref(registry, "absent"), "--", "true"],
        env=daemon.env(alice.token),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 125 and "image-not-found" in done.stderr, done.stderr


def test_without_idmapped_mounts_images_are_refused_and_host_still_runs(
    registry: Registry, ksdir: str
) -> None:
    """A store on a filesystem without idmapped mounts (ramfs): the start-up probe finds out,
    OCI images are refused with the reason (and the minimum kernel), the host image runs."""
    from sandboxd.runtime import syscalls

    state = tempfile.mkdtemp(prefix=f"{PREFIX}-ramfs-")
    syscalls.mount("sbxtest", state, "ramfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "mode=0700")
    d = make_daemon(other_instance("r"), image_config(registry, ksdir), state_dir=state)
    try:
        d.start()
        pull(d, ref(registry, "busybox"))
        alice = d.user("alice")
        resp = alice.request(
            "POST",
            "/api/sandboxes",
            json={"image": ref(registry, "busybox"), "command": ["true"]},
        )
        body = error(resp, 500, "idmap-unsupported")
        assert "5.19" in body["message"] and "idmapped" in body["message"]
        assert holds(d, ref(registry, "busybox")) == 0
        result, out, _ = alice.run_to_end(["/bin/sh", "-c", "echo host"])
        assert (result["exit_code"], out) == (0, "host\n")
        with open(d.log_path) as fh:
            assert "OCI images cannot run on this host" in fh.read()
    finally:
        stop_daemon(d)
        subprocess.run(
            [os.path.join(os.path.dirname(SANDBOXCTL), "sandboxd"), "cleanup", "--purge"]
            + ["--instance", d.instance, "--state-dir", d.state_dir],
            capture_output=True,
        )
        syscalls.umount(state)
        shutil.rmtree(state, ignore_errors=True)
        for extra in (f"{state}.toml", f"{state}.log"):
            with contextlib.suppress(OSError):
                os.remove(extra)
