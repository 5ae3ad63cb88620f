"""Configuration is checked once with clear messages; the TLS pair is generated race-free."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from tmail import config as tmail_config
from tmail.tls import ensure_certificate


@pytest.mark.parametrize(
    ("name", "value"),
    [("TMAIL_API_BIND", "nowhere"), ("TMAIL_SMTP_BIND", "127.0.0.1:99999"),
     ("TMAIL_MAX_MESSAGE_SIZE", "-1"), ("TMAIL_SMTP_AUTH_REQUIRE_TLS", "perhaps"),
     ("TMAIL_RELAY_NETWORKS", "10.0.0.0/33"), ("TMAIL_ROUTES", "example.org"),
     ("TMAIL_DEFAULT_QUOTA", "1T"), ("TMAIL_RUNNER_STARTTLS", "always")],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(tmail_config.ConfigError, match=name):
        tmail_config.load({name: value})


def test_routes_and_smart_host() -> None:
    config = tmail_config.load({"TMAIL_ROUTES": "example.org=mx.example.net:25,*=127.0.0.1:2600"})
    assert str(config.route_for("EXAMPLE.org")) == "mx.example.net:25"
    assert str(config.route_for("other.test")) == "127.0.0.1:2600"


def test_default_password_is_refused_beyond_loopback() -> None:
    exposed = tmail_config.load({"TMAIL_API_BIND": "0.0.0.0:8080"})
    with pytest.raises(tmail_config.ConfigError, match="TMAIL_ADMIN_PASSWORD"):
        tmail_config.check_api_exposure(exposed)
    tmail_config.check_api_exposure(tmail_config.load({"TMAIL_API_BIND": "[::1]:8080"}))
    tmail_config.check_api_exposure(tmail_config.load(
        {"TMAIL_API_BIND": "0.0.0.0:8080", "TMAIL_ADMIN_PASSWORD": "a real one"}))


def make_certificate(data_dir: str) -> bytes:
    config = tmail_config.load({"TMAIL_DATA_DIR": data_dir})
    cert, _ = ensure_certificate(config)
    return cert.read_bytes()


def test_processes_starting_together_share_one_certificate(tmp_path: Path) -> None:
    with multiprocessing.get_context("fork").Pool(6) as pool:
        certificates = pool.map(make_certificate, [str(tmp_path)] * 12)
    assert len(set(certificates)) == 1
    assert (tmp_path / "tls" / "key.pem").stat().st_mode & 0o077 == 0
    assert [p.name for p in tmp_path.iterdir()] == ["tls"]  # no staging leftovers
