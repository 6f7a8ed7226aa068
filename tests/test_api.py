"""The API's contract: every error status from a real bad request, ownership, concurrency."""

from __future__ import annotations

import concurrent.futures
import os

import pytest
import requests
from conftest import VOLUME_ROOT, Client, Daemon

from sandboxd.errors import Reason


def error(resp: requests.Response, status: int, reason: str | None = None) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert set(body) == {"reason", "message"} and body["message"], body
    assert "Traceback" not in resp.text
    assert body["reason"] in set(Reason), body  # every reason is one the document lists
    if reason:
        assert body["reason"] == reason, body
    return body


def test_no_token_is_401(daemon: Daemon) -> None:
    resp = requests.get(daemon.url + "/api/sandboxes")
    error(resp, 401, "no-token")


def test_bad_token_is_401(daemon: Daemon) -> None:
    resp = requests.get(daemon.url + "/api/sandboxes", headers={"Authorization": "token nope"})
    error(resp, 401, "bad-token")


def test_malformed_json_is_400(alice: Client) -> None:
    resp = alice.request(
        "POST", "/api/sandboxes", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    error(resp, 400, "malformed-json")


@pytest.mark.parametrize(
    "body, reason",
    [
        ({}, None),
        ({"command": "ls"}, None),
        ({"command": []}, None),
        ({"command": ["true"], "memory": "-5m"}, None),
        ({"command": ["true"], "memory": "lots"}, None),
        ({"command": ["true"], "memory": "999999999t"}, None),
        ({"command": ["true"], "cpus": -1}, None),
        ({"command": ["true"], "cpus": "fast"}, None),
        ({"command": ["true"], "pids": 0}, None),
        ({"command": ["true"], "disk": "1k"}, None),
        ({"command": ["true"], "name": "../etc"}, None),
        ({"command": ["true"], "env": {"A B": "x"}}, None),
        ({"command": ["true"], "bogus": 1}, None),
        ({"command": ["true"], "volumes": ["work:relative"]}, "bad-volume"),
        ({"command": ["true"], "volumes": ["work:/etc"]}, "bad-volume-target"),
        ({"command": ["true"], "volumes": ["work:/etc/hosts"]}, "bad-volume-target"),
        ({"command": ["true"], "volumes": ["work:/run/kernel"]}, "bad-volume-target"),
        ({"command": ["true"], "volumes": ["work:/run"]}, "bad-volume-target"),
        ({"command": ["true"], "volumes": ["work:/"]}, "bad-volume-target"),
        ({"command": ["true"], "volumes": ["no such:/x"]}, "bad-volume"),
        ({"command": ["true"], "device_read_bps": ["/etc/passwd:1m"]}, None),
        ({"command": ["no-such-binary-here"]}, "bad-command"),
        ({"command": ["true"], "workdir": "/usr/no/such/dir"}, "bad-workdir"),
        ({"command": ["true"], "workdir": "../x"}, None),
    ],
)
def test_bad_create_requests_are_400(alice: Client, body: dict, reason: str | None) -> None:
    before = alice.call("GET", "/api/sandboxes?all=1")
    error(alice.request("POST", "/api/sandboxes", json=body), 400, reason)
    assert alice.call("GET", "/api/sandboxes?all=1") == before  # nothing half-made


@pytest.mark.parametrize(
    "volume, reason",
    [
        ("/etc:/x", "host-path-denied"),
        (f"{VOLUME_ROOT}:/x", "host-path-denied"),
        (f"{VOLUME_ROOT}/../../etc:/x", "volume-denied"),
        ("work/../../bob/work:/x", "volume-denied"),
    ],
)
def test_host_paths_and_dotdot_are_403_for_users(alice: Client, volume: str, reason: str) -> None:
    before = alice.call("GET", "/api/sandboxes?all=1")
    resp = alice.request("POST", "/api/sandboxes", json={"command": ["true"], "volumes": [volume]})
    error(resp, 403, reason)
    assert alice.call("GET", "/api/sandboxes?all=1") == before


def test_unknown_profile_is_404(alice: Client) -> None:
    resp = alice.request("POST", "/api/sandboxes", json={"command": ["true"], "profile": "gpu"})
    error(resp, 404, "unknown-profile")


def test_above_profile_max_is_429(alice: Client) -> None:
    resp = alice.request("POST", "/api/sandboxes", json={"command": ["true"], "memory": "64g"})
    error(resp, 429, "profile-limit")


def test_host_network_is_403_for_a_user_profile(alice: Client) -> None:
    resp = alice.request("POST", "/api/sandboxes", json={"command": ["true"], "network": "host"})
    error(resp, 403, "host-network")


def test_other_users_sandbox_is_404(alice: Client, bob: Client) -> None:
    sb = alice.run(["sleep", "60"])
    try:
        for method, path in [
            ("GET", ""),
            ("DELETE", "?force=1"),
            ("POST", "/stop"),
            ("POST", "/wait"),
            ("GET", "/logs"),
            ("GET", "/stats"),
            ("PATCH", ""),
        ]:
            kw = {"json": {"memory": "64m"}} if method == "PATCH" else {}
            error(bob.request(method, f"/api/sandboxes/{sb['id']}{path}", **kw), 404)
        assert sb["id"] not in [s["id"] for s in bob.call("GET", "/api/sandboxes?all=1")]
        assert alice.call("GET", f"/api/sandboxes/{sb['id']}")["state"] == "running"
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")


def test_admin_sees_all_and_user_cannot_admin(daemon: Daemon, alice: Client) -> None:
    sb = alice.run(["sleep", "60"])
    try:
        ids = [s["id"] for s in daemon.admin.call("GET", "/api/sandboxes")]
        assert sb["id"] in ids
        error(alice.request("GET", "/api/users"), 403, "not-admin")
        error(alice.request("POST", "/api/users", json={"name": "mallory"}), 403)
        error(alice.request("PUT", "/api/users/alice/quota", json={"memory": "1t"}), 403)
        error(
            alice.request("POST", "/api/sandboxes", json={"command": ["true"], "user": "bob"}), 403
        )
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")


def test_name_conflict_is_409_and_running_remove_is_409(alice: Client) -> None:
    sb = alice.run(["sleep", "60"], name="twice")
    try:
        error(
            alice.request("POST", "/api/sandboxes", json={"command": ["true"], "name": "twice"}),
            409,
            "name-taken",
        )
        error(alice.request("DELETE", f"/api/sandboxes/{sb['id']}"), 409, "running")
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")


def test_unknown_sandbox_and_endpoint_are_404(alice: Client) -> None:
    error(alice.request("GET", "/api/sandboxes/ffffffffffffffff"), 404, "unknown-sandbox")
    error(alice.request("GET", "/api/nothing-here"), 404)


def test_duplicate_user_is_409(daemon: Daemon) -> None:
    daemon.user("erin")
    error(daemon.admin.request("POST", "/api/users", json={"name": "erin"}), 409)
    error(daemon.admin.request("POST", "/api/users", json={"name": "Bad Name"}), 400)


def test_ten_concurrent_creates(daemon: Daemon) -> None:
    frank = daemon.user("frank")
    daemon.admin.call("PUT", "/api/users/frank/quota", json={"max_sandboxes": 8})

    def create(i: int) -> requests.Response:
        return frank.request(
            "POST",
            "/api/sandboxes",
            json={"command": ["sleep", "30"], "memory": "64m", "name": f"c{i}"},
        )

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(create, range(10)))
    try:
        codes = sorted(r.status_code for r in responses)
        assert codes.count(201) == 8 and codes.count(429) == 2, codes
        for r in responses:
            if r.status_code == 429:
                error(r, 429, "max-sandboxes")
        running = frank.call("GET", "/api/sandboxes")
        assert len(running) == 8 and all(s["state"] == "running" for s in running)
    finally:
        for s in frank.call("GET", "/api/sandboxes?all=1"):
            frank.call("DELETE", f"/api/sandboxes/{s['id']}?force=1")
        daemon.admin.call("DELETE", "/api/users/frank/quota")


