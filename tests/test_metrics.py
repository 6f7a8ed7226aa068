"""/metrics end to end: a real Prometheus scrapes the daemon under test every second.

Prometheus is started by this module on 127.0.0.1 inside the test network namespace (it
inherits it from the pytest process), with a temporary data dir, the shipped rule files
and a 1 s evaluation interval; it is stopped at the end. The workload burns CPU, holds
memory, writes with O_DIRECT to a volume, and gets OOM-killed; every check reads the values
back through Prometheus's HTTP API (or the raw /metrics page where a scrape is the point).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from conftest import ROOT, SANDBOXCTL, Client, Daemon, free_port

from sandboxd import metrics

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
RULES = sorted(glob.glob(os.path.join(ROOT, "deploy", "prometheus", "*.rules.yml")))
DASHBOARDS = sorted(glob.glob(os.path.join(ROOT, "deploy", "grafana", "*.json")))
MiB = 1 << 20

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not os.path.exists(PROMETHEUS),
        reason="Debian package prometheus not installed (make install)",
    ),
]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expr: str) -> list[dict[str, Any]]:
        resp = requests.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    def value(self, expr: str) -> float | None:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def values(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}


@pytest.fixture(scope="module")
def prom(daemon: Daemon) -> Iterator[Prometheus]:
    tmp = tempfile.mkdtemp(prefix=f"{daemon.instance}-prom-")
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": RULES,
        "scrape_configs": [
            {
                "job_name": "sandboxd",
                "authorization": {"credentials": daemon.admin.token},
                "static_configs": [{"targets": [daemon.url.split("//")[1]]}],
            }
        ],
    }
    path = os.path.join(tmp, "prometheus.yml")
    with open(path, "w") as fh:
        json.dump(config, fh)  # JSON is YAML
    log = open(os.path.join(tmp, "prometheus.log"), "wb")
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={path}",
            f"--storage.tsdb.path={tmp}/data",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    p = Prometheus(f"http://127.0.0.1:{port}")
    try:

        def ready() -> bool:
            assert proc.poll() is None, open(log.name).read()[-2000:]
            try:
                return requests.get(p.url + "/-/ready", timeout=1).status_code == 200
            except requests.ConnectionError:
                return False

        wait_for("prometheus ready", ready)
        wait_for("first scrape", lambda: p.value('up{job="sandboxd"}') == 1)
        yield p
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def workload(daemon: Daemon, prom: Prometheus) -> Iterator[dict[str, Any]]:
    """User ``mona``: a CPU burner, a 96 MiB holder and an O_DIRECT writer, all kept running."""
    mona = daemon.user("mona")
    mona.call("PUT", "/api/users/mona/volumes/metrics")
    made: list[str] = []
    try:
        burner = mona.run(["python3", "-c", "while True: pass"], cpus=0.5, name="burner")
        made.append(burner["id"])
        hog = mona.run(
            [
                "python3",
                "-c",
                "import time\nb = bytes(range(256)) * (96 * 2**20 // 256)"
                "\nprint('held', flush=True)\ntime.sleep(3600)",
            ],
            memory="256m",
            name="hog",
        )
        made.append(hog["id"])
        writer = mona.run(
            [
                "sh",
                "-c",
                "dd if=/dev/zero of=/data/f bs=1M count=16 oflag=direct"
                " && echo written && exec sleep 3600",
            ],
            volumes=["metrics:/data"],
            name="writer",
        )
        made.append(writer["id"])
        for sb, word in ((hog, "held"), (writer, "written")):
            wait_for(
                f"{sb['name']} ready",
                lambda sb=sb, word=word: (
                    word in mona.logs(sb["id"])["stdout"]
                    or mona.call("GET", f"/api/sandboxes/{sb['id']}")["state"] != "running"
                ),
            )
        yield {"client": mona, "burner": burner, "hog": hog, "writer": writer}
    finally:
        for sid in made:
            mona.call("DELETE", f"/api/sandboxes/{sid}?force=1")
        mona.call("DELETE", "/api/users/mona/volumes/metrics?force=1")


def scrape(daemon: Daemon, auth: bool = True, **kw: Any) -> requests.Response:
    """GET /metrics, by default with the admin token (the page is not public by default)."""
    if auth and "headers" not in kw:
        kw["headers"] = {"Authorization": f"token {daemon.admin.token}"}
    return requests.get(daemon.url + "/metrics", timeout=10, **kw)


# -- the page itself -----------------------------------------------------------------------


def test_promtool_check_metrics_on_live_scrape(daemon: Daemon, workload: dict) -> None:
    page = scrape(daemon)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert f'sandbox="{workload["burner"]["id"]}"' in page.text
    check = subprocess.run([PROMTOOL, "check", "metrics"], input=page.content, capture_output=True)
    assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr


def test_no_timestamps_and_enums_precreated(daemon: Daemon, workload: dict) -> None:
    text = scrape(daemon).text
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    stamped = [
        line
        for line in samples
        if len((line.rpartition("}")[2] if "}" in line else line).split())
        != (1 if "}" in line else 2)
    ]
    assert samples and not stamped, stamped[:3]  # `name{labels} value`, never a timestamp
    for kind in metrics.KINDS:
        for outcome in metrics.START_OUTCOMES:
            assert (
                f'sandboxd_sandbox_start_duration_seconds_count{{kind="{kind}",'
                f'outcome="{outcome}"}}'
            ) in text
    for name in ("starts", "stops", "culls", "failures"):
        assert re.search(rf"^sandboxd_kernel_{name}_total \S+$", text, re.M), name
    assert 'sandboxd_websocket_connections{handler="AttachHandler"}' in text
    assert 'sandboxd_user_admission_refusals_total{reason="memory-quota",user="mona"} 0.0' in text


def test_promtool_check_rules_and_config() -> None:
    assert len(RULES) == 2
    check = subprocess.run([PROMTOOL, "check", "rules", *RULES], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # the shipped config, as shipped, next to a token file where it expects one
    shipped = os.path.join(ROOT, "deploy", "prometheus", "prometheus.yml")
    with open(shipped) as fh:
        text = fh.read()
    tmp = tempfile.mkdtemp(prefix="sbxt-promcfg-")
    try:
        token_file = os.path.join(tmp, "sandboxd-metrics-token")
        with open(token_file, "w") as fh:
            fh.write("t0ken\n")
        for rules in RULES:
            shutil.copy(rules, tmp)
        config = os.path.join(tmp, "prometheus.yml")
        with open(config, "w") as fh:
            fh.write(text.replace("/etc/prometheus/sandboxd-metrics-token", token_file))
        assert text.count("/etc/prometheus/sandboxd-metrics-token") == 1
        check = subprocess.run(
            [PROMTOOL, "check", "config", config], capture_output=True, text=True
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert check.returncode == 0, check.stdout + check.stderr


# -- values through Prometheus ---------------------------------------------------------------


def test_sandbox_families_arrive_with_labels_and_plausible_values(
    prom: Prometheus, workload: dict
) -> None:
    burner, hog, writer = (workload[k]["id"] for k in ("burner", "hog", "writer"))
    info = wait_for(
        "three info series",
        lambda: (r := prom.query('sandboxd_sandbox_info{user="mona"}')) and len(r) == 3 and r,
    )
    by_id = {r["metric"]["sandbox"]: r["metric"] for r in info}
    assert set(by_id) == {burner, hog, writer}
    assert by_id[hog]["name"] == "hog" and by_id[hog]["kind"] == "sandbox"
    assert by_id[hog]["profile"] == "default" and by_id[hog]["image"] == "host"
    assert "kernel_name" not in by_id[hog] or by_id[hog]["kernel_name"] == ""
    for name, _, _, counter in metrics.SANDBOX_FAMILIES:
        full = f"sandboxd_sandbox_{name}" + ("_total" if counter else "")
        got = prom.query(f'{full}{{sandbox="{hog}"}}')
        assert len(got) == 1 and set(got[0]["metric"]) == {
            "__name__",
            "sandbox",
            "job",
            "instance",
        }, (full, got)

    first = prom.value(f'sandboxd_sandbox_cpu_usage_seconds_total{{sandbox="{burner}"}}')
    assert first is not None
    wait_for(
        "CPU seconds grow",
        lambda: (
            prom.value(f'sandboxd_sandbox_cpu_usage_seconds_total{{sandbox="{burner}"}}')
            > first + 0.5
        ),
    )
    user = prom.value(f'sandboxd_sandbox_cpu_user_seconds_total{{sandbox="{burner}"}}')
    total = prom.value(f'sandboxd_sandbox_cpu_usage_seconds_total{{sandbox="{burner}"}}')
    assert 0 < user <= total + 0.1
    wait_for(
        "CFS throttling of a 0.5-CPU burner",
        lambda: (
            prom.value(f'sandboxd_sandbox_cpu_cfs_throttled_periods_total{{sandbox="{burner}"}}')
            > 0
        ),
    )

    working_set = prom.value(f'sandboxd_sandbox_memory_working_set_bytes{{sandbox="{hog}"}}')
    rss = prom.value(f'sandboxd_sandbox_memory_rss_bytes{{sandbox="{hog}"}}')
    assert 96 * MiB <= working_set <= 200 * MiB, working_set
    assert 90 * MiB <= rss <= working_set, rss
    assert prom.value(f'sandboxd_sandbox_memory_limit_bytes{{sandbox="{hog}"}}') == 256 * MiB
    assert prom.value(f'sandboxd_sandbox_pids{{sandbox="{hog}"}}') >= 1
    assert prom.value(f'sandboxd_sandbox_pids_limit{{sandbox="{hog}"}}') == 256

    written = prom.value(f'sandboxd_sandbox_fs_writes_bytes_total{{sandbox="{writer}"}}')
    assert written >= 16 * MiB, written
    assert prom.value(f'sandboxd_sandbox_fs_writes_total{{sandbox="{writer}"}}') >= 16

    started = prom.value(f'sandboxd_sandbox_start_time_seconds{{sandbox="{hog}"}}')
    assert time.time() - 600 < started <= time.time()


def test_user_and_service_families(daemon: Daemon, prom: Prometheus, workload: dict) -> None:
    mona: Client = workload["client"]
    running = prom.values('sandboxd_user_sandboxes{user="mona"}', "kind")
    assert running == {"sandbox": 3, "kernel": 0, "server": 0}
    used = prom.value('sandboxd_user_quota_used_memory_bytes{user="mona"}')
    limits = sum(
        mona.call("GET", f"/api/sandboxes/{workload[k]['id']}")["limits"]["memory"]
        for k in ("burner", "hog", "writer")
    )
    assert used == limits
    assert prom.value('sandboxd_user_quota_sandboxes{user="mona"}') == 12
    assert prom.value('sandboxd_user_quota_cpus{user="mona"}') == 8
    assert prom.value('sandboxd_user_quota_used_sandboxes{user="mona"}') == 3

    refusals = 'sandboxd_user_admission_refusals_total{user="mona",reason="profile-limit"}'
    before = prom.value(refusals)
    resp = mona.request("POST", "/api/sandboxes", json={"command": ["true"], "memory": "64g"})
    assert resp.status_code in (403, 429) and resp.json()["reason"] == "profile-limit"
    wait_for("refusal counted", lambda: prom.value(refusals) == before + 1)

    assert (
        prom.value(
            'sandboxd_sandbox_start_duration_seconds_count{kind="sandbox",outcome="success"}'
        )
        >= 3
    )
    buckets = prom.query(
        'sandboxd_sandbox_start_duration_seconds_bucket{kind="sandbox",outcome="success"}'
    )
    les = {float(r["metric"]["le"]) for r in buckets}
    assert min(les) == 0.01 and 60.0 in les
    assert prom.query(
        "sandboxd_http_request_duration_seconds_count"
        '{handler="SandboxesHandler",method="POST",code="201"}'
    )
    assert prom.query('sandboxd_build_info{cgroup_version=~"1|2"}')
    assert prom.value("sandboxd_kernel_failures_total") == 0


def test_websocket_gauge(daemon: Daemon, workload: dict) -> None:
    from sandboxd.cli.client import Client as ApiClient

    def gauge() -> float:
        m = re.search(
            r'sandboxd_websocket_connections\{handler="AttachHandler"\} (\S+)', scrape(daemon).text
        )
        assert m
        return float(m.group(1))

    base = gauge()
    ws = ApiClient(daemon.url, workload["client"].token).attach(workload["hog"]["id"])
    try:
        wait_for("one open websocket", lambda: gauge() == base + 1, timeout=10)
    finally:
        ws.close()
    wait_for("websocket closed", lambda: gauge() == base, timeout=10)


def test_every_dashboard_and_rule_expression_runs(prom: Prometheus, workload: dict) -> None:
    wait_for(
        "recording rule with the info join",
        lambda: (
            (prom.value('user:sandboxd_sandbox_cpu_usage_seconds:rate1m{user="mona"}') or 0) > 0.05
        ),
    )
    exprs: list[str] = []
    for path in DASHBOARDS:
        with open(path) as fh:
            board = json.load(fh)
        exprs += [t["expr"] for p in board["panels"] for t in p["targets"]]
        for var in board["templating"]["list"]:
            m = re.fullmatch(r"label_values\((.*), (\w+)\)", var.get("definition", ""))
            if m:
                exprs.append(f"count by ({m.group(2)}) ({m.group(1)})")
    for path in RULES:
        text = open(path).read()
        exprs += _rule_exprs(text)
    assert len(exprs) > 60
    subst = {
        "$instance": ".*",
        "$user": "mona",
        "$sandbox": workload["burner"]["id"],
        "$__rate_interval": "1m",
    }
    empty = []
    for expr in exprs:
        for key, value in subst.items():
            expr = expr.replace(key, value)
        assert "$" not in expr.replace("$labels", "").replace("$value", ""), expr
        if not prom.query(expr):  # an error fails inside query()
            empty.append(expr)
    populated = [e for e in exprs if "network" not in e and "kernel" not in e]
    assert len(empty) < len(populated) / 2, empty


def _rule_exprs(text: str) -> list[str]:
    import yaml

    return [r["expr"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]]


# -- OOM and disappearance -------------------------------------------------------------------


def _page_value(daemon: Daemon, series: str) -> float | None:
    for line in scrape(daemon).text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_oom_counts_alert_fires_and_removed_series_vanish(daemon: Daemon, prom: Prometheus) -> None:
    oscar = daemon.user("oscar")
    user_series = 'sandboxd_user_oom_kills_total{user="oscar"}'
    wait_for(
        "oscar's pre-created OOM counter in Prometheus", lambda: prom.value(user_series) is not None
    )
    base = _page_value(daemon, user_series)
    assert base is not None
    alloc = "b = bytes(range(256)) * (200 * 2**20 // 256)"
    survivor = oscar.run(["sh", "-c", f'python3 -c "{alloc}"; exec sleep 3600'], memory="64m")
    sid = survivor["id"]
    try:
        wait_for(
            "per-sandbox OOM kill counted",
            lambda: (
                (_page_value(daemon, f'sandboxd_sandbox_oom_kills_total{{sandbox="{sid}"}}') or 0)
                >= 1
            ),
        )
        assert _page_value(daemon, user_series) >= base + 1
        victim = oscar.run(["python3", "-c", alloc], memory="64m")
        result = oscar.wait(victim["id"])
        assert result["oom_killed"], result
        oscar.call("DELETE", f"/api/sandboxes/{victim['id']}?force=1")
        assert _page_value(daemon, user_series) >= base + 2

        wait_for(
            "per-sandbox OOM counter in Prometheus",
            lambda: (prom.value(f'sandboxd_sandbox_oom_kills_total{{sandbox="{sid}"}}') or 0) >= 1,
        )
        wait_for(
            "per-user OOM counter in Prometheus", lambda: (prom.value(user_series) or 0) >= base + 2
        )

        def firing() -> bool:
            alerts = requests.get(prom.url + "/api/v1/alerts", timeout=5).json()
            return any(
                a["labels"].get("alertname") == "SandboxOOMKilled"
                and a["labels"].get("user") == "oscar"
                and a["state"] == "firing"
                for a in alerts["data"]["alerts"]
            )

        wait_for("SandboxOOMKilled firing for oscar", firing, timeout=45)
    finally:
        oscar.call("DELETE", f"/api/sandboxes/{sid}?force=1")
    after = scrape(daemon).text
    assert sid not in after, "a removed sandbox's series are still on the next scrape"
    assert _page_value(daemon, user_series) >= base + 2, "user counter went backwards"
    wait_for(
        "removed sandbox's series stale in Prometheus",
        lambda: not prom.query(f'{{__name__=~"sandboxd_sandbox_.+", sandbox="{sid}"}}'),
        timeout=15,
    )


def test_network_families_after_traffic(daemon: Daemon, prom: Prometheus) -> None:
    """A bridged sandbox sends 300 KB of UDP to its gateway (inside the test netns)."""
    nina = daemon.user("nina")
    script = (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "import sys; gw = sys.argv[1]\n"
        "for _ in range(300): s.sendto(b'x' * 1000, (gw, 9))\n"
        "print('sent', flush=True)\n"
        "time.sleep(3600)\n"
    )
    resp = nina.request(
        "POST", "/api/sandboxes", json={"command": ["sleep", "3600"], "network": "bridge"}
    )
    assert resp.status_code == 201, resp.text
    probe = resp.json()
    try:
        stats = nina.call("GET", f"/api/sandboxes/{probe['id']}/stats")
        gateway = (
            nina.call("GET", f"/api/sandboxes/{probe['id']}").get("network_settings") or {}
        ).get("gateway")
        assert gateway, "a bridged sandbox has a gateway"
        assert any(k.startswith("net_") for k in stats), stats
    finally:
        nina.call("DELETE", f"/api/sandboxes/{probe['id']}?force=1")
    sender = nina.run(["python3", "-c", script, gateway], network="bridge")
    sid = sender["id"]
    try:
        wait_for("traffic sent", lambda: "sent" in nina.logs(sid)["stdout"])
        for name, _, _ in metrics.NETWORK_FAMILIES:
            wait_for(
                name, lambda n=name: prom.query(f'sandboxd_sandbox_{n}_total{{sandbox="{sid}"}}')
            )
        moved = wait_for(
            "300 KB counted",
            lambda: (
                (
                    prom.value(f'sandboxd_sandbox_network_receive_bytes_total{{sandbox="{sid}"}}')
                    or 0
                )
                + (
                    prom.value(f'sandboxd_sandbox_network_transmit_bytes_total{{sandbox="{sid}"}}')
                    or 0
                )
                >= 300_000
            ),
        )
        assert moved
    finally:
        nina.call("DELETE", f"/api/sandboxes/{sid}?force=1")


# -- access control and the CLI -------------------------------------------------------------


def _reload(daemon: Daemon, text: str, probe: Callable[[], bool]) -> None:
    with open(daemon.config_path, "w") as fh:
        fh.write(text)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for("config reloaded", probe, timeout=10)


def test_metrics_token(daemon: Daemon) -> None:
    original = open(daemon.config_path).read()
    token = "m3trics-" + os.urandom(8).hex()
    mona = daemon.user("mona")
    try:
        assert scrape(daemon, auth=False).status_code == 401  # not public by default
        _reload(
            daemon,
            f'metrics_token = "{token}"\n' + original,
            lambda: scrape(daemon, headers={"Authorization": f"Bearer {token}"}).status_code == 200,
        )
        assert scrape(daemon, auth=False).json()["reason"] == "no-token"
        assert scrape(daemon, headers={"Authorization": "Bearer wrong"}).status_code == 401
        user = scrape(daemon, headers={"Authorization": f"token {mona.token}"})
        assert user.status_code == 403 and user.json()["reason"] == "not-admin"
        for auth in (f"Bearer {token}", f"token {daemon.admin.token}"):
            ok = scrape(daemon, headers={"Authorization": auth})
            assert ok.status_code == 200 and "sandboxd_build_info" in ok.text
        # read-only: the metrics token opens nothing else
        api = requests.get(
            daemon.url + "/api/sandboxes", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert api.status_code == 401
        _reload(
            daemon,
            "metrics_public = true\n" + original,
            lambda: scrape(daemon, auth=False).status_code == 200,
        )
    finally:
        _reload(daemon, original, lambda: scrape(daemon, auth=False).status_code == 401)


def test_top_renders_sorted() -> None:
    from sandboxd.cli import top

    stats = [
        {
            "id": "a" * 16,
            "name": "small",
            "user": "u",
            "cpu_percent": 90.0,
            "memory_usage": 1 * MiB,
            "memory_limit": 64 * MiB,
            "memory_percent": 1.5,
        },
        {
            "id": "b" * 16,
            "name": "big",
            "user": "u",
            "cpu_percent": 1.0,
            "memory_usage": 50 * MiB,
            "memory_limit": None,
            "network_rx_bytes": 2048,
            "network_tx_bytes": 0,
        },
    ]
    by_cpu = top.render(stats, "cpu").splitlines()
    by_mem = top.render(stats, "mem").splitlines()
    assert "2 running" in by_cpu[0] and by_cpu[2].startswith("ID")
    assert "small" in by_cpu[3] and "big" in by_cpu[4]
    assert "big" in by_mem[3] and "50MiB / -" in by_mem[3] and "2KiB / 0B" in by_mem[3]
    assert len(top.render(stats, "mem", limit=1).splitlines()) == 4


def test_sandboxctl_top_live(daemon: Daemon, workload: dict) -> None:
    env = daemon.env(workload["client"].token)
    out = subprocess.run(
        [SANDBOXCTL, "top", "-n", "2", "-d", "0.2", "--sort", "mem"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    screens = out.stdout.split("sandboxctl top - ")[1:]
    assert len(screens) == 2 and "\x1b[2J" not in out.stdout  # not a tty: no clearing
    rows = screens[-1].splitlines()[3:]
    assert rows[0].split()[1] == "hog", screens[-1]
    out = subprocess.run(
        [SANDBOXCTL, "top", "-n", "1", "--sort", "cpu"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.stdout.split("sandboxctl top - ")[1].splitlines()[3].split()[1] == "burner"
