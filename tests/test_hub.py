"""SandboxSpawner end to end: a real JupyterHub (PyPI), a real configurable-http-proxy (npm),
DummyAuthenticator, real single-user servers in sandboxes and real kernels through sandboxd's
gateway. Everything runs in the pytest process's own network namespace: the Hub, the proxy and
sandboxd listen there, the users' bridges live there; no other address is ever contacted.

The tests share one Hub and run in order (they follow one story: alice spawns, works, stops,
starts again, the Hub dies and comes back; bob tries to reach her; carol is over quota).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import websocket
from conftest import (
    BIN,
    ROOT,
    Client,
    Daemon,
    free_port,
    make_daemon,
    other_instance,
    stop_daemon,
)
from image_registry import Registry, hub_layout_ready

pytestmark = pytest.mark.root

CHP = os.path.join(ROOT, ".node", "node_modules", ".bin", "configurable-http-proxy")
JUPYTERHUB = os.path.join(BIN, "jupyterhub")
MEM_LIMIT = 256 * 1024 * 1024
STEPS = ("sandboxd user ", "volumes ready", "network ", "sandbox ", "server answering")

DAEMON_CONFIG = """
volume_roots = ["{volroot}"]
kernelspec_dirs = ["{ksdir}"]
stop_grace_seconds = 2
log_max_bytes = 262144

[profiles.default]            # kernels: on the user's bridge, no host port at all
cpus = 1.0
memory = "512m"
pids = 256
disk = "256m"
max_memory = "4g"
network = "bridge"

[profiles.hubserver]          # single-user servers: may reach the Hub's API and sandboxd
cpus = 1.0
memory = "512m"
pids = 256
disk = "256m"
max_memory = "4g"
network = "bridge"
host_ports = ["tcp/{hub_port}", "tcp/{sbx_port}"]
allow_pull = true             # a server's image is pulled on first spawn

[images]
allowed_registries = ["{registry}"]

[images.registries."{registry}"]
insecure = true

[quotas.default]
max_sandboxes = 12
memory = "8g"
cpus = 8.0