def test_stop_wait_logs_and_exit_code(alice: Client) -> None:
    sb = alice.run(
        [
            "/bin/sh",
            "-c",
            "trap 'exit 7' TERM; echo out; echo err >&2; while true; do sleep 0.1; done",
        ]
    )
    try:
        from helpers import wait_until

        wait_until(lambda: alice.logs(sb["id"])["stderr"] == "err\n")  # the trap is set
        stopped = alice.call("POST", f"/api/sandboxes/{sb['id']}/stop", json={"timeout": 5})
        assert stopped["state"] == "exited" and stopped["exit_code"] == 7
        assert alice.call("POST", f"/api/sandboxes/{sb['id']}/wait")["exit_code"] == 7
        logs = alice.logs(sb["id"])
        assert logs["stdout"] == "out\n" and logs["stderr"] == "err\n"
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")


def test_stop_kills_a_process_ignoring_sigterm(alice: Client) -> None:
    sb = alice.run(["/bin/sh", "-c", "trap '' TERM; echo set; while true; do sleep 0.1; done"])
    from helpers import wait_until

    wait_until(lambda: alice.logs(sb["id"])["stdout"] == "set\n")  # the trap is in place
    stopped = alice.call("POST", f"/api/sandboxes/{sb['id']}/stop", json={"timeout": 0.5})
    assert stopped["state"] == "exited" and stopped["exit_code"] == 137
    alice.call("DELETE", f"/api/sandboxes/{sb['id']}")


