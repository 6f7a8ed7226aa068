"""Configuration: the embedded default, the shipped example, and refusals naming the key."""

from __future__ import annotations

import os

import pytest
from conftest import ROOT

from sandboxd import config
from sandboxd.errors import InvalidRequest
from sandboxd.units import format_size, parse_size


def test_embedded_default_needs_no_file() -> None:
    c = config.load()
    assert c.instance == "sbx" and c.listen == "127.0.0.1:8890"
    assert c.state_dir == "/var/lib/sandboxd/sbx" and c.run_dir == "/run/sandboxd/sbx"
    assert "default" in c.profiles and c.profiles["default"].swap == 0


def test_shipped_example_loads() -> None:
    c = config.load(os.path.join(ROOT, "deploy", "sandboxd.example.toml"))
    assert c.profile("large").memory == 16 * 1024**3
    assert c.quota_for("alice").max_sandboxes == 40  # from group research
    assert c.quota_for("zoe").max_sandboxes == 10  # the default


def test_overrides_from_the_command_line(tmp_path) -> None:
    c = config.load(None, {"instance": "sbxq", "listen": "127.0.0.1:9999", "state_dir": None})
    assert c.instance == "sbxq" and c.listen_port == 9999
    assert c.state_dir == "/var/lib/sandboxd/sbxq"


@pytest.mark.parametrize(
    "text, key",
    [
        ("bogus = 1", "bogus"),
        ('instance = "has space"', "instance"),
        ('listen = "nowhere"', "listen"),
        ("tenant_uid_base = 0", "tenant_uid_base"),
        ('volume_roots = ["relative/dir"]', "volume_roots"),
        ('[profiles.default]\nmemory = "lots"', "profiles.default.memory"),
        ("[profiles.default]\ncpus = -1", "profiles.default.cpus"),
        ('[profiles.default]\nmemory = "32g"', "profiles.default.memory"),
        ("[profiles.x]\nunknown_key = 1", "profiles.x.unknown_key"),
        (
            '[profiles.default]\nseccomp_profile = "/no/such/profile.json"',
            "profiles.default.seccomp_profile",
        ),
        ("[quotas.default]\nmax_sandboxes = -1", "quotas.default.max_sandboxes"),
        ('[users.alice]\ngroups = "staff"', "users.alice.groups"),
        ("this is [not toml", "not valid TOML"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, text: str, key: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(InvalidRequest) as info:
        config.load(str(path))
    assert key in info.value.message, info.value.message


def test_missing_file_is_refused(tmp_path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read"):
        config.load(str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    "text, value",
    [
        ("512m", 512 * 1024**2),
        ("1g", 1024**3),
        ("1.5G", 1536 * 1024**2),
        ("64k", 65536),
        ("10mb", 10 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("100", 100),
        (4096, 4096),
    ],
)
def test_sizes(text, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["-1m", "lots", "1x", "", "99999999t", True, None])
def test_bad_sizes(text) -> None:
    with pytest.raises(InvalidRequest):
        parse_size(text)


def test_format_size() -> None:
    assert format_size(64 * 1024**2) == "64MiB" and format_size(512) == "512B"
