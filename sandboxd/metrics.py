"""Every Prometheus metric sandboxd exposes, defined in this one module.

Why one module: names, labels and units are a public contract (dashboards and alert rules
depend on them), so they are reviewed in one place. The conventions, from
``shared/reference/metrics.md``:

* Prefix ``sandboxd_``; base units (seconds, bytes); counters end in ``_total``; ``_info``
  gauges carry descriptive labels and are joined in PromQL
  (``* on(instance, sandbox) group_left(user) sandboxd_sandbox_info``), so the numeric
  per-sandbox series carry only the ``sandbox`` label (the id, bounded by live sandboxes).
* Per-sandbox quantities follow cAdvisor's meaning (``container_*`` → ``sandboxd_sandbox_*``):
  working set = usage − inactive_file, rss = anon, cache = file, CFS periods when a CPU quota
  is set. Per-CPU, per-device and per-interface labels are left off on purpose.
* Per-sandbox, per-user and build series are computed at scrape time by ``DaemonCollector``
  from cgroupfs, the veth counters and the state store, with no timestamps: a removed
  sandbox's series are simply absent from the next scrape, and Prometheus marks them stale
  at once (cAdvisor's timestamps make them linger five minutes; we avoid that).
* Event metrics (start durations, refusals, request durations, kernel lifecycle) are
  ordinary ``prometheus_client`` objects updated where the event happens; every enum label
  value is pre-created so ``{outcome="failure"}`` exists before the first failure.
* Everything lives in the daemon's one process (no multiprocess mode: custom collectors do
  not work there).

Per-user counters that must survive their sandboxes (OOM kills) are kept here in memory:
a sandbox's cgroup, and so its ``sandboxd_sandbox_oom_kills_total``, is gone once it exits,
so ``sandbox_exited`` moves its final count into the user's tally. The user counter is
``tally + Σ live sandboxes' counts``, monotonic across the hand-over. It restarts from 0 when
the daemon restarts, which ``rate()``/``increase()`` treat as a counter reset.
"""

from __future__ import annotations

import platform
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from . import __version__
from .errors import ADMISSION_REFUSALS, Reason

if TYPE_CHECKING:
    from .runtime.sandbox import Exit
    from .spec import SandboxSpec

# ``_created`` series double the counter count and no dashboard uses them.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

KINDS = ("sandbox", "kernel", "server")
START_OUTCOMES = ("success", "failure", "refused")
EXIT_OUTCOMES = ("success", "error", "oom_killed")
KERNEL_EVENTS = ("started", "stopped", "culled", "failed", "restarted", "died", "oom_killed")
DROP_REASONS = ("bad-signature", "malformed", "rate-limited", "unrouted", "too-large")
RESOURCE_REASONS = (
    Reason.ZMQ_SOCKETS,
    Reason.MAX_WEBSOCKETS,
    Reason.BODY_TOO_LARGE,
    Reason.STDIN_FULL,
)
#: Refusal reasons raised by admission (``QuotaExceeded``/``Forbidden``), pre-created per user.
REFUSAL_REASONS = ADMISSION_REFUSALS
#: 10 ms .. 60 s: a cold bwrap start is ~20 ms, a kernel with imports a few seconds.
START_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)
#: 100 ms .. 30 min: a cached small image resolves in well under a second, a big one takes minutes.
PULL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
IMAGE_SOURCES = ("pull", "load")
PULL_OUTCOMES = ("success", "failure")
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REGISTRY = CollectorRegistry(auto_describe=True)
REGISTRY.register(ProcessCollector(registry=None))

