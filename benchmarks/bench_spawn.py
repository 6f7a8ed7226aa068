"""Spawn time through a real JupyterHub: SandboxSpawner against JupyterHub's own local-process
spawner (``simple``: SimpleLocalProcessSpawner, a LocalProcessSpawner that runs as the Hub's
user), measured in the same run.

One time = ``POST /hub/api/users/{name}/server`` until the Hub reports the server ready
(``GET /hub/api/users/{name}`` → ``servers[""]["ready"]``), polled every 20 ms. Each spawner gets
one warm-up spawn, then RUNS spawns of fresh users; every server is stopped before the next.
Everything runs in a network namespace of its own (the Hub, the proxy, sandboxd, the bridges).

Run as root, after ``make install`` (it needs .node's configurable-http-proxy):
``.venv/bin/python benchmarks/bench_spawn.py [RUNS]``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import requests
from harness import BIN, SANDBOXD, enter_netns

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHP = os.path.join(ROOT, ".node", "node_modules", ".bin", "configurable-http-proxy")

DAEMON = """
volume_roots = ["{volroot}"]
stop_grace_seconds = 2
[profiles.hubserver]
memory = "512m"
max_memory = "4g"
network = "bridge"
host_ports = ["tcp/{hub_port}", "tcp/{sbx_port}"]
[quotas.default]
max_sandboxes = 50
memory = "64g"
cpus = 64.0
"""

HUB = """
c = get_config()  # noqa
c.JupyterHub.bind_url = "http://127.0.0.1:{proxy_port}"
c.JupyterHub.hub_bind_url = "http://0.0.0.0:{hub_port}"
c.JupyterHub.hub_connect_url = "http://127.0.0.1:{hub_port}"
c.JupyterHub.db_url = "sqlite:///{tmp}/jupyterhub-{kind}.sqlite"
c.JupyterHub.cookie_secret_file = "{tmp}/cookie_secret"
c.JupyterHub.pid_file = "{tmp}/jupyterhub.pid"
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.auth_token = "{proxy_token}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
                             "scopes": ["admin:users", "admin:servers"]}}]
c.JupyterHub.spawner_class = "{kind}"
c.Spawner.cmd = ["{bin}/jupyterhub-singleuser"]
c.SimpleLocalProcessSpawner.home_dir_template = "{tmp}/home/{{username}}"
c.SimpleLocalProcessSpawner.args = ["--allow-root"]  # the benchmark's Hub runs as root
c.SandboxSpawner.sandboxd_url = "http://127.0.0.1:{sbx_port}"
c.SandboxSpawner.sandboxd_token = "{hub_token}"
c.SandboxSpawner.profile = "hubserver"
c.SandboxSpawner.kernels_in_own_sandboxes = True
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str) -> None:
    for _ in range(900):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited")
        try:
            if requests.get(url, timeout=1).status_code < 500:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up")


