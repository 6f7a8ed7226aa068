"""The ``sandboxd`` kernel provisioner: jupyter_client's own AsyncKernelManager, with a kernelspec
written by ``sandboxctl kernelspec install``, runs its kernel in sandboxd (no gateway mode)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile

import pytest
from conftest import SANDBOXCTL, Daemon
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from test_kernel_fixtures import kd  # noqa: F401

pytestmark = pytest.mark.root


def test_provisioner_runs_a_sandboxed_kernel(
    kd: Daemon,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gina = kd.user("gina")
    prefix = tempfile.mkdtemp(prefix="ksprefix-")
    try:
        subprocess.run(
            [SANDBOXCTL, "kernelspec", "install", "--prefix", prefix, "--name", "sbx-test"],
            env=kd.env(gina.token),
            check=True,
            capture_output=True,
        )
        kernels_dir = os.path.join(prefix, "share", "jupyter", "kernels")
        ksm = KernelSpecManager(kernel_dirs=[kernels_dir])
        spec = ksm.get_kernel_spec("sbx-test")
        assert spec.metadata["kernel_provisioner"]["provisioner_name"] == "sandboxd"
        monkeypatch.setenv("SANDBOXD_TOKEN", gina.token)

        async def scenario() -> tuple[str, list[str]]:
            km = AsyncKernelManager(kernel_name="sbx-test", kernel_spec_manager=ksm)
            await km.start_kernel()
            kc = km.client()
            kc.start_channels()
            outputs: list[str] = []
            try:
                await kc.wait_for_ready(timeout=60)
                listed = gina.call("GET", "/api/kernels")
                assert len(listed) == 1
                reply = await kc.execute_interactive(
                    "import os; print(os.getuid(), os.environ.get('SANDBOXD_SANDBOX_ID'))",
                    output_hook=lambda m: outputs.append(m["content"].get("text", "")),
                    timeout=60,
                )
                assert reply["content"]["status"] == "ok"
                return listed[0]["sandbox"], outputs
            finally:
                kc.stop_channels()
                await km.shutdown_kernel(now=True)

        sandbox, outputs = asyncio.run(scenario())
        assert "".join(outputs).split() == ["1000", sandbox]
        assert gina.call("GET", "/api/kernels") == []
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
