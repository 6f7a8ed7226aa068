"""The event loop under create/remove load: loop lag and another user's ``GET /api/status``.

Four clients create and remove bridged sandboxes (``sleep 60``, then ``DELETE ?force=1``) as
fast as they can, each as its own user; a fifth user asks ``GET /api/status`` every 20 ms.
A quiet phase (the probe alone) comes first, in the same run, as the baseline.

Loop lag comes from two places:
* ``sandboxd_event_loop_lag_seconds``, the daemon's own histogram (a 50 ms tick, how late it
  wakes), scraped before and after each phase: the share of ticks at most 5 ms late is exact
  (5 ms is a bucket bound), quantiles are interpolated inside buckets like Prometheus'
  ``histogram_quantile``;
* the probe: ``/api/status`` does no I/O, so its latency beyond the quiet median is time the
  request waited for the loop.

The machine is shared (2 cores, other test runs): a control process with the same 50 ms
asyncio tick runs throughout, and its lateness per phase is printed next to the daemon's. What
the control also sees is the machine (CPU contention), not the daemon's loop.

Targets (issue 11): loop lag p99 <= 5 ms, status p99 <= 20 ms. With ``--profile`` (py-spy
from PyPI, ``pip install py-spy``) the load phase is also sampled, and the loop thread's
busiest functions are printed: where the loop time goes.

Run as root: ``.venv/bin/python benchmarks/bench_loop.py [--seconds 60] [--profile]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

from clients import Api, ApiError, bucket_quantile, histogram, now, percentile, user
from harness import BenchDaemon, daemon

CLIENTS = 4
PROBE_INTERVAL = 0.02
LAG = "sandboxd_event_loop_lag_seconds"
CONFIG = """
stop_grace_seconds = 1
max_exited_per_user = 5

[profiles.default]
cpus = 0.25
memory = "128m"
pids = 64
disk = "32m"
network = "bridge"

[quotas.default]
max_sandboxes = 20
memory = "64g"
cpus = 64.0
"""


NETWORK = "bridge"


def churn(api: Api, stop: threading.Event, counts: list[int], errors: list[str]) -> None:
    while not stop.is_set():
        try:
            body = {"command": ["sleep", "60"], "network": NETWORK}
            sb = api.call("POST", "/api/sandboxes", json=body)
            api.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")
            counts.append(1)
        except ApiError as exc:
            errors.append(str(exc))
            time.sleep(0.1)


def probe(api: Api, stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        t0 = now()
        api.call("GET", "/api/status")
        out.append(now() - t0)
        time.sleep(max(0.0, PROBE_INTERVAL - (now() - t0)))


CONTROL = """
import asyncio, sys, time
async def main():
    loop = asyncio.get_running_loop()
    while True:
        began = loop.time()
        await asyncio.sleep(0.05)
        sys.stdout.write(f"{time.monotonic()} {max(0.0, loop.time() - began - 0.05)}\\n")
        sys.stdout.flush()
