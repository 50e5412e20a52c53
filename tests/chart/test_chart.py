"""The Helm chart, the container image and `make train-cluster`, validated offline.

No cluster and no helm binary: helm-python-sdk (Helm's Go SDK through ctypes) renders and
lints the chart, in a child process (tests/chart/chart_tool.py); kubernetes-validate checks every core object (and every pod template inside
the KubeRay objects) against the Kubernetes OpenAPI schemas with unknown fields rejected; a
small schema pins the KubeRay v1 fields the chart writes.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from infra.settings import PROJECT_ROOT

CHART = PROJECT_ROOT / "charts" / "synthray"
KUBE_VERSION = "1.30.0"  # the Kubernetes version the chart is validated against
VALUES = {"default": [], "gpu": [CHART / "values-gpu.yaml"]}
# Trial-style values: the chart creates its own Secrets, bundled S3, sqlite MLflow, ingress, a RayJob.
TRIAL = {"objectStore": {"existingSecret": "", "accessKey": "a", "secretKey": "b", "bundled": {"enabled": True}},
         "apiKeys": {"existingSecret": "", "keys": ["k1", "k2"]}, "mlflow": {"backendStore": {"type": "sqlite"}},
         "ingress": {"enabled": True, "tls": {"enabled": True}}, "rayJob": {"enabled": True}}


def _merge(into: dict, extra: dict) -> dict:
    for key, value in extra.items():
        into[key] = _merge(dict(into.get(key) or {}), value) if isinstance(value, dict) else value
    return into


def _values(kind: str, extra: dict | None = None) -> dict:
    merged: dict = {}
    for path in VALUES[kind]:
        _merge(merged, yaml.safe_load(path.read_text()))
    return _merge(merged, extra or {})


@functools.lru_cache(maxsize=32)
def _helm(op: str, arg: str) -> dict:
    """tests/chart/chart_tool.py in a child process (keeps Helm's Go runtime out of this Ray driver)."""
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("chart_tool.py")), op, arg],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


class HelmFailed(Exception):
    """A Helm error reported by the child process (its class name, then its message)."""


def _ok(result: dict) -> dict:
    if "error" in result:
        raise HelmFailed(f"{result['type']}: {result['error']}")
    return result


def render(values: dict) -> list[dict]:
    out = _ok(_helm("render", json.dumps(values, sort_keys=True)))["files"]
    return [doc for path, text in sorted(out.items()) if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module", params=[("default", None), ("gpu", None), ("default", TRIAL), ("gpu", TRIAL)],
                ids=["default", "gpu", "trial", "gpu-trial"])
def objects(request) -> list[dict]:
    kind, extra = request.param
    return render(_values(kind, extra))


@pytest.mark.parametrize("kind", sorted(VALUES))
def test_chart_lints_strictly(kind: str) -> None:
    report = _ok(_helm("lint", json.dumps({"values": _values(kind), "kube_version": f"v{KUBE_VERSION}"})))
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert report["total_charts_linted"] == 1 and not problems, problems


def test_missing_credentials_fail_the_render_naming_the_value() -> None:
    with pytest.raises(HelmFailed, match=r"HelmRenderError: .*objectStore\.accessKey \(or objectStore\.existingSecret\)"):
        render(_values("default", {"objectStore": {"existingSecret": ""}}))


def test_values_files_pass_yamllint() -> None:
    files = [str(CHART / "values.yaml"), str(CHART / "values-gpu.yaml")]
    proc = subprocess.run([sys.executable, "-m", "yamllint", "-s", "-d",
                           "{extends: default, rules: {line-length: {max: 120}}}", *files],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_core_objects_validate_strictly(objects: list[dict]) -> None:
    core = [o for o in objects if o["apiVersion"] != "ray.io/v1"]
    assert {o["kind"] for o in core} >= {"Deployment", "Service"}
    for obj in core:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)


def test_ray_pod_templates_validate_strictly(objects: list[dict]) -> None:
    for obj in (o for o in objects if o["apiVersion"] == "ray.io/v1"):
        spec = obj["spec"].get("rayClusterConfig") or obj["spec"]["rayClusterSpec"]
        for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                       "template": group["template"]}
            kubernetes_validate.validate(wrapped, KUBE_VERSION, strict=True)


# KubeRay v1 fields the chart writes (ray.io/v1 RayService / RayJob), no unknown keys at these levels.
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
_GROUP = {"rayStartParams": _STRINGS, "template": {"type": "object", "required": ["spec"]}}
_HEAD = {"type": "object", "additionalProperties": False, "required": ["rayStartParams", "template"], "properties": _GROUP}
_WORKER = {"type": "object", "additionalProperties": False, "required": ["groupName", "replicas", "template"],
           "properties": {**_GROUP, "groupName": {"type": "string"}, "replicas": {"type": "integer"},
                          "minReplicas": {"type": "integer"}, "maxReplicas": {"type": "integer"}}}
