"""Time networking adds to sandbox creation, and nft rules per sandbox.

1. ``POST /api/sandboxes`` (returns once the command runs) of ``/bin/true`` with
   ``network: none`` against ``network: bridge`` (netns, veth, address, route, nft table
   re-applied), alternating, median of 20 each, in the same run; then the ratio.
2. Rules in the ``inet <instance>`` table with no sandbox, one bridged sandbox, and one with a
   published port: the per-sandbox cost.

Runs in a netns of its own (harness.daemon); nothing leaves it.
Run as root: ``.venv/bin/python benchmarks/bench_network.py``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time

import requests
from harness import daemon

RUNS = 20


def rules(table: str) -> int:
    """Rules in the instance's tables: ``inet`` (policy, NAT) and ``bridge`` (source guard)."""
    total = 0
    for family in ("inet", "bridge"):
        out = subprocess.run(
            ["nft", "-j", "list", "table", family, table], capture_output=True, text=True
        ).stdout
        total += sum(1 for i in json.loads(out or '{"nftables": []}')["nftables"] if "rule" in i)
    return total


def main() -> None:
    with daemon() as d:
        headers = {"Authorization": f"token {d.token}"}

        def create(network: str, **extra: object) -> tuple[float, str]:
            t0 = time.perf_counter()
            resp = d.post(
                "/api/sandboxes", {"command": ["/bin/sleep", "30"], "network": network, **extra}
            )
            took = time.perf_counter() - t0
            resp.raise_for_status()
            return took, resp.json()["id"]

        def remove(sid: str) -> None:
            requests.delete(f"{d.url}/api/sandboxes/{sid}?force=1", headers=headers, timeout=60)

        for network in ("none", "bridge", "none", "bridge"):  # warm-up; makes the network
            remove(create(network)[1])
        times: dict[str, list[float]] = {"none": [], "bridge": []}
        for _ in range(RUNS):
            for network in ("none", "bridge"):
                took, sid = create(network)
                times[network].append(took)
                remove(sid)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        print(
            f"create+start, median of {RUNS}:  none {med['none']:.1f} ms   "
            f"bridge {med['bridge']:.1f} ms   added by networking "
            f"{med['bridge'] - med['none']:.1f} ms   ratio {med['bridge'] / med['none']:.2f}"
        )

        base = rules(d.instance)
        _, one = create("bridge")
        with_one = rules(d.instance)
        _, two = create("bridge", ports=["18080:8080", "18081:8081/udp"])
        with_ports = rules(d.instance)
        remove(one)
        remove(two)
        print(
            f"nft rules: table with no sandbox {base}, +{with_one - base} per bridged sandbox, "
            f"+{(with_ports - with_one - (with_one - base)) // 2} more per published port "
            f"(prerouting + output DNAT); after removal {rules(d.instance)}"
        )


if __name__ == "__main__":
    main()
