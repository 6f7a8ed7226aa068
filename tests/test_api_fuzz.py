"""API fuzz: schemathesis against the ``/api/openapi.json`` of a real daemon of its own.

Every operation gets generated requests (valid ones, and with ``negative`` ones that break the
schema), sent as a plain user and, for the admin-only and service operations, as the admin.
Every answer must be no 5xx, have a documented status and content type, and match its
documented schema; a request that breaks the schema must be refused (4xx). Sandboxes and
kernels made from fuzzed input are real; the quotas and the profile keep them few, small and
short-lived, and the daemon is purged at the end. ``SANDBOXD_FUZZ_EXAMPLES`` sets the examples
per operation and mode (default 20: about a minute and a half on two cores).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator

import hypothesis
import pytest
import schemathesis
from conftest import PREFIX, SANDBOXD, Daemon, make_daemon, other_instance, stop_daemon
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

# an image archive upload is raw bytes, as an octet stream is
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")

EXAMPLES = int(os.environ.get("SANDBOXD_FUZZ_EXAMPLES", "20"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
USER = "fz"
#: a 400 with one of these says the request's shape was wrong: a request generated from the
#: document (positive) must never get one (other 400s are the policy's: no such command, ...)
SHAPE_REASONS = {"invalid", "bad-body", "malformed-json", "bad-request"}


def config(volume_root: str) -> str:
    return f"""
volume_roots = ["{volume_root}"]
stop_grace_seconds = 0
max_exited_per_user = 5

[profiles.default]
cpus = 0.5
memory = "64m"
pids = 64
disk = "16m"
network = "none"
lifetime = 15             # whatever the fuzzer starts ends soon
max_cpus = 1.0
max_memory = "128m"
max_pids = 128
max_disk = "32m"

[network]
pool = "10.218.0.0/16"    # daemons sharing the test netns need pools of their own
max_networks = 3

[images]
allowed_registries = []   # every pull is refused before a registry is asked: no traffic
max_load_bytes = "1m"
max_store_bytes = "64m"
max_concurrent_pulls = 1

[quotas.default]
max_sandboxes = 3
max_kernels = 1
memory = "256m"
cpus = 2.0
"""


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[Daemon]:
    vol = tempfile.mkdtemp(prefix=f"{PREFIX}-fzvol-")
    os.chmod(vol, 0o755)
    d = make_daemon(other_instance("f"), config(vol))
    d.start()
    d.user(USER)
    try:
        yield d
    finally:
        stop_daemon(d)
        subprocess.run(
            [SANDBOXD, "cleanup", "--instance", d.instance, "--state-dir", d.state_dir, "--purge"],
            capture_output=True,
        )
        shutil.rmtree(vol, ignore_errors=True)


def _run(
    d: Daemon,
    operation: schemathesis.APIOperation,
    token: str,
    mode: GenerationMode,
    statuses: Counter[str],
) -> None:
    """Fuzz one operation, counting the answers by status class."""
    headers = {"Authorization": f"token {token}"}
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    def one(case: schemathesis.Case) -> None:
        if case.headers and "Authorization" in case.headers:
            del case.headers["Authorization"]
        response = case.call(base_url=d.url, headers=headers, timeout=60)
        statuses[f"{response.status_code // 100}xx"] += 1
        statuses[f"{operation.method.upper()} {operation.path} {response.status_code}"] += 1
        case.validate_response(response, checks=checks, headers=headers)
        if mode is GenerationMode.POSITIVE and response.status_code == 400:
            reason = response.json()["reason"]
            assert reason not in SHAPE_REASONS, (
                f"{operation.method.upper()} {operation.path}: the document accepts what the "
                f"code refuses as malformed: {case.query} {case.body!r} -> {response.text}"
            )

    one()


def test_fuzz_every_operation(fuzzed: Daemon) -> None:
    schema = schemathesis.openapi.from_url(fuzzed.url + "/api/openapi.json")
    user_token = fuzzed.users[USER].token
    admin_token = fuzzed.admin.token
    assert user_token and admin_token
    statuses: Counter[str] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.definition.raw.get("x-websocket"):
            modes = [GenerationMode.POSITIVE]  # no upgrade is sent: a 400 not-websocket
        else:
            modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        tokens = [user_token]
        if operation.definition.raw["x-access"] in ("admin", "service"):
            tokens.append(admin_token)
        for token in tokens:
            for mode in modes:
                _run(fuzzed, operation, token, mode, statuses)
        operations += 1
    total = sum(statuses[c] for c in ("2xx", "4xx", "5xx", "1xx", "3xx"))
    print(f"\nfuzz: {total} requests over {operations} operations: {_classes(statuses)}")
    if os.environ.get("SANDBOXD_FUZZ_VERBOSE"):
        print("\n".join(f"  {k}: {v}" for k, v in sorted(statuses.items()) if " " in k))
    assert operations >= 40 and total >= operations * EXAMPLES, total
    assert statuses["2xx"] > 0 and statuses["5xx"] == 0
    _remove_everything(fuzzed)


def _classes(statuses: Counter[str]) -> str:
    return ", ".join(f"{c} {statuses[c]}" for c in ("2xx", "4xx", "5xx") if statuses[c])


def _remove_everything(d: Daemon) -> None:
    """Whatever the fuzzer made goes, through the API; then nothing runs."""
    admin = d.admin
    for kernel in admin.call("GET", "/api/kernels"):
        admin.call("DELETE", f"/api/kernels/{kernel['id']}", expect=204)
    for sb in admin.call("GET", "/api/sandboxes?all=1"):
        admin.call("DELETE", f"/api/sandboxes/{sb['id']}?force=1", expect=204)
    for net in admin.call("GET", "/api/networks"):
        admin.request("DELETE", f"/api/networks/{net['name']}?user={net['user']}")
    assert admin.call("GET", "/api/sandboxes?all=1") == []
    assert admin.call("GET", "/api/status")["running"] == 0