_CLUSTER = {"type": "object", "additionalProperties": False, "required": ["rayVersion", "headGroupSpec"],
            "properties": {"rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
                           "headGroupSpec": _HEAD, "workerGroupSpecs": {"type": "array", "items": _WORKER}}}
_META = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "maxLength": 63}}}
KUBERAY = {
    "RayService": {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
                   "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayService"},
                                  "metadata": _META, "spec": {
                                      "type": "object", "additionalProperties": False,
                                      "required": ["serveConfigV2", "rayClusterConfig"],
                                      "properties": {"serveConfigV2": {"type": "string"}, "rayClusterConfig": _CLUSTER}}}},
    "RayJob": {"type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "spec"],
               "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": "RayJob"}, "metadata": _META,
                              "spec": {"type": "object", "additionalProperties": False,
                                       "required": ["entrypoint", "rayClusterSpec"],
                                       "properties": {"entrypoint": {"type": "string"},
                                                      "shutdownAfterJobFinishes": {"type": "boolean"},
                                                      "ttlSecondsAfterFinished": {"type": "integer"},
                                                      "activeDeadlineSeconds": {"type": "integer"},
                                                      "backoffLimit": {"type": "integer"},
                                                      "rayClusterSpec": _CLUSTER}}}},
}


def test_kuberay_objects_use_v1_field_names(objects: list[dict]) -> None:
    ray = [o for o in objects if o["apiVersion"] == "ray.io/v1"]
    assert {o["kind"] for o in ray} <= set(KUBERAY) and any(o["kind"] == "RayService" for o in ray)
    for obj in ray:
        jsonschema.validate(obj, KUBERAY[obj["kind"]])


def test_kuberay_schema_rejects_a_misspelt_field() -> None:
    (service,) = [o for o in render(_values("default")) if o["kind"] == "RayService"]
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxReplica"):
        jsonschema.validate(service, KUBERAY["RayService"])


def test_serve_config_is_the_local_file() -> None:
    (service,) = [o for o in render(_values("default")) if o["kind"] == "RayService"]
    local = yaml.safe_load((PROJECT_ROOT / "services" / "serving" / "serve_config.yaml").read_text())
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == local


def test_gpu_values_add_a_gpu_group_with_tolerations() -> None:
    (service,) = [o for o in render(_values("gpu")) if o["kind"] == "RayService"]
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["containers"][0]["image"].endswith("-gpu")
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"]) and gpu["nodeSelector"]
    assert groups["gpu"]["maxReplicas"] >= groups["gpu"]["minReplicas"]


