"""The notebooks in notebooks/ run top to bottom through the gateway, and say the right things.

nbclient drives jupyter_server's own gateway kernel manager and client
(``GatewayKernelManager`` / ``GatewayKernelClient``: REST to start, the channels WebSocket for
messages), which is the code a ``jupyter server --gateway-url`` runs for its in-server kernel
clients. One gap upstream: ``GatewayKernelClient.start_channels`` opens its WebSocket without
the gateway's auth header (the server's browser-facing path, ``GatewayWebSocketConnection``,
does send it), so ``TokenGatewayKernelClient`` adds the header and changes nothing else.
"""

from __future__ import annotations

import os
import re

import nbformat
import pytest
import websocket
from conftest import Client, Daemon
from jupyter_core.utils import ensure_async, run_sync
from jupyter_server.gateway.gateway_client import GatewayClient
from jupyter_server.gateway.managers import GatewayKernelClient, GatewayKernelManager
from jupyter_server.utils import url_escape, url_path_join
from nbclient import NotebookClient
from test_kernel_fixtures import kd  # noqa: F401

pytestmark = pytest.mark.root

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")


class TokenGatewayKernelClient(GatewayKernelClient):
    """jupyter_server's gateway kernel client, sending the gateway token on its WebSocket."""

    async def start_channels(
        self,
        shell: bool = True,
        iopub: bool = True,
        stdin: bool = True,
        hb: bool = True,
        control: bool = True,
    ) -> None:
        gateway = GatewayClient.instance()
        url = url_path_join(
            gateway.ws_url or "", gateway.kernels_endpoint, url_escape(self.kernel_id), "channels"
        )
        self.channel_socket = websocket.create_connection(
            url,
            timeout=gateway.KERNEL_LAUNCH_TIMEOUT,
            enable_multithread=True,
            header=[f"{gateway.auth_header_key}: {gateway.auth_scheme} {gateway.auth_token}"],
        )
        await ensure_async(
            super(GatewayKernelClient, self).start_channels(
                shell=shell, iopub=iopub, stdin=stdin, hb=hb, control=control
            )
        )
        from threading import Thread

        self.response_router = Thread(target=self._route_responses)
        self.response_router.start()


class NamedGatewayKernelManager(GatewayKernelManager):
    """Upstream's ``start_kernel`` reads the kernel name only from its keyword arguments
    (default "python3"), which nbclient does not pass; use the manager's own name."""

    async def start_kernel(self, **kwargs: object) -> None:
        kwargs.setdefault("kernel_name", self.kernel_name)
        await super().start_kernel(**kwargs)


def run_notebook(d: Daemon, client: Client, name: str, kernel_name: str = "python3") -> str:
    """Execute a notebook through the gateway; the text of all its outputs."""
    gateway = GatewayClient.instance()
    gateway.url = d.url
    gateway.auth_token = client.token
    gateway.init_connection_args()
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    km = NamedGatewayKernelManager(kernel_name=kernel_name, client_factory=TokenGatewayKernelClient)
    try:
        NotebookClient(
            nb, km=km, timeout=120, kernel_name=kernel_name, allow_errors=False
        ).execute()
    finally:
        if km.kernel_id:
            run_sync(km.shutdown_kernel)()
    assert client.call("GET", "/api/kernels") == []
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def test_isolation_tour(kd: Daemon) -> None:  # noqa: F811
    out = run_notebook(kd, kd.user("nbuser"), "isolation-tour.ipynb")
    assert "user: jovyan uid 1000" in out
    assert re.search(r"hostname: kernel-[0-9a-f]{8}-", out)
    assert "pid 1: bwrap" in out
    assert int(re.search(r"visible processes: (\d+)", out).group(1)) <= 4
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert f"{key}: 0000000000000000" in out
    assert "NoNewPrivs: 1" in out and "Seccomp: 2" in out
    assert "/etc/shadow absent" in out and "/root/.ssh absent" in out
    assert "home writable: written inside the sandbox" in out
    assert "ALLOWED" not in out
    assert out.count("refused:") == 8


def test_quotas(kd: Daemon) -> None:  # noqa: F811
    out = run_notebook(kd, kd.user("nbuser"), "quotas.ipynb")
    used = float(re.search(r"cpu used per second of wall time: ([\d.]+)", out).group(1))
    assert used < 1.3  # profile cpus = 1.0 on a host with more than one CPU
    assert "hog exit: -9 (SIGKILL)" in out
    assert "kernel still alive: yes" in out


def test_networks(kd: Daemon) -> None:  # noqa: F811
    """A kernel on its user's bridge network: what it has, and what the rules refuse."""
    out = run_notebook(kd, kd.user("nbuser"), "networks.ipynb", kernel_name="python3-net")
    assert "interfaces: eth0 lo" in out
    address = re.search(r"address: (10\.215\.\d+\.\d+)/24", out)
    gateway = re.search(r"default route via (10\.215\.\d+\.\d+)", out)
    assert address and gateway and address.group(1) != gateway.group(1)
    assert out.count("refused:") == 3 and "ALLOWED:" not in out
    assert "metadata 169.254.169.254:80 -> blocked" in out
    assert "port 22 -> blocked" in out
    assert "192.168.1.1:80 -> blocked" in out
    assert re.search(r"own server 10\.215\.\d+\.\d+:\d+ -> reachable", out)