[network]
pool = "10.216.0.0/16"      # daemons sharing the test netns need pools of their own
"""

HUB_CONFIG = """
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{proxy_port}"
c.JupyterHub.hub_bind_url = "http://0.0.0.0:{hub_port}"
c.JupyterHub.hub_connect_url = "http://127.0.0.1:{hub_port}"
c.JupyterHub.db_url = "sqlite:///{tmp}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/cookie_secret"
c.JupyterHub.pid_file = "{tmp}/jupyterhub.pid"
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.JupyterHub.allow_named_servers = True
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = "{proxy_token}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "tester", "api_token": "{tester_token}"}}]
c.JupyterHub.load_roles = [{{
    "name": "tester", "services": ["tester"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens"],
}}]
c.JupyterHub.spawner_class = "sandboxd"
c.SandboxSpawner.sandboxd_url = "http://127.0.0.1:{sbx_port}"
c.SandboxSpawner.sandboxd_token = "{hub_token}"
c.SandboxSpawner.profile = "hubserver"
c.SandboxSpawner.cmd = ["{bin}/jupyterhub-singleuser"]
c.SandboxSpawner.mem_limit = {mem_limit}
c.SandboxSpawner.delete_volumes_on_delete = True
c.SandboxSpawner.allowed_images = {{"host": "host", "jupyter": "{registry}/jupyter/hub:1"}}
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 60
"""


@dataclass
class HubEnv:
    daemon: Daemon
    volroot: str
    tmp: str
    hub_port: int
    proxy_port: int
    proxy_api_port: int
    tester_token: str
    hub_cmd: list[str]
    hub: subprocess.Popen[bytes] | None = None
    proxy: subprocess.Popen[bytes] | None = None
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def public(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def api(self, method: str, path: str, expect: tuple[int, ...] = (200, 201), **kw: Any) -> Any:
        resp = self.http.request(
            method,
            f"{self.public}/hub/api{path}",
            timeout=60,
            headers={"Authorization": f"token {self.tester_token}"},
            **kw,
        )
        assert resp.status_code in expect, (method, path, resp.status_code, resp.text[:2000])
        return resp.json() if resp.content else None

    def server(self, user: str, path: str, method: str = "GET", **kw: Any) -> requests.Response:
        """A request to ``user``'s single-user server through the proxy."""
        return self.http.request(
            method,
            f"{self.public}/user/{user}/{path}",
            timeout=60,
            headers={"Authorization": f"token {self.tester_token}"},
            **kw,
        )

    def start_hub(self) -> None:
        log = open(os.path.join(self.tmp, "jupyterhub.log"), "ab")
        self.hub = subprocess.Popen(
            self.hub_cmd, cwd=self.tmp, stdout=log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.hub.poll() is None, self.hub_log()
            try:
                if requests.get(f"{self.public}/hub/api/", timeout=2).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError("the Hub did not come up:\n" + self.hub_log())

    def hub_log(self) -> str:
        with open(os.path.join(self.tmp, "jupyterhub.log"), errors="replace") as fh:
            return fh.read()[-6000:]


def _kill(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    """A registry in the test netns holding the single-user server image (built from Debian's
    jupyterhub by ``tests/fixtures/build-images.sh``)."""
    assert hub_layout_ready(), "the hub image fixture is missing: run `make test-images`"
    reg = Registry("none")
    try:
        reg.push("hub", "jupyter/hub:1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="module")
def env(registry: Registry) -> Iterator[HubEnv]:
    assert os.access(CHP, os.X_OK), f"{CHP} is missing: run `make install` (npm)"
    assert os.access(JUPYTERHUB, os.X_OK), "jupyterhub is missing: pip install -e '.[test]'"
    tmp = tempfile.mkdtemp(prefix="sbxhub-")
    volroot = tempfile.mkdtemp(prefix="sbxhub-vol-")
    os.chmod(volroot, 0o755)
    ksdir = os.path.join(tmp, "kernels")
    os.makedirs(os.path.join(ksdir, "python3"))
    with open(os.path.join(ksdir, "python3", "kernel.json"), "w") as fh:
        json.dump(
            {
                "argv": ["python3", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (own sandbox, home)",
                "language": "python",
                "metadata": {
                    "sandboxd": {
                        "profile": "default",
                        "volumes": ["home:/home/jovyan"],
                    }
                },
            },
            fh,
        )
    hub_port, proxy_port, proxy_api_port = free_port(), free_port(), free_port()
    d = make_daemon(other_instance("h"))
    with open(d.config_path, "w") as fh:
        fh.write(
            DAEMON_CONFIG.format(
                volroot=volroot,
                ksdir=ksdir,
                hub_port=hub_port,
                sbx_port=d.port,
                registry=registry.host,
            )
        )
    env = None
    try:
        # every address of the test netns: server sandboxes reach sandboxd's gateway API
        # at their bridge's gateway (their profile allows that port)
        d.start(listen_host="0.0.0.0")
        hub_token = d.admin.call("POST", "/api/users", json={"name": "hub", "service": True})[
            "token"
        ]
        proxy_token, tester_token = secrets.token_hex(16), secrets.token_hex(16)
        with open(os.path.join(tmp, "jupyterhub_config.py"), "w") as fh:
            fh.write(
                HUB_CONFIG.format(
                    proxy_port=proxy_port,
                    hub_port=hub_port,
                    tmp=tmp,
                    proxy_api_port=proxy_api_port,
                    proxy_token=proxy_token,
                    tester_token=tester_token,
                    sbx_port=d.port,
                    hub_token=hub_token,
                    bin=BIN,
                    mem_limit=MEM_LIMIT,
                    registry=registry.host,
                )
            )
        env = HubEnv(
            daemon=d,
            volroot=volroot,
            tmp=tmp,
            hub_port=hub_port,
            proxy_port=proxy_port,
            proxy_api_port=proxy_api_port,
            tester_token=tester_token,
            hub_cmd=[JUPYTERHUB, "-f", os.path.join(tmp, "jupyterhub_config.py")],
        )
        env.proxy = subprocess.Popen(
            [
                CHP,
                "--ip",
                "127.0.0.1",
                "--port",
                str(proxy_port),
                "--api-ip",
                "127.0.0.1",
                "--api-port",
                str(proxy_api_port),
                "--default-target",
                f"http://127.0.0.1:{hub_port}",
                "--error-target",
                f"http://127.0.0.1:{hub_port}/hub/error",
            ],
            env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": proxy_token},
            stdout=open(os.path.join(tmp, "proxy.log"), "ab"),
            stderr=subprocess.STDOUT,
        )
        env.start_hub()
        yield env
    finally:
        if env is not None:
            _kill(env.hub)  # cleanup_servers: the Hub stops every server through the spawner
            _kill(env.proxy)
            env.http.close()
        for user in ("alice", "bob", "carol", "dave", "erin", "hub"):
            try:
                d.admin.call("DELETE", f"/api/users/{user}")
            except Exception:
                pass
        stop_daemon(d)
        for name in ("jupyterhub.log", "proxy.log"):  # kept next to the daemon's log
            if os.path.exists(os.path.join(tmp, name)):
                shutil.copy(os.path.join(tmp, name), f"{d.state_dir}.{name}")
        shutil.rmtree(volroot, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


# helpers ---------------------------------------------------------------------------------------


def wait_for_process(sandbox_id: str, word: bytes) -> tuple[int, list[bytes]]:
    """(host uid, argv) of a Python process of the sandbox whose command line holds ``word``
    (found by its cgroup: other daemons' tenants may have the same uids)."""

    def find() -> tuple[int, list[bytes]] | None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cgroup") as fh:
                    if f"/{sandbox_id}" not in fh.read():
                        continue
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    argv = fh.read().split(b"\0")
                uid = os.stat(f"/proc/{pid}").st_uid
            except OSError:
                continue
            if word in b" ".join(argv) and b"python" in os.path.basename(argv[0]):
                return uid, argv
        return None

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = find()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"no process of sandbox {sandbox_id} runs {word!r}")


def spawn(env: HubEnv, user: str, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Ask the Hub for ``user``'s server (with user ``options``) and follow its progress
    stream; the events seen."""
    env.api("POST", f"/users/{user}", expect=(201, 409))
    env.api("POST", f"/users/{user}/server", expect=(201, 202), json=options or None)
    resp = env.http.get(
        f"{env.public}/hub/api/users/{user}/server/progress",
        stream=True,
        timeout=180,
        headers={"Authorization": f"token {env.tester_token}"},
    )
    events = []
    for line in resp.iter_lines(decode_unicode=True):
        if line and line.startswith("data:"):
            event = json.loads(line[5:])
            events.append(event)
            if event.get("ready") or event.get("failed"):
                break
    resp.close()
    return events


def wait_stopped(env: HubEnv, user: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        model = env.api("GET", f"/users/{user}")
        if not model["servers"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"{user}'s server did not stop")


def sandboxes(env: HubEnv, user: str, kind: str | None = None) -> list[dict[str, Any]]:
    out = env.daemon.admin.call("GET", "/api/sandboxes")
    return [s for s in out if s["user"] == user and (kind is None or s["kind"] == kind)]


def server_sandbox(env: HubEnv, user: str) -> dict[str, Any]:
    found = [s for s in sandboxes(env, user) if s["labels"].get("managed-by") == "jupyterhub"]
    assert len(found) == 1, found
    return found[0]


def start_kernel(env: HubEnv, user: str) -> str:
    resp = env.server(user, "api/kernels", "POST", json={"name": "python3"})
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


def run_code(
    env: HubEnv, user: str, kernel_id: str, code: str, timeout: float = 60
) -> tuple[str, dict[str, Any] | None]:
    """Execute ``code`` over the server's kernel WebSocket; (stdout text, error content)."""
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{env.proxy_port}/user/{user}/api/kernels/{kernel_id}/channels",
        header=[f"Authorization: token {env.tester_token}"],
        timeout=timeout,
    )
    msg_id = uuid.uuid4().hex
    ws.send(
        json.dumps(
            {
                "channel": "shell",
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": user,
                    "session": uuid.uuid4().hex,
                    "version": "5.3",
                    "date": "",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
            }
        )
    )
    out, error = [], None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream":
                out.append(msg["content"]["text"])
            elif kind == "error":
                error = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out), error
    finally:
        ws.close()
    raise AssertionError(f"no reply from kernel {kernel_id}: {''.join(out)}")


PROBE = """
import json, socket
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    ip, port = target.rsplit(":", 1)
    try:
        socket.create_connection((ip, int(port)), timeout=2).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "unreachable"
targets = {targets!r}
with ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(dict(zip(targets, pool.map(probe, targets)))))
"""


def probe(env: HubEnv, user: str, kernel_id: str, targets: list[str]) -> dict[str, str]:
    out, error = run_code(env, user, kernel_id, PROBE.format(targets=targets))
    assert error is None, error
    return json.loads(out.strip().splitlines()[-1])


# the story -------------------------------------------------------------------------------------


def test_alice_spawns_with_progress_and_runs_a_kernel_in_its_own_sandbox(env: HubEnv) -> None:
    events = spawn(env, "alice")
    assert events[-1].get("ready"), events
    messages = [e["message"] for e in events]
    # every step of the spawner, in order, with progress never going back
    positions = [next((i for i, m in enumerate(messages) if m.startswith(s)), -1) for s in STEPS]
    assert positions == sorted(positions) and messages[0] == "Server requested", messages
    progress = [e["progress"] for e in events if "progress" in e]
    assert progress == sorted(progress), events

    assert env.server("alice", "api/status").status_code == 200
    server = server_sandbox(env, "alice")
    assert server["state"] == "running" and server["profile"] == "hubserver"
    assert server["limits"]["memory"] == MEM_LIMIT

    kid = start_kernel(env, "alice")
    out, error = run_code(
        env,
        "alice",
        kid,
        (
            "import os, socket\n"
            "open('/home/jovyan/from_kernel.txt', 'w').write('written by the kernel')\n"
            "print(socket.gethostname(), sorted(os.listdir('/home/jovyan')))"
        ),
    )
    assert error is None, error
    assert "from_kernel.txt" in out

    # the kernel is a sandbox of alice's own, not the server's
    kernel = env.daemon.admin.call("GET", f"/api/kernels/{kid}")
    assert kernel["user"] == "alice"
    assert kernel["sandbox"] != server["id"]
    ksb = env.daemon.admin.call("GET", f"/api/sandboxes/{kernel['sandbox']}")
    assert ksb["kind"] == "kernel" and ksb["user"] == "alice" and ksb["state"] == "running"
    assert ksb["limits"]["memory"] == MEM_LIMIT  # mem_limit applies to every kernel too
    # ... that sees her home: the same host directory as the server's
    home = os.path.join(env.volroot, "alice", "home")
    assert [(v["name"], v["container"]) for v in ksb["volumes"]] == [("home", "/home/jovyan")]
    assert [(v["name"], v["container"]) for v in server["volumes"]] == [("home", "/home/jovyan")]
    with open(os.path.join(home, "from_kernel.txt")) as fh:
        assert fh.read() == "written by the kernel"
    alice_uid = env.daemon.admin.call("GET", "/api/users/alice")["uid"]
    assert os.stat(home).st_uid == alice_uid
    assert os.stat(os.path.join(home, "from_kernel.txt")).st_uid == alice_uid
    assert os.stat(home).st_mode & 0o077 == 0


def test_home_persists_across_stop_and_start(env: HubEnv) -> None:
    first = server_sandbox(env, "alice")
    env.api("DELETE", "/users/alice/server", expect=(202, 204))
    wait_stopped(env, "alice")
    assert sandboxes(env, "alice") == []  # the server and its kernels are gone
    assert os.path.isdir(os.path.join(env.volroot, "alice", "home"))  # the home is not
    events = spawn(env, "alice")
    assert events[-1].get("ready"), events
    assert server_sandbox(env, "alice")["id"] != first["id"]
    resp = env.server("alice", "api/contents/from_kernel.txt?content=1")
    assert resp.status_code == 200, resp.text
    assert resp.json()["content"] == "written by the kernel"


def test_bob_cannot_reach_alice_nor_see_her_files(env: HubEnv) -> None:
    events = spawn(env, "bob")
    assert events[-1].get("ready"), events
    alice_kernel = start_kernel(env, "alice")
    bob_kernel = start_kernel(env, "bob")
    alice_server = server_sandbox(env, "alice")["network_settings"]
    bob_server = server_sandbox(env, "bob")["network_settings"]
    akernel_sb = env.daemon.admin.call("GET", f"/api/kernels/{alice_kernel}")["sandbox"]
    akernel = env.daemon.admin.call("GET", f"/api/sandboxes/{akernel_sb}")["network_settings"]
    assert alice_server["network"] == "default" and bob_server["gateway"] != alice_server["gateway"]
    targets = [
        f"{alice_server['address']}:8888",
        f"{akernel['address']}:9",
        f"{bob_server['address']}:8888",
        f"{bob_server['gateway']}:{env.hub_port}",
        f"{bob_server['gateway']}:{env.daemon.port}",
    ]
    seen = probe(env, "bob", bob_kernel, targets)
    assert seen == {
        targets[0]: "unreachable",  # alice's server
        targets[1]: "unreachable",  # alice's kernel (a reachable host would refuse port 9)
        targets[2]: "open",  # bob's own server, on his bridge
        targets[3]: "unreachable",  # the Hub's API: kernels reach nothing of the Hub
        targets[4]: "unreachable",  # nor sandboxd
    }, seen
    # the controls: on alice's own bridge her kernel reaches her server (and, being a kernel,
    # still not the Hub), so "unreachable" above is the policy, not a broken probe
    mine = probe(env, "alice", alice_kernel, [targets[0], f"{akernel['gateway']}:{env.hub_port}"])
    assert list(mine.values()) == ["open", "unreachable"], mine
    # bob's files are his own: nothing of alice's home, through his kernel or his server
    out, error = run_code(
        env, "bob", bob_kernel, "import os; print(sorted(os.listdir('/home/jovyan')))"
    )
    assert error is None and "from_kernel.txt" not in out, (out, error)
    assert env.server("bob", "api/contents/from_kernel.txt").status_code == 404
    bob_server = server_sandbox(env, "bob")
    assert bob_server["user"] == "bob"
    assert [v["name"] for v in bob_server["volumes"]] == ["home"]


def test_kernel_oom_kills_the_kernel_only(env: HubEnv) -> None:
    kid = start_kernel(env, "alice")
    sid = env.daemon.admin.call("GET", f"/api/kernels/{kid}")["sandbox"]
    server = server_sandbox(env, "alice")
    try:
        run_code(env, "alice", kid, f"x = b'x' * {2 * MEM_LIMIT}\nprint('survived')", timeout=20)
    except Exception:
        pass  # the channel may end with the kernel
    result = env.daemon.admin.call("POST", f"/api/sandboxes/{sid}/wait")
    assert result["oom_killed"] is True, result
    assert env.daemon.admin.call("GET", f"/api/kernels/{kid}")["execution_state"] == "dead"
    # alice's server is untouched and still answers
    assert env.daemon.admin.call("GET", f"/api/sandboxes/{server['id']}")["state"] == "running"
    assert env.server("alice", "api/status").status_code == 200


def test_hub_restart_finds_running_servers(env: HubEnv) -> None:
    before = server_sandbox(env, "alice")
    _kill(env.hub, signal.SIGKILL)
    env.start_hub()
    model = env.api("GET", "/users/alice")
    assert model["servers"][""]["ready"] is True, model
    assert env.server("alice", "api/status").status_code == 200
    assert server_sandbox(env, "alice")["id"] == before["id"]  # the same sandbox, via load_state


def test_named_server_is_a_sandbox_of_its_own(env: HubEnv) -> None:
    default = server_sandbox(env, "alice")
    env.api("POST", "/users/alice/servers/lab", expect=(201, 202))
    resp = env.http.get(
        f"{env.public}/hub/api/users/alice/servers/lab/progress",
        stream=True,
        timeout=180,
        headers={"Authorization": f"token {env.tester_token}"},
    )
    events = [
        json.loads(line[5:])
        for line in resp.iter_lines(decode_unicode=True)
        if line and line.startswith("data:")
    ]
    resp.close()
    assert events[-1].get("ready"), events
    servers = [s for s in sandboxes(env, "alice") if s["labels"].get("managed-by") == "jupyterhub"]
    named = [s for s in servers if s["id"] != default["id"]]
    assert len(servers) == 2 and len(named) == 1, servers
    assert named[0]["name"] == "jupyter-alice-lab" and named[0]["state"] == "running"
    assert env.server("alice", "lab/api/status").status_code == 200
    assert env.server("alice", "api/status").status_code == 200  # the default one lives on
    env.api("DELETE", "/users/alice/servers/lab", expect=(202, 204), json={"remove": True})
    deadline = time.monotonic() + 60
    while any(s["id"] == named[0]["id"] for s in sandboxes(env, "alice")):
        assert time.monotonic() < deadline, sandboxes(env, "alice")
        time.sleep(0.2)
    assert server_sandbox(env, "alice")["id"] == default["id"]


def test_a_server_from_an_image_pulled_on_first_spawn(env: HubEnv, registry: Registry) -> None:
    """dave picks the "jupyter" image (allowed_images): sandboxd lacks it, so the spawner pulls
    it with his token and reports each layer; his server is the image's jupyterhub-singleuser
    (Entrypoint tini, user jovyan from the image's passwd), answering through the proxy."""
    image = f"{registry.host}/jupyter/hub:1"
    events = spawn(env, "dave", {"image": "jupyter"})
    assert events[-1].get("ready"), events
    messages = [e["message"] for e in events]
    assert "pulling image: 2 of 2 layers" in messages, messages
    assert messages.index("pulling image: 2 of 2 layers") < next(
        i for i, m in enumerate(messages) if m.startswith("sandbox ")
    )
    progress = [e["progress"] for e in events if "progress" in e]
    assert progress == sorted(progress), events
    server = server_sandbox(env, "dave")
    model = env.daemon.admin.call("GET", f"/api/images/{image.replace('/', '%2F')}")
    assert server["image"] == image and server["image_id"] == model["id"]
    assert server["command"][:4] == ["tini", "-g", "--", "jupyterhub-singleuser"]
    assert model["sandboxes"] == 1
    resp = env.server("dave", "api/status")
    assert resp.status_code == 200, resp.text
    # the server is the image's Python running the image's jupyterhub-singleuser, as dave
    uid, argv = wait_for_process(server["id"], b"jupyterhub-singleuser")
    assert argv[0] == b"/usr/bin/python3" and argv[1] == b"/usr/bin/jupyterhub-singleuser", argv
    assert uid == env.daemon.admin.call("GET", "/api/users/dave")["uid"]
    # its kernels, through sandboxd's gateway, are sandboxes of dave's own
    kid = start_kernel(env, "dave")
    out, error = run_code(env, "dave", kid, "import sys; print('kernel', sys.version_info[0])")
    assert error is None and out.strip() == "kernel 3", (out, error)
    assert env.daemon.admin.call("GET", f"/api/kernels/{kid}")["user"] == "dave"
    env.api("DELETE", "/users/dave/server", expect=(202, 204))
    wait_stopped(env, "dave")
    assert (
        env.daemon.admin.call("GET", f"/api/images/{image.replace('/', '%2F')}")["sandboxes"] == 0
    )


def test_an_image_not_allowed_is_refused_with_the_reason(env: HubEnv) -> None:
    events = spawn(env, "erin", {"image": "quay.io/evil/miner:latest"})
    assert events[-1].get("failed"), events
    assert "not allowed" in events[-1]["message"] and "jupyter" in events[-1]["message"]
    assert sandboxes(env, "erin") == []


def test_quota_refusal_is_a_spawn_failure_with_the_reason(env: HubEnv) -> None:
    env.daemon.admin.call("POST", "/api/users", json={"name": "carol"})
    env.daemon.admin.call("PUT", "/api/users/carol/quota", json={"max_sandboxes": 0})
    events = spawn(env, "carol")
    assert events[-1].get("failed"), events
    assert "max-sandboxes" in events[-1]["message"], events[-1]
    assert "quota" in events[-1]["message"]
    assert sandboxes(env, "carol") == []
    assert env.api("GET", "/users/carol")["servers"] == {}


def test_delete_forever_removes_the_volumes(env: HubEnv) -> None:
    home = os.path.join(env.volroot, "bob", "home")
    assert os.path.isdir(home)
    env.api("DELETE", "/users/bob/server", expect=(202, 204))
    wait_stopped(env, "bob")
    env.api("DELETE", "/users/bob", expect=(204,))
    assert not os.path.exists(home)
    assert sandboxes(env, "bob") == []


def test_service_token_powers(env: HubEnv) -> None:
    """What the Hub's service token may do in sandboxd: plain users only, never admins."""
    d = env.daemon
    hub = Client(d.url, d.admin.call("POST", "/api/users/hub/tokens")["token"])
    try:
        assert (
            hub.request("POST", "/api/users", json={"name": "eve", "admin": True}).status_code
            == 403
        )
        assert hub.request("POST", "/api/users/admin/tokens").status_code == 403
        assert hub.request("PUT", "/api/users/admin/volumes/home").status_code == 404
        assert (
            hub.request(
                "POST", "/api/sandboxes", json={"command": ["true"], "user": "admin"}
            ).status_code
            == 403
        )
        alice = Client(d.url, hub.call("POST", "/api/users/alice/tokens")["token"])
        # a plain user may not act for another
        assert alice.request("PUT", "/api/users/carol/volumes/home").status_code == 404
        assert alice.request("POST", "/api/users/carol/tokens").status_code == 403
    finally:
        hub.session.close()


def test_deploy_example_loads() -> None:
    """deploy/jupyterhub: the Hub config names our spawner; the sandboxd config is valid."""
    from traitlets.config.loader import PyFileConfigLoader

    from sandboxd import config

    here = os.path.join(ROOT, "deploy", "jupyterhub")
    cfg = PyFileConfigLoader("jupyterhub_config.py", path=here).load_config()
    assert cfg.JupyterHub.spawner_class == "sandboxd"
    assert cfg.SandboxSpawner.profile == "hubserver"
    sbx = config.load(os.path.join(here, "sandboxd.toml"))
    hub_port = int(cfg.JupyterHub.hub_bind_url.rsplit(":", 1)[1])
    assert ("tcp", hub_port) in sbx.profiles["hubserver"].egress.host_ports
    assert sbx.profiles["default"].egress.host_ports == ()  # kernels: nothing of the Hub
