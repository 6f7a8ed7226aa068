"""Small clients shared by the resilience benchmarks (churn, loop, noisy neighbour).

``Api`` is one user's HTTP client (one keep-alive session, one thread); ``KernelSocket`` runs
code on a kernel through the gateway WebSocket with the legacy JSON framing. ``percentile`` is
nearest-rank, ``bucket_quantile`` estimates a quantile from Prometheus histogram buckets the
way ``histogram_quantile`` does (linear inside the bucket).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import uuid
from typing import Any

import requests
import websocket
from harness import BenchDaemon

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


def resilience() -> Any:
    """tests/resilience.py (HostView: what an instance left on the host and in its database)."""
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import resilience as module

    return module


class ApiError(Exception):
    pass


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"

    def call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.http.request(method, self.url + path, timeout=120, **kw)
        if resp.status_code >= 400:
            raise ApiError(f"{method} {path}: {resp.status_code} {resp.text[:300]}")
        return resp.json() if resp.content else None

    def close(self) -> None:
        self.http.close()


def user(d: BenchDaemon, name: str) -> Api:
    body = requests.post(
        d.url + "/api/users", json={"name": name}, headers=d.admin_headers, timeout=30
    ).json()
    return Api(d.url, body["token"])


def quota(d: BenchDaemon, name: str, **values: Any) -> None:
    requests.put(
        f"{d.url}/api/users/{name}/quota", json=values, headers=d.admin_headers, timeout=30
    ).raise_for_status()


class KernelSocket:
    """A kernel's channels WebSocket; ``execute`` returns when execute_reply and idle arrived."""

    def __init__(self, d: BenchDaemon, api: Api, kernel_id: str) -> None:
        url = d.url.replace("http", "ws") + f"/api/kernels/{kernel_id}/channels?session_id=b"
        self.ws = websocket.create_connection(
            url, header=[f"Authorization: token {api.token}"], timeout=120
        )
        self.ws.sock.setsockopt(6, 1, 1)  # TCP_NODELAY

    def execute(self, code: str) -> dict[str, Any]:
        msg_id = uuid.uuid4().hex
        self.ws.send(
            json.dumps(
                {
                    "header": {
                        "msg_id": msg_id,
                        "msg_type": "execute_request",
                        "username": "b",
                        "session": "b",
                        "date": "2026-01-01T00:00:00.000000Z",
                        "version": "5.3",
                    },
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        reply, idle = None, False
        while reply is None or not idle:
            got = json.loads(self.ws.recv())
            if got.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if got["channel"] == "shell":
                reply = got
            elif (
                got["header"]["msg_type"] == "status"
                and got["content"]["execution_state"] == "idle"
            ):
                idle = True
        return reply

    def close(self) -> None:
        self.ws.close()


def kernel_cycle(d: BenchDaemon, api: Api, code: str = "x = 6 * 7") -> None:
    """Start a kernel, run ``code`` through the gateway, shut it down."""
    kernel = api.call("POST", "/api/kernels", json={"name": "python3"})
    ks = KernelSocket(d, api, kernel["id"])
    try:
        reply = ks.execute(code)
        if reply["content"]["status"] != "ok":
            raise ApiError(f"execute failed: {reply['content']}")
    finally:
        ks.close()
    api.call("DELETE", f"/api/kernels/{kernel['id']}")


def percentile(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def histogram(d: BenchDaemon, name: str) -> list[tuple[float, float]]:
    """Cumulative (upper bound, count) buckets of a histogram on /metrics."""
    text = requests.get(d.url + "/metrics", headers=d.admin_headers, timeout=60).text
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((math.inf if le == "+Inf" else float(le), float(line.split()[-1])))
    return sorted(out)


def bucket_quantile(before: list[tuple[float, float]], after: list[tuple[float, float]], q: float):
    """(quantile estimate, observations) of what was observed between two scrapes."""
    counts = [(le, a - b) for (le, a), (_, b) in zip(after, before, strict=True)]
    total = counts[-1][1] if counts else 0
    if total <= 0:
        return float("nan"), 0
    rank = q * total
    lower, below = 0.0, 0.0
    for le, cum in counts:
        if cum >= rank:
            if math.isinf(le):
                return lower, int(total)
            inside = cum - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0), int(total)
        lower, below = le, cum
    return lower, int(total)


def now() -> float:
    return time.perf_counter()
