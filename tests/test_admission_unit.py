"""Admission without a daemon: the shape (models) and the policy (plain functions over them)."""

from __future__ import annotations

import pytest

from sandboxd import admission, config
from sandboxd.errors import Forbidden, InvalidRequest, NotFound, QuotaExceeded, Reason
from sandboxd.models.requests import LimitsUpdate, SandboxCreate
from sandboxd.models.types import validate
from sandboxd.spec import Limits
from sandboxd.state import User

ALICE = User("alice", 800001, False, False, 0.0)
ADMIN = User("admin", 800000, True, False, 0.0)
CFG = config.load(
    overrides={
        "profiles": {
            "default": {"network": "none", "max_memory": "1g"},
            "gpu": {"memory": "2g", "max_memory": "8g", "allow_host_network": True},
        },
        "users": {"alice": {"profiles": ["default"]}},
    }
)


def spec(body: dict, owner: User = ALICE, admin: bool = False):  # type: ignore[no-untyped-def]
    return admission.build_spec({"command": ["true"], **body}, owner, CFG, admin=admin)


def refused(exc: type, reason: Reason, body: dict, **kw: object) -> None:
    with pytest.raises(exc) as info:
        spec(body, **kw)  # type: ignore[arg-type]
    assert info.value.reason == reason, info.value.message


def test_defaults_come_from_the_profile() -> None:
    s = spec({})
    assert s.profile == "default" and s.network == "none" and s.image == "host"
    assert s.limits.memory == 1 << 30 and s.limits.pids == 512 and s.name == f"sbx-{s.id[:8]}"
    assert s.workdir == "/home/jovyan" and s.seccomp_profile is None


def test_the_request_wins_within_the_profile() -> None:
    s = spec({"memory": "64m", "cpus": "0.5", "pids": 64.0, "env": ["A=1"], "image": "x"})
    assert s.limits.memory == 64 << 20 and s.limits.cpus == 0.5 and s.limits.pids == 64
    assert s.env == (("A", "1"),) and s.image == "x"


@pytest.mark.parametrize(
    "body, key",
    [
        ({"kind": "kernel"}, "kind"),
        ({"memory": "lots"}, "memory"),
        ({"memory": "1m"}, "memory"),
        ({"pids": True}, "pids"),
        ({"pids": 7}, "pids"),
        ({"cpus": 0}, "cpus"),
        ({"stdin": "yes"}, "stdin"),
        ({"workdir": "/a/../b"}, "workdir"),
        ({"env": {"A B": "x"}}, "env"),
        ({"command": ["a\0b"]}, "command[0]"),
        ({"name": "-x"}, "name"),
        ({"user": "A" * 40}, "user"),
    ],
)
def test_malformed_fields_are_named(body: dict, key: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        spec(body)
    assert info.value.message.startswith(f"{key}"), info.value.message
    # sizes have a reason of their own (a string size below the minimum is beyond the schema)
    assert info.value.reason == (Reason.BAD_SIZE if key == "memory" else Reason.INVALID)


def test_policy_refusals() -> None:
    refused(NotFound, Reason.UNKNOWN_PROFILE, {"profile": "nope"})
    refused(Forbidden, Reason.PROFILE_DENIED, {"profile": "gpu"})
    refused(QuotaExceeded, Reason.PROFILE_LIMIT, {"memory": "2g"})
    refused(Forbidden, Reason.HOST_NETWORK, {"network": "host"})
    refused(Forbidden, Reason.HOST_PATH_DENIED, {"volumes": ["/etc:/x"]})
    refused(InvalidRequest, Reason.BAD_VOLUME, {"volumes": ["a:/x", "b:/x"]})
    refused(InvalidRequest, Reason.BAD_PORT, {"network": "bridge", "ports": ["80:80", "80:81"]})
    refused(InvalidRequest, Reason.BAD_NETWORK, {"network": "default"})
    refused(InvalidRequest, Reason.BAD_DEVICE, {"device_read_bps": ["/dev/null:1m"]})


def test_admins_may_do_what_users_may_not() -> None:
    s = spec({"profile": "gpu", "network": "host", "volumes": ["/srv:/x:ro"]}, ADMIN, True)
    assert s.network == "host" and s.volumes[0].host == "/srv" and s.volumes[0].read_only


def test_quota() -> None:
    quota = CFG.quota_for("alice")
    usage = admission.Usage()
    for _ in range(quota.max_sandboxes):
        admission.check_quota("alice", quota, usage, Limits(cpus=0.1, memory=1))
        usage.add(Limits(cpus=0.1, memory=1), "sandbox")
    with pytest.raises(QuotaExceeded) as info:
        admission.check_quota("alice", quota, usage, Limits(cpus=0.1, memory=1))
    assert info.value.reason == Reason.MAX_SANDBOXES


def test_updated_limits_stay_within_the_profile() -> None:
    old = Limits(cpus=1.0, memory=256 << 20, pids=64, disk=1 << 20)
    new = admission.updated_limits(
        old, validate(LimitsUpdate, {"memory": "512m"}), CFG.profile("default")
    )
    assert new.memory == 512 << 20 and new.cpus == 1.0 and new.pids == 64
    with pytest.raises(QuotaExceeded):
        admission.updated_limits(
            old, validate(LimitsUpdate, {"memory": "4g"}), CFG.profile("default")
        )
    with pytest.raises(InvalidRequest):
        validate(LimitsUpdate, {})


def test_one_model_for_the_shape() -> None:
    assert "image" in SandboxCreate.model_fields and "kind" not in SandboxCreate.model_fields
