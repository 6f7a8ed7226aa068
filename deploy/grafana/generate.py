"""Write sandboxd's Grafana dashboards (overview, per-user, per-sandbox) as JSON.

Why a generator instead of hand-edited JSON: the three dashboards share variables, panel
shapes and the ``sandboxd_sandbox_info`` join, and the tests execute every ``expr`` against a
real Prometheus, so the queries are easier to keep right in one short file. Run
``python deploy/grafana/generate.py`` after editing; the JSON files are committed.
"""

from __future__ import annotations

import json
import os
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
DS = {"type": "prometheus", "uid": "${datasource}"}
I = 'instance=~"$instance"'  # noqa: E741
RI = "$__rate_interval"


def join(expr: str, labels: str = "user", where: str = 'user=~"$user"') -> str:
    """Attach descriptive labels (and filter by them) via the info metric."""
    return (
        f"{expr} * on (job, instance, sandbox) group_left ({labels}) "
        f"sandboxd_sandbox_info{{{I}, {where}}}"
    )


def variables(user: bool, sandbox: bool, multi_user: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
        _query_var("instance", "label_values(sandboxd_build_info, instance)", multi=True),
    ]
    if user:
        out.append(
            _query_var(
                "user",
                f"label_values(sandboxd_user_quota_used_sandboxes{{{I}}}, user)",
                multi=multi_user,
            )
        )
    if sandbox:
        out.append(
            _query_var(
                "sandbox",
                f'label_values(sandboxd_sandbox_info{{{I}, user=~"$user"}}, sandbox)',
                multi=False,
            )
        )
    return out


def _query_var(name: str, query: str, multi: bool) -> dict[str, Any]:
    var: dict[str, Any] = {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DS,
        "refresh": 2,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "multi": multi,
        "includeAll": multi,
        "sort": 1,
    }
    if multi:
        var["allValue"] = ".*"
        var["current"] = {"text": "All", "value": "$__all"}
    return var