def spawn_times(kind: str, runs: int, ports: dict, tmp: str, hub_token: str) -> list[float]:
    token = secrets.token_hex(16)
    cfg = os.path.join(tmp, f"hub-{kind}.py")
    with open(cfg, "w") as fh:
        fh.write(HUB.format(kind=kind, tmp=tmp, token=token, bin=BIN, hub_token=hub_token, **ports))
    hub = subprocess.Popen(
        [os.path.join(BIN, "jupyterhub"), "-f", cfg],
        cwd=tmp,
        stdout=open(os.path.join(tmp, f"hub-{kind}.log"), "w"),
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{ports['proxy_port']}/hub/api"
    http = requests.Session()
    http.headers["Authorization"] = f"token {token}"
    try:
        wait_http(f"http://127.0.0.1:{ports['hub_port']}/hub/api/", hub, "the Hub")
        times = []
        for i in range(runs + 1):
            user = f"{kind[:4]}{i}"
            http.post(f"{api}/users/{user}", timeout=30)
            t0 = time.perf_counter()
            resp = http.post(f"{api}/users/{user}/server", timeout=120)
            assert resp.status_code in (201, 202), resp.text
            while True:
                model = http.get(f"{api}/users/{user}", timeout=30).json()
                server = model["servers"].get("")
                if server and server["ready"]:
                    break
                if not server and not model.get("pending"):
                    with open(os.path.join(tmp, f"hub-{kind}.log")) as fh:
                        log = fh.read()[-3000:]
                    raise RuntimeError(f"spawn of {user} failed:\n{log}")
                time.sleep(0.02)
            if i:  # the first one is the warm-up
                times.append(time.perf_counter() - t0)
            http.delete(f"{api}/users/{user}/server", timeout=120)
            while http.get(f"{api}/users/{user}", timeout=30).json()["servers"]:
                time.sleep(0.05)
        return times
    finally:
        http.close()
        hub.send_signal(signal.SIGTERM)
        hub.wait(timeout=60)


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    instance = "sbxb" + secrets.token_hex(2)
    enter_netns(f"{instance}-ns")
    tmp = tempfile.mkdtemp(prefix=f"{instance}-hub-")
    volroot = os.path.join(tmp, "vol")
    os.makedirs(volroot, mode=0o755)
    os.chmod(tmp, 0o755)
    ports = {k: free_port() for k in ("hub_port", "proxy_port", "proxy_api_port", "sbx_port")}
    ports["proxy_token"] = secrets.token_hex(16)
    with open(os.path.join(tmp, "sandboxd.toml"), "w") as fh:
        fh.write(DAEMON.format(volroot=volroot, **ports))
    state = os.path.join(tmp, "state")
    daemon = subprocess.Popen(
        [
            SANDBOXD,
            "serve",
            "--config",
            os.path.join(tmp, "sandboxd.toml"),
            "--instance",
            instance,
            "--listen",
            f"0.0.0.0:{ports['sbx_port']}",
            "--state-dir",
            state,
        ],
        stdout=open(os.path.join(tmp, "sandboxd.log"), "w"),
        stderr=subprocess.STDOUT,
    )
    proxy = None
    try:
        url = f"http://127.0.0.1:{ports['sbx_port']}"
        wait_http(url + "/api/openapi.json", daemon, "sandboxd")
        with open(os.path.join(state, "admin-token")) as fh:
            admin = fh.read().strip()
        hub_token = requests.post(
            url + "/api/users",
            json={"name": "hub", "service": True},
            headers={"Authorization": f"token {admin}"},
            timeout=30,
        ).json()["token"]
        proxy = subprocess.Popen(
            [
                CHP,
                "--ip",
                "127.0.0.1",
                "--port",
                str(ports["proxy_port"]),
                "--api-ip",
                "127.0.0.1",
                "--api-port",
                str(ports["proxy_api_port"]),
                "--default-target",
                f"http://127.0.0.1:{ports['hub_port']}",
            ],
            env={**os.environ, "CONFIGPROXY_AUTH_TOKEN": ports["proxy_token"]},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        results = {
            kind: spawn_times(kind, runs, ports, tmp, hub_token) for kind in ("simple", "sandboxd")
        }
        base = statistics.median(results["simple"])
        print(f"spawn time, Hub API request to server ready, median of {runs} (2-core VM):")
        for kind, label in (
            ("simple", "LocalProcessSpawner (simple)"),
            ("sandboxd", "SandboxSpawner"),
        ):
            med = statistics.median(results[kind])
            runs_ms = ", ".join(f"{t * 1000:.0f}" for t in results[kind])
            print(f"  {label:30s} {med * 1000:7.0f} ms  x{med / base:4.2f}   [{runs_ms}] ms")
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(timeout=30)
        daemon.terminate()
        daemon.wait(timeout=30)
        subprocess.run(
            [SANDBOXD, "cleanup", "--instance", instance, "--state-dir", state, "--purge"],
            capture_output=True,
        )
        subprocess.run(["ip", "netns", "delete", f"{instance}-ns"], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
