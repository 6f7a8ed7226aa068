"""JupyterHub with sandboxd: every single-user server in a sandbox, every kernel in its own.

sandboxd runs as an external service (its own systemd unit, as root); the Hub may run
unprivileged: it only talks to sandboxd's API with a *service* token. Set-up, once, as root:

    # /etc/sandboxd/sandboxd.toml: see sandboxd.toml next to this file
    systemctl enable --now sandboxd
    export SANDBOXD_TOKEN=$(cat /var/lib/sandboxd/sbx/admin-token)
    sandboxctl user add hub --service          # prints the Hub's token, store it:
    install -m 600 /dev/stdin /etc/jupyterhub/sandboxd-token <<< "<the token>"
    pip install jupyterhub jupyterhub-idle-culler sandboxd   # in the Hub's environment
    npm install -g configurable-http-proxy

The single-user server runs `jupyterhub-singleuser` *inside* the sandbox, so the image must
hold it: with the built-in "host" image that is the Python environment sandboxd itself runs
from (its venv is bound read-only into every sandbox), i.e. install jupyterhub there too; the
Jupyter images (quay.io/jupyter/*) hold it already. Users pick one of ``allowed_images`` in the
spawn form; an image sandboxd lacks is pulled on first spawn (the hubserver profile has
allow_pull), or pull it ahead: ``sandboxctl image pull quay.io/jupyter/scipy-notebook:latest``.
Kernels name their image in their kernelspec (kernels/python3-scipy: one kernelspec per image).
"""

import os
import sys

c = get_config()  # noqa: F821

HUB_PORT = 8081
SANDBOXD_PORT = 8890

# --- the Hub ------------------------------------------------------------------------------------
c.JupyterHub.bind_url = "http://:8000"  # the public proxy (put TLS in front of it)
# the servers reach the Hub's API at the gateway of their user's bridge, so the Hub binds
# there as well (sandboxd's nft input chain lets only the hubserver profile's sandboxes in,
# and only on the ports listed in its host_ports); the proxy uses loopback
c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{HUB_PORT}"
c.JupyterHub.hub_connect_url = f"http://127.0.0.1:{HUB_PORT}"
c.JupyterHub.allow_named_servers = True
c.JupyterHub.cleanup_servers = False  # a Hub restart keeps servers running (found via state)

# --- the spawner --------------------------------------------------------------------------------
c.JupyterHub.spawner_class = "sandboxd"  # entry point of sandboxd.hub.spawner.SandboxSpawner
c.SandboxSpawner.sandboxd_url = f"http://127.0.0.1:{SANDBOXD_PORT}"
c.SandboxSpawner.sandboxd_token_file = "/etc/jupyterhub/sandboxd-token"
c.SandboxSpawner.profile = "hubserver"  # bridge network + the Hub's and sandboxd's ports
c.SandboxSpawner.cmd = ["/opt/sandboxd/venv/bin/jupyterhub-singleuser"]
c.SandboxSpawner.allowed_images = {  # the spawn form's choice (DockerSpawner's rule)
    "Built-in (the host's Python)": "host",
    "Jupyter scipy-notebook": "quay.io/jupyter/scipy-notebook:latest",
}
c.SandboxSpawner.image_cmd = ["jupyterhub-singleuser"]  # on the image's PATH
c.SandboxSpawner.mem_limit = "2G"  # each server and each kernel (cgroup memory.max)
c.SandboxSpawner.cpu_limit = 1.0  # each server and each kernel (CFS quota)
c.SandboxSpawner.volumes = {"home": "/home/jovyan"}  # <volume root>/<user>/home, persistent
c.SandboxSpawner.kernels_in_own_sandboxes = True
c.SandboxSpawner.delete_volumes_on_delete = False  # deleting a user keeps their home
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 60

# --- the idle culler (a Hub-managed service) -------------------------------------------------
c.JupyterHub.load_roles = [
    {
        "name": "jupyterhub-idle-culler-role",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["jupyterhub-idle-culler-service"],
    }
]
c.JupyterHub.services = [
    {
        "name": "jupyterhub-idle-culler-service",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=3600"],
    }
]

# --- who may log in -----------------------------------------------------------------------------
if os.environ.get("JUPYTERHUB_DEMO"):  # a local try-out: any name, no password
    c.JupyterHub.authenticator_class = "dummy"
    c.Authenticator.allow_all = True