def panel(
    title: str,
    targets: list[tuple[str, str]],
    unit: str = "short",
    kind: str = "timeseries",
    width: int = 12,
    height: int = 8,
    description: str = "",
) -> dict[str, Any]:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"w": width, "h": height},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(65 + i),
                "datasource": DS,
                "expr": expr,
                "legendFormat": legend,
                **({"instant": True, "format": "table"} if kind == "table" else {}),
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(
    uid: str,
    title: str,
    panels: list[dict[str, Any]],
    templating: list[dict[str, Any]],
    links: bool = True,
) -> dict[str, Any]:
    x = y = row_h = 0
    for i, p in enumerate(panels):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        p["id"] = i + 1
        x, row_h = x + w, max(row_h, h)
    return {
        "uid": uid,
        "title": title,
        "tags": ["sandboxd"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "panels": panels,
        "templating": {"list": templating},
        "links": [
            {
                "type": "dashboards",
                "tags": ["sandboxd"],
                "asDropdown": True,
                "title": "sandboxd",
                "includeVars": True,
                "keepTime": True,
            }
        ]
        if links
        else [],
        "annotations": {"list": []},
    }


def overview() -> dict[str, Any]:
    start = "sandboxd_sandbox_start_duration_seconds"
    q = [
        (
            f'histogram_quantile({p}, sum by (le) (rate({start}_bucket{{{I}, outcome="success"}}'
            f"[{RI}])))",
            f"p{int(p * 100)}",
        )
        for p in (0.5, 0.95, 0.99)
    ]
    return dashboard(
        "sandboxd-overview",
        "sandboxd / Overview",
        [
            panel(
                "Running sandboxes",
                [(f"sum(sandboxd_user_sandboxes{{{I}}})", "")],
                kind="stat",
                width=4,
                height=4,
            ),
            panel(
                "Users with sandboxes",
                [(f"count(sum by (user) (sandboxd_user_sandboxes{{{I}}}) > 0) or vector(0)", "")],
                kind="stat",
                width=4,
                height=4,
            ),
            panel(
                "Daemon up",
                [('up{job="sandboxd", ' + I + "}", "{{instance}}")],
                kind="stat",
                width=4,
                height=4,
            ),
            panel(
                "OOM kills (1h)",
                [(f"sum(increase(sandboxd_user_oom_kills_total{{{I}}}[1h]))", "")],
                kind="stat",
                width=4,
                height=4,
            ),
            panel(
                "Start failures (1h)",
                [(f'sum(increase({start}_count{{{I}, outcome="failure"}}[1h]))', "")],
                kind="stat",
                width=4,
                height=4,
            ),
            panel(
                "WebSockets open",
                [(f"sum(sandboxd_websocket_connections{{{I}}})", "")],
                kind="stat",
                width=4,
                height=4,
            ),
            panel(
                "Running sandboxes by kind",
                [(f"sum by (kind) (sandboxd_user_sandboxes{{{I}}})", "{{kind}}")],
            ),
            panel(
                "Starts per minute",
                [
                    (
                        f"sum by (kind, outcome) (rate({start}_count{{{I}}}[{RI}])) * 60",
                        "{{kind}} {{outcome}}",
                    )
                ],
                unit="short",
            ),
            panel("Start latency (successful starts)", q, unit="s"),
            panel(
                "Start failures and admission refusals",
                [
                    (
                        f'sum by (kind) (increase({start}_count{{{I}, outcome="failure"}}[{RI}]))',
                        "failed {{kind}}",
                    ),
                    (
                        f"sum by (reason) (increase(sandboxd_user_admission_refusals_total{{{I}}}[{RI}]))",
                        "refused: {{reason}}",
                    ),
                ],
            ),
            panel(
                "OOM kills by user",
                [
                    (
                        f"sum by (user) (increase(sandboxd_user_oom_kills_total{{{I}}}[{RI}]))",
                        "{{user}}",
                    )
                ],
            ),
            panel(
                "Sandbox exits",
                [
                    (
                        f"sum by (kind, outcome) (increase("
                        f"sandboxd_sandbox_exits_total{{{I}}}[{RI}]))",
                        "{{kind}} {{outcome}}",
                    )
                ],
            ),
            panel(
                "CPU by user (cores)",
                [(f"topk(10, user:sandboxd_sandbox_cpu_usage_seconds:rate1m{{{I}}})", "{{user}}")],
            ),
            panel(
                "Memory working set by user",
                [
                    (
                        f"topk(10, user:sandboxd_sandbox_memory_working_set_bytes:sum{{{I}}})",
                        "{{user}}",
                    )
                ],
                unit="bytes",
            ),
            panel(
                "Kernel lifecycle (per minute)",
                [
                    (f"rate(sandboxd_kernel_{e}_total{{{I}}}[{RI}]) * 60", e)
                    for e in ("starts", "stops", "culls", "failures")
                ],
            ),
            panel(
                "API latency p95 by handler",
                [
                    (
                        "histogram_quantile(0.95, sum by (handler, le) (rate("
                        f"sandboxd_http_request_duration_seconds_bucket{{{I}}}[{RI}])))",
                        "{{handler}}",
                    )
                ],
                unit="s",
            ),
            panel(
                "API responses by code",
                [
                    (
                        f"sum by (code) (rate(sandboxd_http_request_duration_seconds_count{{{I}}}[{RI}]))",
                        "{{code}}",
                    )
                ],
                unit="reqps",
            ),
            panel(
                "Memory pressure by user (share of time stalled, cgroup v2)",
                [
                    (
                        f"topk(10, rate(sandboxd_user_pressure_memory_stalled_seconds_total{{{I}}}[{RI}]))",
                        "{{user}} stalled",
                    ),
                    (
                        f"topk(10, rate(sandboxd_user_pressure_memory_waiting_seconds_total{{{I}}}[{RI}]))",
                        "{{user}} waiting",
                    ),
                ],
                unit="percentunit",
                description="PSI: waiting = some task stalled on memory, stalled = all tasks were.",
            ),
            panel(
                "CPU and IO pressure by user (share of time waiting, cgroup v2)",
                [
                    (
                        f"topk(10, rate(sandboxd_user_pressure_{r}_waiting_seconds_total{{{I}}}[{RI}]))",
                        f"{{{{user}}}} {r}",
                    )
                    for r in ("cpu", "io")
                ],
                unit="percentunit",
            ),
            panel(
                "Users near quota (use ratio)",
                [(f"topk(10, user:sandboxd_user_quota_use:ratio{{{I}}})", "{{user}} {{resource}}")],
                unit="percentunit",
            ),
        ],
        variables(user=False, sandbox=False, multi_user=True),
    )


def per_user() -> dict[str, Any]:
    def rate(metric: str) -> str:
        return f"sum by (user) ({join(f'rate({metric}{{{I}}}[{RI}])')})"

    def by_name(metric: str, fn: str = "rate") -> str:
        inner = f"{fn}({metric}{{{I}}}[{RI}])" if fn else f"{metric}{{{I}}}"
        return f"sum by (name) ({join(inner, 'user, name')})"

    u = f'{I}, user=~"$user"'
    return dashboard(
        "sandboxd-user",
        "sandboxd / User",
        [
            panel(
                "Running sandboxes",
                [(f"sum by (kind) (sandboxd_user_sandboxes{{{u}}})", "{{kind}}")],
                kind="stat",
                width=8,
                height=4,
            ),
            panel(
                "OOM kills (24h)",
                [(f"sum(increase(sandboxd_user_oom_kills_total{{{u}}}[24h]))", "")],
                kind="stat",
                width=8,
                height=4,
            ),
            panel(
                "Refusals (24h)",
                [
                    (
                        f"sum by (reason) (increase("
                        f"sandboxd_user_admission_refusals_total{{{u}}}[24h])) > 0",
                        "{{reason}}",
                    )
                ],
                kind="stat",
                width=8,
                height=4,
            ),
            panel(
                "CPU (cores) against quota",
                [
                    (rate("sandboxd_sandbox_cpu_usage_seconds_total"), "used {{user}}"),
                    (f"sandboxd_user_quota_used_cpus{{{u}}}", "limits held {{user}}"),
                    (f"sandboxd_user_quota_cpus{{{u}}}", "quota {{user}}"),
                ],
            ),
            panel(
                "CPU by sandbox (cores)",
                [(by_name("sandboxd_sandbox_cpu_usage_seconds_total"), "{{name}}")],
            ),
            panel(
                "Memory against limit and quota",
                [
                    (
                        f"sum by (user) ({join(f'sandboxd_sandbox_memory_working_set_bytes{{{I}}}')})",
                        "working set {{user}}",
                    ),
                    (f"sandboxd_user_quota_used_memory_bytes{{{u}}}", "limits held {{user}}"),
                    (f"sandboxd_user_quota_memory_bytes{{{u}}}", "quota {{user}}"),
                ],
                unit="bytes",
            ),
            panel(
                "Memory working set by sandbox",
                [(by_name("sandboxd_sandbox_memory_working_set_bytes", fn=""), "{{name}}")],
                unit="bytes",
            ),
            panel(
                "Block IO",
                [
                    (rate("sandboxd_sandbox_fs_reads_bytes_total"), "read {{user}}"),
                    (rate("sandboxd_sandbox_fs_writes_bytes_total"), "write {{user}}"),
                ],
                unit="Bps",
            ),
            panel(
                "Network",
                [
                    (rate("sandboxd_sandbox_network_receive_bytes_total"), "rx {{user}}"),
                    (rate("sandboxd_sandbox_network_transmit_bytes_total"), "tx {{user}}"),
                ],
                unit="Bps",
            ),
            panel(
                "Quota use",
                [(f"user:sandboxd_user_quota_use:ratio{{{u}}}", "{{user}} {{resource}}")],
                unit="percentunit",
            ),
            panel(
                "OOM kills and refusals",
                [
                    (
                        f"sum by (user) (increase(sandboxd_user_oom_kills_total{{{u}}}[{RI}]))",
                        "OOM kills {{user}}",
                    ),
                    (
                        f"sum by (reason) (increase(sandboxd_user_admission_refusals_total{{{u}}}[{RI}]))",
                        "refused: {{reason}}",
                    ),
                ],
            ),
            panel(
                "Pressure stall (share of time, cgroup v2)",
                [
                    (
                        f"rate(sandboxd_user_pressure_{r}_{k}_seconds_total{{{u}}}[{RI}])",
                        f"{r} {k} {{{{user}}}}",
                    )
                    for r in ("cpu", "memory", "io")
                    for k in ("waiting", "stalled")
                ],
                unit="percentunit",
                description="PSI of the user's cgroup: waiting = some task stalled, stalled = all.",
            ),
            panel(
                "memory.events (per interval, cgroup v2)",
                [
                    (
                        f"increase(sandboxd_user_memory_events_{e}_total{{{u}}}[{RI}])",
                        f"{e} {{{{user}}}}",
                    )
                    for e in ("high", "max", "oom", "oom_kill")
                ],
                description="high: throttled at memory.high; max: at memory.max; oom_kill: killed.",
            ),
            panel(
                "Memory pressure by sandbox (stalled, cgroup v2)",
                [(by_name("sandboxd_sandbox_pressure_memory_stalled_seconds_total"), "{{name}}")],
                unit="percentunit",
            ),
            panel("Sandboxes", [(f"sandboxd_sandbox_info{{{u}}}", "")], kind="table", width=24),
        ],
        variables(user=True, sandbox=False, multi_user=True),
    )


def per_sandbox() -> dict[str, Any]:
    s = f'{I}, sandbox="$sandbox"'

    def r(metric: str) -> str:
        return f"rate(sandboxd_sandbox_{metric}{{{s}}}[{RI}])"

    return dashboard(
        "sandboxd-sandbox",
        "sandboxd / Sandbox",
        [
            panel(
                "Sandbox", [(f"sandboxd_sandbox_info{{{s}}}", "")], kind="table", width=16, height=4
            ),
            panel(
                "Up for",
                [(f"time() - sandboxd_sandbox_start_time_seconds{{{s}}}", "")],
                kind="stat",
                unit="s",
                width=4,
                height=4,
            ),
            panel(
                "OOM kills",
                [(f"sandboxd_sandbox_oom_kills_total{{{s}}}", "")],
                kind="stat",
                width=4,
                height=4,
            ),
            panel(
                "CPU (cores)",
                [
                    (r("cpu_usage_seconds_total"), "total"),
                    (r("cpu_user_seconds_total"), "user"),
                    (r("cpu_system_seconds_total"), "system"),
                ],
            ),
            panel(
                "CPU throttling",
                [
                    (
                        f"{r('cpu_cfs_throttled_periods_total')} / ({r('cpu_cfs_periods_total')} > 0)",
                        "throttled periods",
                    ),
                    (r("cpu_cfs_throttled_seconds_total"), "throttled seconds per second"),
                ],
                unit="percentunit",
            ),
            panel(
                "Memory",
                [
                    (f"sandboxd_sandbox_memory_{m}_bytes{{{s}}}", m)
                    for m in ("usage", "working_set", "rss", "cache", "swap", "limit")
                ],
                unit="bytes",
            ),
            panel(
                "Processes",
                [
                    (f"sandboxd_sandbox_pids{{{s}}}", "pids"),
                    (f"sandboxd_sandbox_pids_limit{{{s}}}", "limit"),
                ],
            ),
            panel(
                "Pressure stall (share of time, cgroup v2)",
                [
                    (r(f"pressure_{res}_{k}_seconds_total"), f"{res} {k}")
                    for res in ("cpu", "memory", "io")
                    for k in ("waiting", "stalled")
                ],
                unit="percentunit",
                description="PSI: waiting = some task stalled on the resource, stalled = all were.",
            ),
            panel(
                "memory.events (per interval, cgroup v2)",
                [
                    (f"increase(sandboxd_sandbox_memory_events_{e}_total{{{s}}}[{RI}])", e)
                    for e in ("high", "max", "oom", "oom_kill")
                ],
                description="high: throttled at memory.high (memory_high); max: hit memory.max.",
            ),
            panel(
                "Block IO bytes",
                [(r("fs_reads_bytes_total"), "read"), (r("fs_writes_bytes_total"), "write")],
                unit="Bps",
            ),
            panel(
                "Block IO operations",
                [(r("fs_reads_total"), "read"), (r("fs_writes_total"), "write")],
                unit="iops",
            ),
            panel(
                "Network bytes",
                [
                    (r("network_receive_bytes_total"), "rx"),
                    (r("network_transmit_bytes_total"), "tx"),
                ],
                unit="Bps",
            ),
            panel(
                "Network packets, drops, errors",
                [
                    (r("network_receive_packets_total"), "rx packets"),
                    (r("network_transmit_packets_total"), "tx packets"),
                    (r("network_receive_packets_dropped_total"), "rx dropped"),
                    (r("network_transmit_packets_dropped_total"), "tx dropped"),
                    (r("network_receive_errors_total"), "rx errors"),
                    (r("network_transmit_errors_total"), "tx errors"),
                ],
                unit="pps",
            ),
        ],
        variables(user=True, sandbox=True, multi_user=True),
    )


DASHBOARDS = {"overview.json": overview, "user.json": per_user, "sandbox.json": per_sandbox}


def main() -> None:
    for name, build in DASHBOARDS.items():
        with open(os.path.join(HERE, name), "w") as fh:
            json.dump(build(), fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
