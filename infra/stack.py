"""The local stack: real SeaweedFS (S3), MLflow tracking server and Ray head on loopback.

Each service runs in its own process group; a pid file records its pid *and* creation
time, so ``down`` stops exactly the process trees ``up`` started (a recycled pid is never
mistaken for ours), ``up`` twice is a no-op, and a stale pid file is simply replaced.
All state (data, logs, pid files) lives under ``settings.state_dir``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from infra.settings import Settings, get_settings
from infra.errors import SynthrayError
from infra.progress import Progress


class StackError(SynthrayError):
    """A service could not start. The message says what to do."""


@dataclass
class Service:
    """How to run, probe and stop one local service."""

    name: str
    argv: list[str]
    ports: list[int]
    url: str
    ready: Callable[[], bool]
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 90.0
    stop_timeout_s: float = 30.0  # SeaweedFS can take > 8 s to shut down gracefully


def port_in_use(host: str, port: int) -> bool:
    """True if something already listens on (host, port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so a port held only by TIME_WAIT sockets is free to them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def _venv_bin(name: str) -> str:
    """An executable installed next to this interpreter (the project's venv)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


class LocalStack:
    """Starts, stops and reports the loopback services of one state directory.

    Args:
        settings: ports, credentials and the state directory.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        self.state = self.settings.state_dir
        self.run_dir = self.state / "run"
        self.log_dir = self.state / "logs"

    # -- service definitions --------------------------------------------------------------
    def services(self) -> list[Service]:
        return [self._seaweedfs(), self._mlflow(), self._ray()]

    def _seaweedfs(self) -> Service:
        s = self.settings
        data = self.state / "seaweedfs"
        s3_config = self.state / "s3.json"
        ports = [s.s3_port, s.weed_master_port, s.weed_volume_port, s.weed_filer_port]
        argv = [
            _venv_bin("weed"), f"-logdir={self.log_dir / 'seaweedfs'}", "server",
            f"-ip={s.bind_host}", f"-ip.bind={s.bind_host}", "-filer", "-s3",
            f"-s3.port={s.s3_port}", f"-s3.config={s3_config}",
            f"-master.port={s.weed_master_port}", f"-volume.port={s.weed_volume_port}",
            f"-filer.port={s.weed_filer_port}", "-master.volumeSizeLimitMB=64",
            # Fixed-port extras (Iceberg 8181, Lance 9101) are off so two stacks can coexist.
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false",
            f"-volume.max={s.weed_volume_max}", f"-dir={data}",
        ]
        return Service(
            name="seaweedfs",
            argv=argv,
            ports=ports + [p + 10000 for p in ports],  # gRPC ports
            url=s.s3_endpoint_url or "",
            ready=self._s3_ready,
        )

    def _mlflow(self) -> Service:
        s = self.settings
        db = self.state / "mlflow" / "mlflow.db"
        argv = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", f"sqlite:///{db}",
            "--artifacts-destination", s.mlflow_artifacts_destination,
            "--host", s.bind_host, "--port", str(s.mlflow_port), "--workers", "1",
        ]
        env = {
            **s.s3_env(),
            # Without this MLflow 3.17 starts 10 processes and ~1.7 GB for its job runner.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        return Service(
            name="mlflow", argv=argv, ports=[s.mlflow_port], url=s.mlflow_tracking_uri,
            ready=self._mlflow_ready, env=env,
        )

    def _ray(self) -> Service:
        s = self.settings
        argv = [
            _venv_bin("ray"), "start", "--head", "--block",
            f"--node-ip-address={s.bind_host}", f"--port={s.ray_port}",
            f"--num-cpus={s.ray_num_cpus}",
            # The dashboard serves Ray's State API, which Ray Train's placement-group cleaner
            # and `ray list` need. Ray's fixed default ports (client 10001, agent 52365,
            # dashboard 8265) move next to the GCS port so two stacks can coexist.
            "--include-dashboard=true", f"--dashboard-host={s.bind_host}",
            f"--dashboard-port={s.ray_port + 3}",
            f"--ray-client-server-port={s.ray_port + 1}",
            f"--dashboard-agent-listen-port={s.ray_port + 2}",
            f"--temp-dir={ray_temp_dir(self.state)}", "--disable-usage-stats",
            f"--object-store-memory={2 * 1024**3}",
        ]
        return Service(
            name="ray", argv=argv, ports=[s.ray_port + i for i in range(4)], url=f"ray://{s.ray_address}",
            ready=self._ray_ready, env=ray_env(), stop_timeout_s=20.0,
        )

    # -- readiness probes ---------------------------------------------------------------
    def _s3_ready(self) -> bool:
        from infra.object_store import ObjectStore

        try:
            ObjectStore(self.settings).ensure_bucket()
        except Exception:  # noqa: BLE001 - any failure means "not ready yet": probe again
            return False
        return True

    def _mlflow_ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.settings.mlflow_tracking_uri}/health", timeout=2).is_success
        except httpx.HTTPError:
            return False

    def _ray_ready(self) -> bool:
        log = self.log_dir / "ray.log"
        return log.exists() and "Ray runtime started" in log.read_text(errors="replace")

    # -- pid files ------------------------------------------------------------------------
    def _pidfile(self, name: str) -> Path:
        return self.run_dir / f"{name}.json"

    def process(self, name: str) -> psutil.Process | None:
        """The live process we started for ``name``, or None (stale files are removed)."""
        pidfile = self._pidfile(name)
        try:
            record = json.loads(pidfile.read_text())
            proc = psutil.Process(record["pid"])
            if abs(proc.create_time() - record["create_time"]) < 1e-3 and proc.is_running():
                return proc
        except (FileNotFoundError, json.JSONDecodeError, KeyError, psutil.Error):
            pass
        pidfile.unlink(missing_ok=True)
        return None

    def _write_pidfile(self, name: str, proc: psutil.Process, argv: list[str]) -> None:
        tmp = self._pidfile(name).with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": proc.pid, "create_time": proc.create_time(), "argv": argv}))
        os.replace(tmp, self._pidfile(name))

    # -- lifecycle ------------------------------------------------------------------------
    def _selected(self, only: Sequence[str] | None) -> list[Service]:
        services = self.services()
        if unknown := set(only or ()) - {svc.name for svc in services}:
            raise StackError(f"unknown service(s) {sorted(unknown)}; known: {[svc.name for svc in services]}")
        return [svc for svc in services if only is None or svc.name in only]

    def up(self, progress: Progress = print, only: Sequence[str] | None = None) -> None:
        """Start every (or each ``only``) service that is not already running; wait until each is ready."""
        # logs/seaweedfs: weed's glog exits on an ERROR it cannot write to -logdir.
        for d in (self.run_dir, self.log_dir, self.log_dir / "seaweedfs", self.state / "mlflow", self.state / "seaweedfs"):
            d.mkdir(parents=True, exist_ok=True)
        self._write_s3_config()
        for svc in self._selected(only):
            if self.process(svc.name):
                progress(f"{svc.name}: already running at {svc.url}")
                continue
            self._start(svc, progress)

    def _start(self, svc: Service, progress: Progress) -> None:
        binary = svc.argv[0]
        if not Path(binary).exists() and shutil.which(binary) is None:
            raise StackError(f"{svc.name}: executable {binary!r} not found; run 'make setup' to install it")
        busy = [p for p in svc.ports if port_in_use(self.settings.bind_host, p)]
        if busy:
            raise StackError(
                f"{svc.name}: port {busy[0]} on {self.settings.bind_host} is already in use by another "
                f"process; stop it or move synthray with SYNTHRAY_* port settings (see README)"
            )
        progress(f"{svc.name}: starting on {svc.url}")
        log = open(self.log_dir / f"{svc.name}.log", "wb")  # noqa: SIM115 - owned by the child
        popen = subprocess.Popen(
            svc.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **svc.env}, start_new_session=True, cwd=self.state,
        )
        log.close()
        self._write_pidfile(svc.name, psutil.Process(popen.pid), svc.argv)
        started = time.monotonic()
        while not svc.ready():
            if popen.poll() is not None:
                self._pidfile(svc.name).unlink(missing_ok=True)
                raise StackError(
                    f"{svc.name}: exited with code {popen.returncode} during start-up; "
                    f"see {self.log_dir / (svc.name + '.log')}"
                )
            if time.monotonic() - started > svc.start_timeout_s:
                self._stop(svc.name, svc.stop_timeout_s)
                raise StackError(
                    f"{svc.name}: not ready after {svc.start_timeout_s:.0f} s; "
                    f"see {self.log_dir / (svc.name + '.log')}"
                )
            time.sleep(0.5)
        progress(f"{svc.name}: ready in {time.monotonic() - started:.1f} s")

    def down(self, progress: Progress = print, only: Sequence[str] | None = None, graceful: bool = True) -> None:
        """Stop exactly the processes this stack started (or each ``only`` one), newest first.

        ``graceful=False`` kills at once: for throwaway stacks (tests), where SeaweedFS's clean
        shutdown (~25 s) protects nothing.
        """
        for svc in reversed(self._selected(only)):
            if self._stop(svc.name, svc.stop_timeout_s if graceful else 0.0):
                progress(f"{svc.name}: stopped")
            else:
                progress(f"{svc.name}: not running")

    def _stop(self, name: str, timeout_s: float) -> bool:
        root = self.process(name)
        if root is None:
            return False
        # Children first collected, so that daemons which left the group still get a signal.
        procs = [root, *root.children(recursive=True)]
        for proc in procs if timeout_s > 0 else ():
            try:
                proc.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)
        self._pidfile(name).unlink(missing_ok=True)
        return True

    def status(self) -> list[dict[str, str]]:
        rows = []
        for svc in self.services():
            proc = self.process(svc.name)
            state = "stopped"
            if proc is not None:
                state = "ready" if svc.ready() else "starting"
            rows.append({"service": svc.name, "state": state, "pid": str(proc.pid) if proc else "-", "url": svc.url})
        return rows

    def _write_s3_config(self) -> None:
        s = self.settings
        config = {
            "identities": [
                {
                    "name": "synthray",
                    "credentials": [
                        {
                            "accessKey": s.s3_access_key.get_secret_value(),
                            "secretKey": s.s3_secret_key.get_secret_value(),
                        }
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }
        path = self.state / "s3.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config))
        tmp.chmod(0o600)
        os.replace(tmp, path)


def ray_temp_dir(state: Path) -> Path:
    """Ray's session directory: inside the state dir unless that path is too long.

    Ray puts Unix sockets under ``{temp}/session_<timestamp>/sockets/``; a socket path over
    107 bytes fails at bind time, so deep checkouts fall back to a short /tmp directory
    keyed by the state dir's hash (still one directory per checkout).
    """
    preferred = state / "ray"
    if len(str(preferred)) <= 40:
        return preferred
    import hashlib

    digest = hashlib.sha256(str(state.resolve()).encode()).hexdigest()[:10]
    return Path("/tmp") / f"synthray-ray-{os.getuid()}-{digest}"


def ray_env() -> dict[str, str]:
    """Environment shared by the Ray head and every driver that joins it.

    Ray 2.60 turns on token auth by default; the loopback-only local stack disables it
    (a cluster manages its token through the chart).
    """
    return {
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # Single-node mode: Ray resolves its node IP to loopback instead of the host NIC.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        **SERVE_FAST_PATH_ENV,
    }


# Ray Serve's request-path options (Ray's performance guide and "high throughput" KubeRay guide),
# read by the proxy and every replica at start, so they must be in the head's environment (the
# chart sets the same on its pods). Each removes a hop a request of /v1/synthesize paid:
# proxy → Api and Api → Synthesizer over gRPC (the response bytes are sent, not put in the object
# store and read back), and user code and the router on the replica's own event loop (not a thread
# and a second loop). Direct ingress stays off: it moves HTTP onto the replicas' own ports.
# Measured in docs/benchmarks.md (2026-12-01).
SERVE_FAST_PATH_ENV = {
    "RAY_SERVE_PROXY_USE_GRPC": "1",
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}
