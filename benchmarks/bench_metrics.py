"""Cost of a ``/metrics`` scrape with 1, 20 and 50 running sandboxes, and series per sandbox.

Each point is the median of 10 scrapes (after 2 warm-up scrapes), measured as the wall time
of ``GET /metrics`` on loopback, which is what Prometheus records as ``scrape_duration_seconds``;
the ratio is against the 1-sandbox point of the same run. Series per sandbox counts the
sample lines that carry ``sandbox="<id>"`` (the info series included).

Run as root: ``.venv/bin/python benchmarks/bench_metrics.py``.
"""

from __future__ import annotations

import statistics

import requests
from harness import daemon, report, timed

POINTS = (1, 20, 50)
RUNS = 10
CONFIG = """
[quotas.default]
max_sandboxes = 100
memory = "64g"
cpus = 64.0

[profiles.default]
network = "none"
memory = "32m"
cpus = 0.1
pids = 16
max_cpus = 64.0
max_memory = "64g"
"""


def main() -> None:
    with daemon(CONFIG) as d:
        body = d.post("/api/users", {"name": "bench"}).json()
        headers = {"Authorization": f"token {body['token']}"}
        session = requests.Session()

        def scrape() -> str:
            resp = session.get(d.url + "/metrics", headers=d.admin_headers, timeout=30)
            resp.raise_for_status()
            return resp.text

        def status() -> None:
            session.get(d.url + "/api/status", headers=headers, timeout=30).raise_for_status()

        report("GET /api/status (HTTP + auth baseline)", timed(status, RUNS))
        ids: list[str] = []
        baseline: list[float] | None = None
        try:
            for n in POINTS:
                while len(ids) < n:
                    resp = requests.post(
                        d.url + "/api/sandboxes",
                        headers=headers,
                        timeout=60,
                        json={"command": ["sleep", "3600"]},
                    )
                    resp.raise_for_status()
                    ids.append(resp.json()["id"])
                samples = timed(scrape, RUNS)
                report(f"scrape /metrics, {n:>2} running sandboxes", samples, baseline)
                baseline = baseline or samples
                text = scrape()
                lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
                per = [sum(f'sandbox="{sid}"' in ln for ln in lines) for sid in ids]
                print(
                    f"    series total {len(lines)}, per sandbox {statistics.median(per):.0f}, "
                    f"page {len(text) / 1024:.1f} KiB",
                    flush=True,
                )
        finally:
            for sid in ids:
                requests.delete(f"{d.url}/api/sandboxes/{sid}?force=1", headers=headers, timeout=60)


if __name__ == "__main__":
    main()