def test_every_container_has_limits_probes_and_runs_as_non_root(objects: list[dict]) -> None:
    pods = []
    for obj in objects:
        if obj["kind"] == "Deployment":
            pods.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
        elif obj["apiVersion"] == "ray.io/v1":
            spec = obj["spec"].get("rayClusterConfig") or obj["spec"]["rayClusterSpec"]
            pods += [(obj["kind"], g["template"]["spec"]) for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]]
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container["resources"]["requests"] and container["resources"]["limits"], name
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    for obj in deployments:
        container = obj["spec"]["template"]["spec"]["containers"][0]
        assert container["readinessProbe"] and container["livenessProbe"], obj["metadata"]["name"]
    for service in (o for o in objects if o["kind"] == "RayService"):
        head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert head["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert head["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_settings_env_and_secrets_are_wired() -> None:
    objects = render(_values("default", TRIAL))
    (service,) = [o for o in objects if o["kind"] == "RayService"]
    env = {e["name"]: e for e in service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
           ["containers"][0]["env"]}
    assert env["SYNTHRAY_MLFLOW_TRACKING_URI"]["value"] == "http://sr-synthray-mlflow:5000"
    assert env["SYNTHRAY_S3_ENDPOINT_URL"]["value"] == "http://sr-synthray-s3:8333"  # the bundled S3
    assert env["SYNTHRAY_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "sr-synthray-s3", "key": "secret-key"}
    assert env["SYNTHRAY_RAY_ADDRESS"]["value"] == "auto"
    # Structured logs in the cluster: synthray's records and Serve's own (serveConfigV2 is the local file).
    assert env["SYNTHRAY_LOG_FORMAT"]["value"] == "json" and env["RAY_SERVE_LOG_ENCODING"]["value"] == "JSON"
    # Serve's request fast path: the same options as the local stack's Ray head (issue 30)
    from infra.stack import SERVE_FAST_PATH_ENV

    assert {name: env[name]["value"] for name in SERVE_FAST_PATH_ENV} == SERVE_FAST_PATH_ENV
    from infra.settings import Settings

    assert Settings(log_format=env["SYNTHRAY_LOG_FORMAT"]["value"]).log_format == "json"  # a value settings accepts
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    assert secrets["sr-synthray-api-keys"]["stringData"]["api-keys"] == "k1\nk2"
    (mlflow,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "sr-synthray-mlflow"]
    container = mlflow["spec"]["template"]["spec"]["containers"][0]
    menv = {e["name"]: e for e in container["env"]}
    assert menv["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://sr-synthray-s3:8333"
    assert menv["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("sqlite:////")
    assert "--artifacts-destination=s3://synthray/mlflow" in container["args"]
    # The default: PostgreSQL from a Secret, external S3, no chart-made credentials.
    default = render(_values("default"))
    (mlflow,) = [o for o in default if o["kind"] == "Deployment"]
    menv = {e["name"]: e for e in mlflow["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert menv["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "synthray-mlflow-db", "key": "uri"}
    assert not [o for o in default if o["kind"] == "Secret"]


def test_ingress_routes_to_the_serve_service_with_tls() -> None:
    (ingress,) = [o for o in render(_values("default", TRIAL)) if o["kind"] == "Ingress"]
    assert ingress["spec"]["tls"][0]["secretName"] == "synthray-tls"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "sr-synthray-serve-svc", "port": {"number": 8000}}


def test_rayjob_entrypoint_parses_with_the_real_cli() -> None:
    from services.cli.cluster import parse_command

    (job,) = [o for o in render(_values("default", TRIAL)) if o["kind"] == "RayJob"]
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[0] == "synthray"
    assert parse_command(args[1:]).name == "gan"
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    import click

    with pytest.raises(click.UsageError, match="--epochz"):
        parse_command(["train", "gan", "--dataset", "d", "--epochz", "3"])


def test_train_cluster_request_renders_a_sized_gpu_job() -> None:
    request = {"args": ["train", "gan", "--dataset", "knee@abc", "--arch", "wgan-gp-knee", "--epochs", "100",
                        "--workers", "4", "--gpu"], "workers": 4, "gpus": 1, "suffix": "t1"}
    manifest = yaml.safe_load(_ok(_helm("rayjob", json.dumps(request)))["manifest"])
    jsonschema.validate(manifest, KUBERAY["RayJob"])
    assert manifest["metadata"]["name"] == "synthray-t1"
    assert shlex.split(manifest["spec"]["entrypoint"])[1:4] == ["train", "gan", "--dataset"]
    (group,) = manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["groupName"] == "gpu" and group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 4
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--ray-address", "http://127.0.0.1:9", "--", "train", "gan", "--dataset", "d"], "no Ray job API at http://127.0.0.1:9"),
    (["--", "train", "gan", "--dataset", "d", "--epochz", "3"], "No such option '--epochz'"),
    (["--", "catalog", "list"], "expected a `train …`, `sweep …` or `experiment …` command"),
])
def test_train_cluster_fails_fast_with_one_line(args: list[str], message: str) -> None:
    from services.cli.main import main

    out = CliRunner().invoke(main, ["cluster", "train", *args])
    assert out.exit_code == 1 and message in out.output
    assert len(out.output.strip().splitlines()) == 1, out.output


def test_make_train_cluster_without_a_cluster_is_one_clear_line(tmp_path: Path) -> None:
    """Through make, in a context with no cluster: kubectl absent or unreachable, either way one line."""
    env = {"PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "KUBECONFIG": str(tmp_path / "no-such-kubeconfig")}
    # -o setup: the suite runs inside `make test`, whose setup already ran; a nested re-install
    # (after an edit to pyproject.toml) would swap packages under the running Ray cluster.
    proc = subprocess.run(["make", "--no-print-directory", "-s", "-o", "setup", "train-cluster",
                           "DATASET=phantom-knee", "EPOCHS=1"],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, proc.stderr
    assert re.search(r"kubectl not found on PATH|no reachable Kubernetes cluster", errors[0]), errors[0]


# -- the container image ---------------------------------------------------------------------------
DOCKERFILE = PROJECT_ROOT / "infra" / "container" / "Dockerfile"


def test_image_matches_the_pins_and_runs_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    pins = dict(re.findall(r"^([a-z0-9-]+)==(\S+)$", (PROJECT_ROOT / "constraints.txt").read_text(), re.M))
    base = re.search(r"^ARG BASE=rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d+)-cpu$", text, re.M)
    assert base and base["ray"] == pins["ray"] and base["py"] == "311"  # requires-python 3.11
    assert "rayproject/ray:" + pins["ray"] + "-py311-cu" in text  # the documented GPU variant, same release
    assert re.search(r"^RUN pip install .*--no-deps -r requirements\.lock", text, re.M)  # CI's locked install
    assert re.search(r"pip install .*--no-deps .*\[cluster\]", text)  # then the project itself, nothing resolved
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users[-1] == "1000"  # the last USER wins: not root
    # The FID weights are not baked in: no build step fetches or copies them.
    assert not [line for line in re.findall(r"^(?:RUN|COPY|ADD) .*$", text, re.M) if "fid" in line or ".pth" in line]
    entrypoint = (PROJECT_ROOT / "infra" / "container" / "entrypoint.sh").read_text()
    assert "synthray fid-weights --from-store" in entrypoint and 'exec "$@"' in entrypoint
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert yaml.safe_load((CHART / "values.yaml").read_text())["ray"]["version"] == pins["ray"]
    assert chart["appVersion"] == "0.1.0"