asyncio.run(main())
"""


class Control:
    """A process ticking like the daemon's lag task: the machine's own lateness, same run."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CONTROL], stdout=subprocess.PIPE, text=True
        )
        self.samples: list[tuple[float, float]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t, lag = line.split()
            self.samples.append((float(t), float(lag)))

    def between(self, t0: float, t1: float) -> list[float]:
        return [lag for t, lag in self.samples if t0 <= t <= t1]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def phase(
    d: BenchDaemon, seconds: float, load: list[Api] | None, other: Api, control: Control
) -> dict:
    before = histogram(d, LAG)
    m0 = time.monotonic()
    stop = threading.Event()
    status: list[float] = []
    counts: list[int] = []
    errors: list[str] = []
    threads = [threading.Thread(target=probe, args=(other, stop, status))]
    threads += [threading.Thread(target=churn, args=(a, stop, counts, errors)) for a in load or []]
    t0 = now()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = now() - t0
    control_lag = control.between(m0, time.monotonic())
    after = histogram(d, LAG)
    p99, ticks = bucket_quantile(before, after, 0.99)
    p50, _ = bucket_quantile(before, after, 0.50)
    at5 = dict(after)[0.005] - dict(before)[0.005]
    over = [le for (le, a), (_, b) in zip(after, before, strict=True) if a - b < ticks]
    return {
        "status": status,
        "cycles": len(counts),
        "wall": wall,
        "errors": errors,
        "lag_p50": p50,
        "lag_p99": p99,
        "ticks": ticks,
        "within5": at5 / ticks if ticks else float("nan"),
        "lag_max_bucket": max(over) if over else 0.0,
        "control": control_lag,
    }


def show(name: str, r: dict, quiet_median: float | None = None) -> None:
    s = r["status"]
    print(f"{name}:")
    if r["cycles"]:
        rate = r["cycles"] / r["wall"]
        print(f"  create+remove cycles: {r['cycles']} in {r['wall']:.1f} s ({rate:.1f}/s)")
    print(
        f"  GET /api/status (n={len(s)}): median {percentile(s, 50) * 1000:.2f} ms, "
        f"p99 {percentile(s, 99) * 1000:.2f} ms, max {max(s) * 1000:.2f} ms"
    )
    if quiet_median is not None:
        waits = [max(0.0, x - quiet_median) for x in s]
        print(
            f"  probe wait for the loop (latency - quiet median): p50 "
            f"{percentile(waits, 50) * 1000:.2f} ms, p99 {percentile(waits, 99) * 1000:.2f} ms"
        )
    print(
        f"  loop lag (histogram, {r['ticks']} ticks): p50 ~{r['lag_p50'] * 1000:.2f} ms, "
        f"p99 ~{r['lag_p99'] * 1000:.2f} ms, ticks <= 5 ms: {r['within5'] * 100:.2f} %, "
        f"worst bucket <= {r['lag_max_bucket'] * 1000:g} ms"
    )
    c = r["control"]
    if c:
        print(
            f"  control process lag (n={len(c)}): p50 {percentile(c, 50) * 1000:.2f} ms, "
            f"p99 {percentile(c, 99) * 1000:.2f} ms, <= 5 ms: "
            f"{sum(x <= 0.005 for x in c) / len(c) * 100:.2f} %"
        )
    if r["errors"]:
        print(f"  errors: {len(r['errors'])}, first: {r['errors'][0]}")


def profile(pid: int, seconds: float, gil: bool) -> subprocess.Popen[bytes] | None:
    spy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(spy):
        print("(py-spy not installed: pip install py-spy)")
        return None
    out = tempfile.NamedTemporaryFile(suffix=".txt", delete=False).name
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "250",
            "--format",
            "raw",
            "--threads",
            "--nonblocking",
            "--output",
            out,
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc.out = out  # type: ignore[attr-defined]
    return proc


def loop_profile(path: str, top: int = 25) -> None:
    """Aggregate py-spy's collapsed stacks of the loop thread (the main thread; idle excluded)."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    main_tid = None
    with open(path) as fh:
        lines = [line.rsplit(" ", 1) for line in fh if line.strip()]
    for stack, n in lines:
        thread = stack.split(";", 1)[0]
        threads[thread] += int(n)
        if main_tid is None and "MainThread" in thread:
            main_tid = thread
    for stack, n in lines:
        frames = stack.split(";")
        if frames[0] != main_tid:
            continue
        count = int(n)
        total += count
        seen = set()
        for frame in frames[1:]:
            name = frame.split(" (")[0] + " (" + frame.split(" (")[-1].split("/")[-1]
            if name not in seen:
                inclusive[name] += count
                seen.add(name)
        leaf[frames[-1].split(" (")[0] + " (" + frames[-1].split(" (")[-1].split("/")[-1]] += count
    all_samples = sum(threads.values())
    print(f"py-spy: {all_samples} busy samples, loop thread {total} ({main_tid})")
    for name, count in threads.most_common(6):
        print(f"  thread {name[:60]:<60} {count:6d}")
    print("  loop thread, inclusive (share of the loop's busy samples):")
    for name, count in inclusive.most_common(top):
        print(f"    {count / max(total, 1) * 100:5.1f} %  {name[:110]}")
    print("  loop thread, self:")
    for name, count in leaf.most_common(15):
        print(f"    {count / max(total, 1) * 100:5.1f} %  {name[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--quiet", type=float, default=15)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--network", default="bridge", help='"none" for comparison: no netlink or nft work'
    )
    parser.add_argument(
        "--gil", action="store_true", help="with --profile: sample only the GIL's holder"
    )
    args = parser.parse_args()
    global NETWORK
    NETWORK = args.network
    with daemon(CONFIG) as d:
        other = user(d, "other")
        load = [user(d, f"load{n}") for n in range(CLIENTS)]
        for api in load:  # warm up: each user's bridge and the nft table exist
            sb = api.call("POST", "/api/sandboxes", json={"command": ["true"]})
            api.call("POST", f"/api/sandboxes/{sb['id']}/wait")
            api.call("DELETE", f"/api/sandboxes/{sb['id']}")
        control = Control()
        quiet = phase(d, args.quiet, None, other, control)
        show("quiet (the probe alone)", quiet)
        spy = profile(d.pid, args.seconds, args.gil) if args.profile else None
        loaded = phase(d, args.seconds, load, other, control)
        control.close()
        show(
            f"load ({CLIENTS} clients creating and removing sandboxes, network {NETWORK})",
            loaded,
            percentile(quiet["status"], 50),
        )
        if spy is not None:
            spy.wait(timeout=args.seconds + 60)
            loop_profile(spy.out)  # type: ignore[attr-defined]
        p99 = percentile(loaded["status"], 99)
        print(
            f"targets: loop lag p99 <= 5 ms: {'met' if loaded['within5'] >= 0.99 else 'MISSED'} "
            f"({loaded['within5'] * 100:.2f} % of ticks <= 5 ms); status p99 <= 20 ms: "
            f"{'met' if p99 <= 0.020 else 'MISSED'} ({p99 * 1000:.2f} ms)"
        )


if __name__ == "__main__":
    main()
