"""The one settings object of synthray.

Every knob that differs between a laptop, CI and a cluster lives here and is read from
environment variables prefixed ``SYNTHRAY_`` (or a ``.env`` file). The same code then runs
against the local stack, AWS S3, MinIO or an in-cluster MLflow by changing variables only:

    SYNTHRAY_S3_ENDPOINT_URL=https://s3.eu-central-1.amazonaws.com   # AWS
    SYNTHRAY_S3_ENDPOINT_URL=http://minio.data:9000                   # MinIO
    SYNTHRAY_MLFLOW_TRACKING_URI=http://mlflow.synthray:5000          # in-cluster MLflow
    SYNTHRAY_RAY_ADDRESS=auto                                          # inside a Ray pod

Local ports sit above Ray's default worker-port range (10002–19999) so the stack never
collides with Ray's own workers; SeaweedFS also takes each HTTP port + 10000 for gRPC.
"""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from infra.errors import BadInput

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Off a terminal, seconds between a progress bar's plain lines (infra.progress.LINE_EVERY_S).
PROGRESS_LINE_EVERY_S = 30.0


class Settings(BaseSettings):
    """Typed configuration; see the module docstring for how it is set."""

    model_config = SettingsConfigDict(env_prefix="SYNTHRAY_", env_file=".env", extra="ignore")

    # Where the local stack keeps its data, logs and pid files (gitignored).
    state_dir: Path = Field(default=PROJECT_ROOT / ".synthray")

    # Object store (any S3-compatible endpoint). None means AWS's default endpoint.
    s3_endpoint_url: str | None = "http://127.0.0.1:28333"
    s3_access_key: SecretStr = SecretStr("synthray")
    s3_secret_key: SecretStr = SecretStr("synthray-local-secret")
    s3_region: str = "us-east-1"
    bucket: str = "synthray"
    s3_max_concurrency: int = Field(default=16, ge=1, le=256)

    # MLflow tracking server and registry.
    mlflow_tracking_uri: str = "http://127.0.0.1:25000"
    mlflow_artifact_prefix: str = "mlflow"  # artifacts live in s3://{bucket}/{prefix}

    # Ray. "127.0.0.1:PORT" joins the local head; "auto" inside a cluster pod.
    ray_address: str = "127.0.0.1:26379"
    ray_num_cpus: int = Field(default=2, ge=1)
    ray_results_prefix: str = "ray-results"  # Train/Tune checkpoints in s3://{bucket}/{prefix}

    # Ray Serve HTTP proxy. Loopback unless a deployment deliberately opens it.
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=28000, ge=1, le=65535)

    # HTTP API access: bearer keys, comma-separated, and/or a file with one key per line
    # (a mounted Secret in a cluster). With neither, `synthray serve up` writes a random key
    # to ``{state_dir}/api-keys`` so a local API is never open.
    api_keys: SecretStr = SecretStr("")
    api_key_file: Path | None = None
    serve_max_body_bytes: int = Field(default=32 * 2**20, ge=1024)  # larger bodies → 413
    # How often the API re-reads registry aliases (POST /v1/admin/reload forces it at once).
    registry_poll_s: float = Field(default=10.0, gt=0, le=3600)
    # Batch jobs (POST /v1/batches): images per shard (one Ray task, one object) and per job.
    batch_shard_size: int = Field(default=1000, ge=1, le=100_000)
    batch_max_images: int = Field(default=10_000_000, ge=1)
    batch_url_ttl_s: int = Field(default=3600, ge=60, le=7 * 86400)  # presigned URL lifetime
    # CPUs Ray reserves per shard task. 1 suits a cluster; on a 2-CPU laptop next to Serve only
    # one 1-CPU shard fits, and 0.5 runs two. torch threads per shard: the node's usable CPUs ÷
    # the shards that fit on it at once (services.batches.shard.shard_threads), at least ceil(cpus).
    batch_shard_cpus: float = Field(default=1.0, gt=0, le=64)

    # Local SeaweedFS ports (HTTP; gRPC is +10000).
    weed_master_port: int = Field(default=29333, ge=1024, le=55535)
    weed_volume_port: int = Field(default=28080, ge=1024, le=55535)
    weed_filer_port: int = Field(default=28888, ge=1024, le=55535)
    # Volumes the local SeaweedFS may create (64 MB each). 0 = free disk space / 64 MB; a fixed
    # 16 (1 GiB) filled up after a few sessions of checkpoints and MLflow artifacts.
    weed_volume_max: int = Field(default=0, ge=0)

    # Bind address of every local service. Only loopback is accepted.
    bind_host: str = "127.0.0.1"

    # Console: quiet (results and errors only), normal (synthray's lines and progress bars;
    # Ray's and MLflow's chatter only in the log files under state_dir) or verbose (everything).
    # The CLI's --quiet/--verbose override it (infra.progress).
    verbosity: Literal["quiet", "normal", "verbose"] = "normal"
    # Off a terminal (CI, a log file) a progress bar prints a plain line at most once per this
    # many seconds, and work shorter than it prints none (infra.progress). 0 prints from the start.
    progress_line_every_s: float = Field(default=PROGRESS_LINE_EVERY_S, ge=0.0)
    # Log records of the services (Serve app, batch coordinator): "text", or "json" for one JSON
    # object per line (request id, model version, timing) that a log collector parses; the
    # Helm chart sets json.
    log_format: Literal["text", "json"] = "text"

    @field_validator("s3_endpoint_url")
    @classmethod
    def _empty_endpoint_is_aws(cls, value: str | None) -> str | None:
        # An empty SYNTHRAY_S3_ENDPOINT_URL (a chart value left blank) means AWS S3, as None does.
        return value or None

    @field_validator("bind_host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        # A literal IPv4 loopback address only: a prefix check would accept DNS names such
        # as "127.0.0.1.example.com", which resolve to anything.
        try:
            loopback = ipaddress.IPv4Address(value).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise BadInput(f"bind_host must be a loopback address (127.x.x.x), got {value!r}")
        return value

    @property
    def s3_port(self) -> int:
        """Port of the local S3 gateway, parsed from the endpoint URL."""
        from urllib.parse import urlparse

        return urlparse(self.s3_endpoint_url or "").port or 8333

    @property
    def mlflow_port(self) -> int:
        from urllib.parse import urlparse

        return urlparse(self.mlflow_tracking_uri).port or 5000

    @property
    def ray_port(self) -> int:
        return int(self.ray_address.rsplit(":", 1)[-1]) if ":" in self.ray_address else 6379

    @property
    def torch_home(self) -> Path:
        """TORCH_HOME for pytorch-fid's weights: inside the state dir, never site-packages."""
        return self.state_dir / "torch"

    @property
    def mlflow_artifacts_destination(self) -> str:
        return f"s3://{self.bucket}/{self.mlflow_artifact_prefix}"

    @property
    def resolved_api_key_file(self) -> Path:
        return self.api_key_file or self.state_dir / "api-keys"

    def api_key_list(self) -> list[str]:
        """Every accepted API key: ``api_keys`` plus the lines of the key file (if it exists)."""
        keys = [k.strip() for k in self.api_keys.get_secret_value().split(",")]
        path = self.resolved_api_key_file
        if path.is_file():
            keys += [line.strip() for line in path.read_text().splitlines()]
        return [k for k in keys if k and not k.startswith("#")]

    def s3_env(self) -> dict[str, str]:
        """Environment for tools that read AWS-style variables (MLflow server, pyarrow)."""
        env = {
            "AWS_ACCESS_KEY_ID": self.s3_access_key.get_secret_value(),
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key.get_secret_value(),
            "AWS_DEFAULT_REGION": self.s3_region,
        }
        if self.s3_endpoint_url:
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        return env


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
