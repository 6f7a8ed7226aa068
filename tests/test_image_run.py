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

import json
import os
import shutil
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

pytestmark = pytest.mark.skipif(
    not layouts_ready(), reason="image fixtures missing: run `make test-images`"
)


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
    body: dict[str, Any] = {"image": image, **fields}
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
    error(alice.request("POST", "/api/sandboxes", json={}), 400)
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
    """The sandbox's idmapped layer mounts: {mount point name: (device, root in its fs)}."""
    prefix = os.path.join(d.run_dir, sb["id"], "rw", "lower") + "/"
    out = {}
    with open(f"/proc/{sb['pid']}/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            if fields[4].startswith(prefix):
                out[fields[4][len(prefix) :]] = (fields[2], fields[3])
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