START_DURATION = Histogram(
    "sandboxd_sandbox_start_duration_seconds",
    "Time from admission to a running sandbox, by kind and outcome "
    "(success | failure: the host failed | refused: a 4xx, the request's fault).",
    ["kind", "outcome"],
    buckets=START_BUCKETS,
    registry=REGISTRY,
)
EXITS = Counter(
    "sandboxd_sandbox_exits_total",
    "Sandboxes that ended, by kind and outcome (success = exit 0, oom_killed, error).",
    ["kind", "outcome"],
    registry=REGISTRY,
)
KERNEL_STARTS = Counter(
    "sandboxd_kernel_starts_total", "Kernels started and ready.", registry=REGISTRY
)
KERNEL_STOPS = Counter(
    "sandboxd_kernel_stops_total", "Kernels shut down on request.", registry=REGISTRY
)
KERNEL_CULLS = Counter("sandboxd_kernel_culls_total", "Idle kernels culled.", registry=REGISTRY)
KERNEL_FAILURES = Counter(
    "sandboxd_kernel_failures_total",
    "Kernels that failed to start (the host's fault) or died unexpectedly (OOM included).",
    registry=REGISTRY,
)
KERNEL_RESTARTS = Counter(
    "sandboxd_kernel_restarts_total", "Kernels restarted on request.", registry=REGISTRY
)
KERNEL_DEATHS = Counter(
    "sandboxd_kernel_deaths_total",
    "Kernels whose process died on its own, by cause (oom_killed | died).",
    ["cause"],
    registry=REGISTRY,
)
KERNEL_DROPPED = Counter(
    "sandboxd_kernel_messages_dropped_total",
    "Messages from kernels dropped: a bad HMAC signature (not this kernel's key) or malformed.",
    ["reason"],
    registry=REGISTRY,
)
RESOURCE_REFUSALS = Counter(
    "sandboxd_resource_refusals_total",
    "Requests refused because a daemon-wide bound was reached, by bound.",
    ["reason"],
    registry=REGISTRY,
)
LOOP_LAG = Histogram(
    "sandboxd_event_loop_lag_seconds",
    "How late the event loop's 50 ms tick wakes: time the loop was busy or blocked.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
    registry=REGISTRY,
)
LANE_WAITING = Gauge(
    "sandboxd_blocking_queue_depth",
    "Blocking calls waiting for a thread of their lane (io: files and cgroups; net: netlink/nft).",
    ["lane"],
    registry=REGISTRY,
)
LANE_RUNNING = Gauge(
    "sandboxd_blocking_running",
    "Blocking calls running now, by lane.",
    ["lane"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "sandboxd_http_request_duration_seconds",
    "API request duration by handler class (not URL, to bound cardinality), method and code.",
    ["handler", "method", "code"],
    buckets=REQUEST_BUCKETS,
    registry=REGISTRY,
)
WEBSOCKETS = Gauge(
    "sandboxd_websocket_connections",
    "WebSocket connections open, by handler.",
    ["handler"],
    registry=REGISTRY,
)

IMAGE_PULLS = Counter(
    "sandboxd_image_pulls_total",
    "Image pulls (source=pull) and archive loads (source=load) that ended, by outcome.",
    ["source", "outcome"],
    registry=REGISTRY,
)
IMAGE_PULL_DURATION = Histogram(
    "sandboxd_image_pull_duration_seconds",
    "Time to pull or load an image, download and unpack included, by source and outcome.",
    ["source", "outcome"],
    buckets=PULL_BUCKETS,
    registry=REGISTRY,
)
IMAGE_STORE_BYTES = Gauge(
    "sandboxd_image_store_bytes",
    "Bytes in the image store: unpacked layer content plus manifests and configs.",
    registry=REGISTRY,
)
IMAGE_STORE_LAYERS = Gauge(
    "sandboxd_image_store_layers", "Unpacked layers in the image store.", registry=REGISTRY
)
IMAGE_STORE_IMAGES = Gauge("sandboxd_images", "Images in the image store.", registry=REGISTRY)

for _reason in DROP_REASONS:
    KERNEL_DROPPED.labels(_reason)
for _reason in RESOURCE_REASONS:
    RESOURCE_REFUSALS.labels(_reason)
for _cause in ("died", "oom_killed"):
    KERNEL_DEATHS.labels(_cause)
for _lane in ("io", "net"):
    LANE_WAITING.labels(_lane)
    LANE_RUNNING.labels(_lane)
for _kind in KINDS:
    for _outcome in START_OUTCOMES:
        START_DURATION.labels(_kind, _outcome)
    for _outcome in EXIT_OUTCOMES:
        EXITS.labels(_kind, _outcome)
for _source in IMAGE_SOURCES:
    for _outcome in PULL_OUTCOMES:
        IMAGE_PULLS.labels(_source, _outcome)
        IMAGE_PULL_DURATION.labels(_source, _outcome)

# per-user tallies, exported by the collector for users that still exist
_refusals: dict[tuple[str, str], int] = defaultdict(int)
_oom_exited: dict[str, int] = defaultdict(int)


# -- events, called from the service, the API and the kernel manager -------------------------


def kernel_event(event: str) -> None:
    """Count a kernel lifecycle event (one of ``KERNEL_EVENTS``)."""
    if event == "started":
        KERNEL_STARTS.inc()
    elif event == "stopped":
        KERNEL_STOPS.inc()
    elif event == "culled":
        KERNEL_CULLS.inc()
    elif event == "restarted":
        KERNEL_RESTARTS.inc()
    elif event == "failed":
        KERNEL_FAILURES.inc()
    elif event in ("died", "oom_killed"):
        KERNEL_DEATHS.labels(event).inc()
        KERNEL_FAILURES.inc()
    else:
        raise ValueError(f"unknown kernel event {event!r}")


def kernel_message_dropped(reason: str) -> None:
    KERNEL_DROPPED.labels(reason).inc()


def resource_refusal(reason: str) -> None:
    RESOURCE_REFUSALS.labels(reason).inc()


def observe_loop_lag(seconds: float) -> None:
    LOOP_LAG.observe(seconds)


def observe_lanes(depths: dict[str, tuple[int, int]]) -> None:
    for lane, (waiting, running) in depths.items():
        LANE_WAITING.labels(lane).set(waiting)
        LANE_RUNNING.labels(lane).set(running)


def observe_start(kind: str, outcome: str, seconds: float) -> None:
    START_DURATION.labels(kind, outcome).observe(seconds)


def observe_image_pull(source: str, outcome: str, seconds: float) -> None:
    """A pull (``source="pull"``) or an archive load (``"load"``) ended."""
    IMAGE_PULLS.labels(source, outcome).inc()
    IMAGE_PULL_DURATION.labels(source, outcome).observe(seconds)


def image_store(size: int, layers: int, images: int) -> None:
    """The image store changed: its bytes, layers and images now."""
    IMAGE_STORE_BYTES.set(size)
    IMAGE_STORE_LAYERS.set(layers)
    IMAGE_STORE_IMAGES.set(images)


def admission_refused(user: str, reason: str) -> None:
    _refusals[(user, reason)] += 1


def sandbox_exited(spec: SandboxSpec, result: Exit) -> None:
    """Record an exit (``result.oom_kills`` was read before the cgroup went)."""
    if result.oom_killed:
        outcome = "oom_killed"
    else:
        outcome = "success" if result.code == 0 else "error"
    EXITS.labels(spec.kind, outcome).inc()
    _oom_exited[spec.user] += max(result.oom_kills, int(result.oom_killed))


def observe_request(handler: Any) -> None:
    """Tornado ``log_function`` hook: one observation per finished request."""
    REQUEST_DURATION.labels(
        type(handler).__name__, handler.request.method, str(handler.get_status())
    ).observe(handler.request.request_time())


class TrackedWebSocket:
    """Mixin counting open WebSocket connections; ``instrument_routes`` applies it."""

    _sbx_counted = False

    def open(self, *args: Any, **kwargs: Any) -> Any:
        WEBSOCKETS.labels(self._ws_name()).inc()
        self._sbx_counted = True
        return super().open(*args, **kwargs)  # type: ignore[misc]

    def on_close(self) -> None:
        if self._sbx_counted:
            self._sbx_counted = False
            WEBSOCKETS.labels(self._ws_name()).dec()
        super().on_close()  # type: ignore[misc]

    def _ws_name(self) -> str:
        return type(self).__name__  # the wrapper keeps the wrapped handler's name


def instrument_routes(routes: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Wrap every WebSocket handler in ``TrackedWebSocket`` (same class name, same behaviour)."""
    from tornado.websocket import WebSocketHandler

    out: list[tuple[str, Any]] = []
    for pattern, handler, *rest in routes:
        if (
            isinstance(handler, type)
            and issubclass(handler, WebSocketHandler)
            and not issubclass(handler, TrackedWebSocket)
        ):
            WEBSOCKETS.labels(handler.__name__)
            handler = type(handler.__name__, (TrackedWebSocket, handler), {})
        out.append((pattern, handler, *rest))
    return out


# -- scrape-time collector ------------------------------------------------------------------

#: (metric, CgroupStats field, help, counter?) per sandbox; limits are added only when set.
SANDBOX_FAMILIES: tuple[tuple[str, str, str, bool], ...] = (
    ("cpu_usage_seconds", "cpu_usage_seconds", "CPU time consumed, user + system.", True),
    ("cpu_user_seconds", "cpu_user_seconds", "CPU time consumed in user mode.", True),
    ("cpu_system_seconds", "cpu_system_seconds", "CPU time consumed in kernel mode.", True),
    ("cpu_cfs_periods", "cpu_periods", "Elapsed CFS enforcement periods.", True),
    ("cpu_cfs_throttled_periods", "cpu_throttled_periods", "CFS periods throttled.", True),
    ("cpu_cfs_throttled_seconds", "cpu_throttled_seconds", "Time throttled by CFS.", True),
    ("memory_usage_bytes", "memory_usage", "Memory usage, including page cache.", False),
    ("memory_max_usage_bytes", "memory_peak", "Peak memory usage.", False),
    ("memory_working_set_bytes", "memory_working_set", "Usage minus inactive file cache.", False),
    ("memory_rss_bytes", "memory_rss", "Anonymous memory (RSS).", False),
    ("memory_cache_bytes", "memory_cache", "Page cache (file-backed and tmpfs) memory.", False),
    ("memory_swap_bytes", "memory_swap", "Swap used.", False),
    ("memory_limit_bytes", "memory_limit", "Memory limit (absent when unlimited).", False),
    ("oom_kills", "oom_kills", "Processes killed by the OOM killer in this sandbox.", True),
    ("pids", "pids_current", "Processes and threads now.", False),
    ("pids_limit", "pids_limit", "Process/thread limit (absent when unlimited).", False),
    ("fs_reads_bytes", "io_read_bytes", "Bytes read from block devices.", True),
    ("fs_writes_bytes", "io_write_bytes", "Bytes written to block devices.", True),
    ("fs_reads", "io_read_ops", "Block device read operations.", True),
    ("fs_writes", "io_write_ops", "Block device write operations.", True),
)
#: (metric, ``Sandboxd.network_counters`` key, help); exported only for keys present.
NETWORK_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("network_receive_bytes", "network_rx_bytes", "Bytes received on the sandbox's veth."),
    ("network_transmit_bytes", "network_tx_bytes", "Bytes sent on the sandbox's veth."),
    ("network_receive_packets", "network_rx_packets", "Packets received."),
    ("network_transmit_packets", "network_tx_packets", "Packets sent."),
    ("network_receive_packets_dropped", "network_rx_dropped", "Received packets dropped."),
    ("network_transmit_packets_dropped", "network_tx_dropped", "Sent packets dropped."),
    ("network_receive_errors", "network_rx_errors", "Receive errors."),
    ("network_transmit_errors", "network_tx_errors", "Transmit errors."),
)
INFO_LABELS = ("sandbox", "name", "user", "kind", "profile", "image", "kernel_name")


def _network_key(key: str) -> str:
    """``net_rx_bytes`` (the veth reader's spelling) → ``network_rx_bytes``."""
    return "network_" + key[4:] if key.startswith("net_") else key


def _family(name: str, doc: str, labels: list[str], counter: bool) -> Metric:
    if counter:
        return CounterMetricFamily(f"sandboxd_{name}", doc, labels=labels)
    return GaugeMetricFamily(f"sandboxd_{name}", doc, labels=labels)


@dataclass
class Snapshot:
    """What a scrape reports, taken on the event loop in one pass (a few table reads); the
    cgroupfs and netlink reads and the rendering then run in a blocking lane from this alone."""

    records: list[Any]  # running sandboxes (SandboxRecord)
    users: list[str]
    quotas: dict[str, Any]  # user -> Quota
    usage: dict[str, Any]  # user -> admission.Usage
    instance: str
    cgroup_version: int
    started_at: float
    stats: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    counters: dict[str, dict[str, Any]] = field(default_factory=dict)


class DaemonCollector:
    """Per-sandbox cgroup and veth counters and per-user quotas, from one ``Snapshot``."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    def describe(self) -> Iterable[Metric]:
        return []  # names are dynamic (network families); skip the registration-time collect

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        yield from self._sandboxes(snap.records, snap.stats)
        yield from self._users(snap.records, snap.stats)
        build = GaugeMetricFamily(
            "sandboxd_build_info",
            "Build and host facts of this daemon; always 1.",
            labels=["version", "python_version", "instance", "cgroup_version"],
        )
        build.add_metric(
            [__version__, platform.python_version(), snap.instance, str(snap.cgroup_version)],
            1,
        )
        yield build
        yield GaugeMetricFamily(
            "sandboxd_start_time_seconds", "When the daemon started.", value=snap.started_at
        )

    def _sandboxes(self, records: list[Any], all_stats: dict[str, Any]) -> Iterator[Metric]:
        fams = {
            key: (_family(f"sandbox_{name}", doc, ["sandbox"], counter))
            for name, key, doc, counter in SANDBOX_FAMILIES
        }
        net = {
            key: _family(f"sandbox_{name}", doc, ["sandbox"], True)
            for name, key, doc in NETWORK_FAMILIES
        }
        info = GaugeMetricFamily(
            "sandboxd_sandbox_info",
            "Descriptive labels of a live sandbox, for joins; always 1.",
            labels=list(INFO_LABELS),
        )
        started = GaugeMetricFamily(
            "sandboxd_sandbox_start_time_seconds",
            "Unix time the sandbox started.",
            labels=["sandbox"],
        )
        seen_net: set[str] = set()
        counters = self.snap.counters
        for rec in records:
            stats = all_stats.get(rec.id)
            if stats is None:  # ended between the listing and the read
                continue
            for key, fam in fams.items():
                value = stats.get(key)
                if value is not None:
                    fam.add_metric([rec.id], value)
            for raw, value in counters.get(rec.id, {}).items():
                key = _network_key(raw)
                if key in net and value is not None:
                    net[key].add_metric([rec.id], value)
                    seen_net.add(key)
            spec = rec.spec
            labels = dict(spec.get("labels", ()))
            info.add_metric(
                [
                    rec.id,
                    rec.name,
                    rec.user,
                    rec.kind,
                    spec.get("profile", ""),
                    spec.get("image", ""),
                    labels.get("kernel_name", ""),
                ],
                1,
            )
            started.add_metric([rec.id], rec.started or rec.created)
        yield info
        yield started
        yield from fams.values()
        yield from (fam for key, fam in net.items() if key in seen_net)

    def _users(self, records: list[Any], stats: dict[str, Any]) -> Iterator[Metric]:
        snap = self.snap
        users = snap.users
        running = GaugeMetricFamily(
            "sandboxd_user_sandboxes", "Running sandboxes, by kind.", labels=["user", "kind"]
        )
        quota = {
            key: GaugeMetricFamily(f"sandboxd_user_quota_{key}", doc, labels=["user"])
            for key, doc in (
                ("sandboxes", "Most sandboxes the user may run at once."),
                ("kernels", "Most kernels the user may run at once."),
                ("memory_bytes", "Memory quota: sum of the user's sandbox memory limits."),
                ("cpus", "CPU quota in cores: sum of the user's sandbox CPU limits."),
            )
        }
        used = {
            key: GaugeMetricFamily(f"sandboxd_user_quota_used_{key}", doc, labels=["user"])
            for key, doc in (
                ("sandboxes", "Sandboxes counted against the quota (running + starting)."),
                ("kernels", "Kernels counted against the quota."),
                ("memory_bytes", "Memory limits counted against the quota."),
                ("cpus", "CPU limits (cores) counted against the quota."),
            )
        }
        refusals = CounterMetricFamily(
            "sandboxd_user_admission_refusals",
            "Create requests refused by admission, by reason.",
            labels=["user", "reason"],
        )
        ooms = CounterMetricFamily(
            "sandboxd_user_oom_kills",
            "OOM kills in the user's sandboxes, live and ended.",
            labels=["user"],
        )
        live_ooms: dict[str, int] = defaultdict(int)
        by_user: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
        for rec in records:
            by_user[rec.user][rec.kind] = by_user[rec.user].get(rec.kind, 0) + 1
            live_ooms[rec.user] += (stats.get(rec.id) or {}).get("oom_kills", 0)
        for user in users:
            for kind, count in by_user[user].items():
                running.add_metric([user, kind], count)
            limit = snap.quotas[user]
            usage = snap.usage[user]
            for key, lim, use in (
                ("sandboxes", limit.max_sandboxes, usage.sandboxes),
                ("kernels", getattr(limit, "max_kernels", 0), usage.by_kind.get("kernel", 0)),
                ("memory_bytes", limit.memory, usage.memory),
                ("cpus", limit.cpus, usage.cpus),
            ):
                if lim:
                    quota[key].add_metric([user], lim)
                used[key].add_metric([user], use)
            reasons = set(REFUSAL_REASONS) | {r for u, r in _refusals if u == user}
            for reason in sorted(reasons):
                refusals.add_metric([user, reason], _refusals.get((user, reason), 0))
            ooms.add_metric([user], _oom_exited.get(user, 0) + live_ooms.get(user, 0))
        yield running
        yield from quota.values()
        yield from used.values()
        yield refusals
        yield ooms


class _Scrape:
    """The static registry plus one snapshot's collector, rendered together."""

    def __init__(self, snap: Snapshot) -> None:
        self.daemon = DaemonCollector(snap)

    def collect(self) -> Iterator[Metric]:
        yield from REGISTRY.collect()
        yield from self.daemon.collect()


def render(snap: Snapshot) -> bytes:
    """The ``/metrics`` body for a filled snapshot (blocking: run it in a lane)."""
    return generate_latest(_Scrape(snap))  # type: ignore[arg-type]
