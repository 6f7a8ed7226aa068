"""Engine start-up cost, measured against plain bubblewrap in the same run.

1. ``sandboxctl run --rm -- /bin/true`` (CLI process, HTTP, create, attach, exit, delete)
   against ``bwrap --unshare-all … /bin/true`` run by an unprivileged uid: median of 20, ratio.
2. Daemon-side create+start: ``POST /api/sandboxes`` until the command is running
   (``--network none``), median of 20; the handler's own time is read from the access log.

Run as root: ``.venv/bin/python benchmarks/bench_engine.py``.
"""

from __future__ import annotations

import re
import statistics
import subprocess

import requests
from harness import SANDBOXCTL, daemon, report, timed

BWRAP = [
    "bwrap",
    "--unshare-all",
    "--die-with-parent",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/lib64",
    "/lib64",
    "--symlink",
    "usr/bin",
    "/bin",
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "/bin/true",
]
RUNS = 20
CONFIG = """
[quotas.default]
max_sandboxes = 100
memory = "64g"
cpus = 64.0

[profiles.default]
network = "none"
memory = "64m"
cpus = 0.5
max_cpus = 64.0
max_memory = "64g"
"""


def bare_bwrap() -> None:
    subprocess.run(BWRAP, check=True, user=65534, group=65534, extra_groups=[])


def main() -> None:
    baseline = timed(bare_bwrap, RUNS)
    report("bwrap --unshare-all /bin/true (baseline)", baseline)
    with daemon(CONFIG) as d:
        env = d.env()

        def ctl_true() -> None:
            subprocess.run([SANDBOXCTL, "run", "--rm", "--", "/bin/true"], env=env, check=True)

        report("sandboxctl run --rm -- /bin/true", timed(ctl_true, RUNS), baseline)

        created: list[str] = []

        def create() -> None:
            resp = d.post("/api/sandboxes", {"command": ["sleep", "30"], "network": "none"})
            resp.raise_for_status()
            created.append(resp.json()["id"])

        samples = timed(create, RUNS)
        report("POST /api/sandboxes → running (client side)", samples, baseline)
        for sid in created:
            requests.delete(
                f"{d.url}/api/sandboxes/{sid}?force=1",
                headers={"Authorization": f"token {d.token}"},
                timeout=60,
            )
        with open(d.state + ".log") as fh:
            server = [
                float(m) for m in re.findall(r"201 POST /api/sandboxes .*?([\d.]+)ms", fh.read())
            ]
        if server:
            server = server[-RUNS:]
            print(
                f"{'daemon-side create+start (access log)':<48} median "
                f"{statistics.median(server):8.2f} ms  (n={len(server)})"
            )


if __name__ == "__main__":
    main()