def test_auto_remove(alice: Client) -> None:
    sb = alice.run(["true"], auto_remove=True)
    from helpers import wait_until

    wait_until(lambda: alice.request("GET", f"/api/sandboxes/{sb['id']}").status_code == 404)


def test_log_is_size_capped(daemon: Daemon, alice: Client) -> None:
    sb = alice.run(
        ["/bin/sh", "-c", "yes 0123456789012345678901234567890123 | head -c 2000000; sleep 3"]
    )
    try:
        alice.wait(sb["id"])
        log = os.path.join(daemon.state_dir, "logs", f"{sb['id']}.log")
        size = sum(os.path.getsize(p) for p in (log, log + ".1") if os.path.exists(p))
        assert size <= 65536, size  # log_max_bytes in the test config, at all times
        logs = alice.logs(sb["id"])
        assert logs["truncated"] and 0 < len(logs["stdout"]) <= 65536
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")


def test_openapi_document(daemon: Daemon) -> None:
    doc = requests.get(daemon.url + "/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in (
        "/api/sandboxes",
        "/api/sandboxes/{ref}",
        "/api/users/{name}/quota",
        "/api/status",
        "/api/sandboxes/{ref}/stats",
    ):
        assert path in doc["paths"]


def test_status(daemon: Daemon) -> None:
    status = daemon.admin.call("GET", "/api/status")
    assert status["instance"] == daemon.instance and status["cgroup_version"] in (1, 2)


def test_device_io_limits_reach_the_cgroup(daemon: Daemon, alice: Client) -> None:
    dev = "/dev/vda" if os.path.exists("/dev/vda") else None
    if dev is None:
        import stat

        dev = next(
            f"/dev/{d}"
            for d in sorted(os.listdir("/dev"))
            if stat.S_ISBLK(os.stat(f"/dev/{d}").st_mode)
        )
    st = os.stat(dev)
    majmin = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    sb = alice.run(["sleep", "30"], device_read_bps=[f"{dev}:1m"], device_write_iops=[f"{dev}:100"])
    try:
        assert sb["limits"]["io_read_bps"] == [{"device": majmin, "rate": 1024 * 1024}]
        base = f"/sys/fs/cgroup/blkio/{daemon.instance}/alice/{sb['id']}"
        if os.path.isdir(base):  # cgroup v1 host
            with open(f"{base}/blkio.throttle.read_bps_device") as fh:
                assert f"{majmin} {1024 * 1024}" in fh.read()
            with open(f"{base}/blkio.throttle.write_iops_device") as fh:
                assert f"{majmin} 100" in fh.read()
        else:  # cgroup v2 host
            with open(f"/sys/fs/cgroup/{daemon.instance}/alice/{sb['id']}/io.max") as fh:
                line = fh.read()
            assert f"rbps={1024 * 1024}" in line and "wiops=100" in line
    finally:
        alice.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1")


def test_exhausted_tenant_uids_are_503() -> None:
    import subprocess

    from conftest import SANDBOXD, make_daemon, other_instance, stop_daemon

    d = make_daemon(other_instance("u"), config="tenant_uid_base = 890000\ntenant_uid_count = 2\n")
    d.start()
    try:
        d.user("ivan")  # admin took the first uid, ivan the second
        resp = d.admin.request("POST", "/api/users", json={"name": "judy"})
        error(resp, 503, "uids-exhausted")
    finally:
        stop_daemon(d)
        subprocess.run(
            [SANDBOXD, "cleanup", "--instance", d.instance, "--state-dir", d.state_dir, "--purge"],
            capture_output=True,
        )
