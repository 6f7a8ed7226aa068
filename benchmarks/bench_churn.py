"""Churn at scale: create/remove cycles from 4 concurrent clients, half bridged and half with
network "none", while a fifth client starts kernels, runs code in them and stops them; then
everything the run left on the host and in the database.

Each sandbox cycle takes one of four paths (bridged or not × removed while running, or after
it exited by itself and its output was read), as in tests/test_churn.py, whose 200 cycles this
runs 1000 times by default. Reported: wall time and cycles/s, per-path latency (median, p99),
the daemon's fd count and RSS after a warm-up and after the churn (kernel socket fds close 5 s
after a kernel stops: both counts wait for that), the RSS peak, and every leftover
(``tests/resilience.py``: orphan cgroups, netns, veths, nft rules, run dirs, logs, rows).

Run as root: ``.venv/bin/python benchmarks/bench_churn.py [--cycles 1000] [--kernels 50]``.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

from clients import Api, kernel_cycle, now, percentile, resilience, user
from harness import BenchDaemon, daemon

CLIENTS = 4
CONFIG = """
stop_grace_seconds = 1
log_max_bytes = 65536
max_exited_per_user = 5

[profiles.default]
cpus = 0.5
memory = "256m"
pids = 128
disk = "64m"
network = "bridge"

[quotas.default]
max_sandboxes = 8
max_kernels = 2
memory = "16g"
cpus = 16.0
"""
PATHS = ("bridge/running", "none/running", "bridge/exited", "none/exited")


def cycle(api: Api, i: int) -> str:
    network = "bridge" if i % 2 == 0 else "none"
    if (i // 2) % 2 == 0:
        sb = api.call(
            "POST", "/api/sandboxes", json={"command": ["sleep", "60"], "network": network}
        )
        api.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
        return f"{network}/running"
    sb = api.call(
        "POST",
        "/api/sandboxes",
        json={"command": ["/bin/sh", "-c", "echo churn"], "network": network},
    )
    api.call("POST", f"/api/sandboxes/{sb['id']}/wait")
    if api.call("GET", f"/api/sandboxes/{sb['id']}/logs")["stdout"] != "churn\n":
        raise RuntimeError("lost output")
    api.call("DELETE", f"/api/sandboxes/{sb['id']}")
    return f"{network}/exited"


def steady(d: BenchDaemon, res) -> tuple[int, int]:
    """(fds, RSS) once no kernel socket fd is left and the count stopped moving."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any("/kernel-ipc-" in f for f in res.fds_of(d.pid)):
        time.sleep(0.2)
    return res.steady_fd_count(d.pid), res.rss_bytes(d.pid)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--kernels", type=int, default=50)
    args = parser.parse_args()
    res = resilience()
    with daemon(CONFIG) as d:
        apis = [user(d, f"churn{n}") for n in range(CLIENTS)]
        kapi = user(d, "churnk")
        for api in apis:
            for i in range(4):
                cycle(api, i)
        kernel_cycle(d, kapi)
        before_view = res.assert_consistent(d, "10.213.0.0/16")
        for api in [*apis, kapi]:
            api.close()
        fds0, rss0 = steady(d, res)
        peak = [rss0]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], res.rss_bytes(d.pid))
                time.sleep(0.5)

        latency: dict[str, list[float]] = defaultdict(list)
        klatency: list[float] = []
        lock = threading.Lock()

        def run(n: int) -> None:
            for i in range(args.cycles // CLIENTS):
                t0 = now()
                path = cycle(apis[n], i)
                with lock:
                    latency[path].append(now() - t0)

        def kernels() -> None:
            for _ in range(args.kernels):
                t0 = now()
                kernel_cycle(d, kapi)
                klatency.append(now() - t0)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = now()
        with ThreadPoolExecutor(CLIENTS + 1) as pool:
            futures = [pool.submit(run, n) for n in range(CLIENTS)] + [pool.submit(kernels)]
            for f in futures:
                f.result()
        wall = now() - t0
        stop.set()
        view = res.settle(d, "10.213.0.0/16")
        for api in [*apis, kapi]:
            api.close()
        fds1, rss1 = steady(d, res)

        done = sum(len(v) for v in latency.values())
        print(f"churn: {done} sandbox cycles ({CLIENTS} clients) + {len(klatency)} kernel cycles")
        print(f"  wall {wall:.1f} s, {done / wall:.1f} sandbox cycles/s")
        for path in PATHS:
            s = latency[path]
            print(
                f"  {path:<16} n={len(s):4d}  median {percentile(s, 50) * 1000:7.1f} ms  "
                f"p99 {percentile(s, 99) * 1000:7.1f} ms"
            )
        print(
            f"  kernel start+execute+stop  n={len(klatency)}  median "
            f"{percentile(klatency, 50):.2f} s  p99 {percentile(klatency, 99):.2f} s"
        )
        print(f"  daemon fds: {fds0} after warm-up -> {fds1} after churn")
        print(
            f"  daemon RSS: {rss0 / 2**20:.1f} MiB -> {rss1 / 2**20:.1f} MiB "
            f"(peak {peak[0] / 2**20:.1f}, growth {(rss1 - rss0) / 2**20:+.1f} MiB)"
        )
        problems = view.problems()
        left = {
            "rows": len(view.sandboxes) + len(view.kernels) + len(view.attachments),
            "cgroups": len(view.cgroups),
            "netns": len(view.netns),
            "veths": len(view.veths),
            "run dirs": len(view.rundirs),
            "logs": len(view.logs),
            "processes": len(view.procs),
            "nft table changed": int(view.nft_text != before_view.nft_text),
        }
        print("  left over: " + ", ".join(f"{k} {v}" for k, v in left.items()))
        print(f"  inconsistencies: {problems or 'none'}")


if __name__ == "__main__":
    main()
