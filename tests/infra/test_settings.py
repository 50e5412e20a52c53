"""Settings: SYNTHRAY_ environment overrides, the loopback guard and derived values.

Every test builds ``Settings(_env_file=None)`` directly (never the cached ``get_settings``)
on an environment with all ``SYNTHRAY_*`` variables removed, so neither a developer's
``.env`` nor the session stack fixture's exported variables leak in.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import pytest
from pydantic import ValidationError

from infra.settings import PROJECT_ROOT, Settings


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in list(os.environ):
        if key.upper().startswith("SYNTHRAY_"):
            monkeypatch.delenv(key)
    return monkeypatch


def make(**kwargs) -> Settings:
    return Settings(_env_file=None, **kwargs)


def test_defaults_derive_the_developer_stack_ports(env) -> None:
    s = make()
    # The derived ports are parsed from the URL/address fields, whatever their defaults are.
    assert s.s3_port == urlparse(s.s3_endpoint_url).port
    assert s.mlflow_port == urlparse(s.mlflow_tracking_uri).port
    assert s.ray_port == int(s.ray_address.split(":")[1])
    # ... and the developer stack sits on these ports (the test stack must not).
    assert (s.s3_port, s.mlflow_port, s.ray_port) == (28333, 25000, 26379)
    assert s.bind_host == "127.0.0.1"
    assert s.state_dir == PROJECT_ROOT / ".synthray"


def test_prefixed_environment_overrides_every_kind_of_field(env, tmp_path: Path) -> None:
    env.setenv("SYNTHRAY_S3_ENDPOINT_URL", "http://127.0.0.1:31234")
    env.setenv("SYNTHRAY_MLFLOW_TRACKING_URI", "http://127.0.0.1:31500")
    env.setenv("SYNTHRAY_RAY_ADDRESS", "127.0.0.1:31379")
    env.setenv("SYNTHRAY_BUCKET", "other-bucket")
    env.setenv("SYNTHRAY_S3_MAX_CONCURRENCY", "7")
    env.setenv("SYNTHRAY_S3_SECRET_KEY", "sekrit-from-env")
    env.setenv("SYNTHRAY_STATE_DIR", str(tmp_path))
    env.setenv("SYNTHRAY_BIND_HOST", "127.0.0.2")
    s = make()
    assert s.s3_endpoint_url == "http://127.0.0.1:31234"
    assert (s.s3_port, s.mlflow_port, s.ray_port) == (31234, 31500, 31379)
    assert s.bucket == "other-bucket"
    assert s.s3_max_concurrency == 7 and isinstance(s.s3_max_concurrency, int)
    assert s.s3_secret_key.get_secret_value() == "sekrit-from-env"
    assert "sekrit-from-env" not in repr(s)  # secrets stay masked
    assert s.state_dir == tmp_path
    assert s.bind_host == "127.0.0.2"
    assert s.mlflow_artifacts_destination == f"s3://other-bucket/{s.mlflow_artifact_prefix}"


def test_unprefixed_variables_are_ignored(env) -> None:
    env.setenv("BUCKET", "not-mine")
    env.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:1")
    s = make()
    assert s.bucket != "not-mine"
    assert s.s3_endpoint_url != "http://127.0.0.1:1"


def test_out_of_range_values_from_env_are_rejected(env) -> None:
    env.setenv("SYNTHRAY_S3_MAX_CONCURRENCY", "0")
    with pytest.raises(ValidationError, match="s3_max_concurrency"):
        make()


@pytest.mark.parametrize(
    "host",
    ["0.0.0.0", "192.168.1.10", "::", "localhost", "127.0.0.1.example.com", "127.evil.org", ""],
)
def test_bind_host_must_be_a_loopback_address(env, host: str) -> None:
    with pytest.raises(ValidationError) as info:
        make(bind_host=host)
    errors = info.value.errors()
    assert [e["loc"] for e in errors] == [("bind_host",)]
    assert "bind_host must be a loopback address" in errors[0]["msg"]
    assert repr(host) in errors[0]["msg"]


def test_bind_host_from_env_is_validated_too(env) -> None:
    env.setenv("SYNTHRAY_BIND_HOST", "0.0.0.0")
    with pytest.raises(ValidationError, match=r"bind_host must be a loopback address.*'0\.0\.0\.0'"):
        make()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "127.255.0.9"])
def test_any_ipv4_loopback_address_is_accepted(env, host: str) -> None:
    assert make(bind_host=host).bind_host == host


@pytest.mark.parametrize(
    ("address", "port"),
    [("127.0.0.1:26379", 26379), ("127.0.0.1:40001", 40001), ("auto", 6379)],
)
def test_ray_port_is_parsed_from_the_address(env, address: str, port: int) -> None:
    assert make(ray_address=address).ray_port == port


def test_ports_fall_back_to_service_defaults_without_an_explicit_port(env) -> None:
    s = make(s3_endpoint_url="http://127.0.0.1", mlflow_tracking_uri="http://127.0.0.1")
    assert s.s3_port == 8333  # SeaweedFS' S3 default
    assert s.mlflow_port == 5000  # MLflow's default


def test_torch_home_lives_inside_the_state_dir(env, tmp_path: Path) -> None:
    s = make(state_dir=tmp_path / "state")
    assert s.torch_home == tmp_path / "state" / "torch"
    assert s.torch_home.is_relative_to(s.state_dir)
    env.setenv("SYNTHRAY_STATE_DIR", str(tmp_path / "from-env"))
    assert make().torch_home.parent == tmp_path / "from-env"
    # never inside the interpreter's site-packages
    assert ".venv" not in make().torch_home.parts


def test_s3_env_carries_credentials_and_endpoint(env) -> None:
    s = make(s3_endpoint_url="http://127.0.0.1:31234", s3_access_key="ak", s3_secret_key="sk", s3_region="eu-x-1")
    assert s.s3_env() == {
        "AWS_ACCESS_KEY_ID": "ak",
        "AWS_SECRET_ACCESS_KEY": "sk",
        "AWS_DEFAULT_REGION": "eu-x-1",
        "MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:31234",
    }
    # AWS itself: no endpoint override for MLflow.
    assert "MLFLOW_S3_ENDPOINT_URL" not in make(s3_endpoint_url=None).s3_env()


def test_console_and_log_format_from_env(env) -> None:
    assert (make().verbosity, make().log_format) == ("normal", "text")
    env.setenv("SYNTHRAY_VERBOSITY", "quiet")
    env.setenv("SYNTHRAY_LOG_FORMAT", "json")
    assert (make().verbosity, make().log_format) == ("quiet", "json")
    env.setenv("SYNTHRAY_LOG_FORMAT", "yaml")
    with pytest.raises(ValidationError, match="log_format"):
        make()
