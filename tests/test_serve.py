"""The synthesis API on a real stack: MLflow registry → Ray Serve → HTTP, and the config.

Two generator versions are registered under one name (the alias ``champion`` moves to the
second), so the tests can tell an alias from a pinned version by the pixels they get back.
"""

from __future__ import annotations

import io
import zipfile

import httpx
import numpy as np
import pytest
import torch

from infra.settings import Settings
from services import serve as serve_ops
from services.packaging import read_images, read_manifest

NAME = "gan-serve-test-wgan-gp-knee-small"
N, SEED = 5, 3


# -- the config file (no stack needed) -----------------------------------------------------
def test_config_is_a_valid_serve_deploy_schema() -> None:
    config = serve_ops.load_config()
    (app,) = config.applications
    assert (app.name, app.route_prefix, app.import_path) == ("synthray", "/", "services.app:build_app")
    deployments = {d.name: d for d in app.deployments}
    assert set(deployments) == {"Api", "Synthesizer"}
    # Must fit next to training on the 2-CPU local head.
    total = sum(d.num_replicas * d.ray_actor_options.num_cpus for d in deployments.values())
    assert total <= 1.0
    assert app.args["max_sync_images"] >= 1


def test_config_import_path_builds_the_app() -> None:
    from ray._common.utils import import_attr
    from ray.serve import Application

    (app,) = serve_ops.load_config().applications
    assert isinstance(import_attr(app.import_path)(app.args), Application)
    with pytest.raises(ValueError, match="max_sync_images"):
        import_attr(app.import_path)({"max_sync_images": 0})


def test_deploy_config_carries_settings_and_code_version(tmp_path) -> None:
    settings = Settings(mlflow_tracking_uri="http://127.0.0.1:1", state_dir=tmp_path)
    (app,) = serve_ops.deploy_config(settings).applications
    env = app.runtime_env["env_vars"]
    assert env["SYNTHRAY_MLFLOW_TRACKING_URI"] == "http://127.0.0.1:1"
    assert env[serve_ops.CODE_VERSION_VAR] == serve_ops.code_version()


@pytest.mark.parametrize(
    ("model", "parsed"),
    [
        ("gan-x@champion", ("gan-x", "champion", None)),
        ("gan-x/12", ("gan-x", None, "12")),
        ("models:/gan-x@challenger", ("gan-x", "challenger", None)),
    ],
)
def test_parse_model_accepts_alias_version_and_uri(model, parsed) -> None:
    from services.app import parse_model

    assert parse_model(model) == parsed


@pytest.mark.parametrize("model", ["gan-x", "gan-x@", "gan-x/0", "gan-x/v2", "a/b@c", "@champion", "gan x@champion", 'q"x@champion'])
def test_parse_model_rejects_ambiguous_references(model) -> None:
    from services.app import parse_model

    with pytest.raises(ValueError, match="NAME@alias"):
        parse_model(model)


def test_up_without_ray_names_the_fix(tmp_path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    settings = Settings(ray_address=dead, state_dir=tmp_path)
    with pytest.raises(serve_ops.ServeError, match=f"Ray is not running at {dead}; .*synthray stack up"):
        serve_ops.up(settings, progress=lambda _: None)


def test_unreachable_registry_is_a_503_not_a_crash(monkeypatch, tmp_path) -> None:
    import socket

    import mlflow

    from services.app import LookupFailure, Synthesizer

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    before = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        synthesizer = Synthesizer.func_or_class(Settings(mlflow_tracking_uri=uri, state_dir=tmp_path))
        result = synthesizer._resolve("gan-x@champion")
    finally:  # Synthesizer points the process-wide MLflow client at the dead URI
        mlflow.set_tracking_uri(before[0])
        mlflow.set_registry_uri(before[1])
    assert isinstance(result, LookupFailure)
    assert result.status == 503 and uri in result.detail


# -- over HTTP -------------------------------------------------------------------------------
def _register(seed: int, stack: Settings):
    from training.model_registry import log_generator
    from training.models.registry import get_preset
    from training.models.sampler import GeneratorSampler

    torch.manual_seed(seed)
    preset = get_preset("wgan-gp-knee-small")
    generator, _ = preset.build()
    # No training run behind these: log them directly, and set champion as a promotion would.
    return log_generator(GeneratorSampler(generator, preset.latent_dim), NAME, alias="champion", settings=stack)


@pytest.fixture(scope="module")
def served(stack: Settings):
    """(base URL, first version, second version = champion); Serve stopped afterwards."""
    first = _register(1, stack)
    second = _register(2, stack)  # moves champion
    messages: list[str] = []
    try:
        url = serve_ops.up(stack, progress=messages.append)
        print("\n".join(messages))
        yield url, first, second
    finally:
        serve_ops.down(stack, progress=print)


@pytest.fixture(scope="module")
def http(served):
    with httpx.Client(base_url=served[0], timeout=120) as client:
        yield client


def _expected(uri: str, stack: Settings, n: int = N, seed: int = SEED) -> np.ndarray:
    from training.model_registry import load_generator

    return load_generator(uri, stack).generate(n, seed)


def _post(http: httpx.Client, **body) -> httpx.Response:
    return http.post("/v1/synthesize", json={"model": f"{NAME}@champion", "n": N, "seed": SEED} | body)


def _error_fields(response: httpx.Response) -> dict[str, str]:
    """{field: message} of a 422 in FastAPI's shape."""
    assert response.status_code == 422, response.text
    return {err["loc"][-1]: err["msg"] for err in response.json()["detail"]}


@pytest.mark.stack
class TestHttp:
    def test_up_reports_running_and_healthz(self, served, http, stack) -> None:
        url, _, _ = served
        assert url == f"http://127.0.0.1:{stack.serve_port}"
        assert http.get("/v1/healthz").json() == {"status": "ok", "max_sync_images": 256}
        state = serve_ops.status(stack)
        assert state["running"] and state["healthy"]
        app = state["applications"]["synthray"]
        assert app["status"] == "RUNNING"
        assert {name: d["status"] for name, d in app["deployments"].items()} == {"Api": "HEALTHY", "Synthesizer": "HEALTHY"}

    def test_png_zip_matches_the_registered_champion(self, served, http, stack) -> None:
        _, _, champion = served
        response = _post(http, format="png-zip")
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/zip"
        images = read_images(response.content)
        assert images.shape == (N, 64, 64) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, _expected(champion.uri, stack))
        with zipfile.ZipFile(io.BytesIO(response.content)) as zf:
            assert len([n for n in zf.namelist() if n.endswith(".png")]) == N
        manifest = read_manifest(response.content)
        assert manifest["synthetic"] is True
        assert manifest["generator"] == {
            "model": NAME, "version": champion.version, "run_id": champion.run_id,
            "uri": f"models:/{NAME}/{champion.version}", "seed": SEED,
        }

    def test_npz_matches_a_pinned_version(self, served, http, stack) -> None:
        _, first, second = served
        response = _post(http, model=f"{NAME}/{first.version}", format="npz")
        assert response.status_code == 200, response.text
        images = read_images(response.content)
        assert images.shape == (N, 64, 64)
        np.testing.assert_array_equal(images, _expected(f"models:/{NAME}/{first.version}", stack))
        # The pinned older version really is another model than the champion.
        assert not np.array_equal(images, _expected(second.uri, stack))
        assert response.headers["x-model-version"] == first.version
        assert read_manifest(response.content)["generator"]["version"] == first.version

    @pytest.mark.parametrize("fmt", ["png-zip", "npz"])
    def test_same_request_same_bytes_other_seed_other_bytes(self, http, fmt) -> None:
        one, two = _post(http, format=fmt), _post(http, format=fmt)
        other = _post(http, format=fmt, seed=SEED + 1)
        assert one.status_code == two.status_code == other.status_code == 200
        assert one.content == two.content
        assert other.content != one.content

    def test_headers_carry_the_resolved_version_and_run(self, served, http) -> None:
        _, first, second = served
        assert first.version != second.version
        response = http.post(
            "/v1/synthesize",
            json={"model": f"{NAME}@champion", "n": 1, "seed": 11},
            headers={"X-Request-Id": "req-42"},
        )
        assert response.status_code == 200, response.text
        headers = response.headers
        assert headers["x-model-version"] == second.version  # the alias, resolved
        assert headers["x-mlflow-run-id"] == second.run_id
        assert headers["x-model-name"] == NAME
        assert headers["x-seed"] == "11"
        assert headers["x-synthetic"] == "true"
        assert headers.get_list("x-request-id") == ["req-42"]  # echoed once, by the Serve proxy
        generated = _post(http, n=1).headers.get_list("x-request-id")
        assert len(generated) == 1 and generated[0]

    def test_n_over_the_cap_points_to_batches(self, http) -> None:
        fields = _error_fields(_post(http, n=257))
        assert set(fields) == {"n"}
        assert "256" in fields["n"] and "/v1/batches" in fields["n"]

    @pytest.mark.parametrize("model", [f"{NAME}-nope@champion", f"{NAME}@no-such-alias", f"{NAME}/999"])
    def test_unknown_model_is_404_naming_it(self, http, model) -> None:
        response = _post(http, model=model)
        assert response.status_code == 404, response.text
        assert model in response.json()["detail"]

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ({"model": NAME}, "model"),  # neither @alias nor /version
            ({"model": f"{NAME}/0"}, "model"),
            ({"n": 0}, "n"),
            ({"seed": -1}, "seed"),
            ({"format": "gif"}, "format"),
            ({"colour": "red"}, "colour"),
        ],
    )
    def test_malformed_body_is_422_naming_the_field(self, http, body, field) -> None:
        fields = _error_fields(_post(http, **body))
        assert set(fields) == {field}
        if field == "model":
            assert "NAME@alias" in fields["model"]

    def test_missing_fields_and_non_json_are_422(self, http) -> None:
        assert set(_error_fields(http.post("/v1/synthesize", json={}))) == {"model", "n", "seed"}
        response = http.post("/v1/synthesize", content=b"not json", headers={"content-type": "application/json"})
        assert response.status_code == 422

    def test_openapi_documents_the_api(self, http) -> None:
        spec = http.get("/openapi.json").json()
        assert {"/v1/synthesize", "/v1/healthz"} <= set(spec["paths"])
        body = spec["components"]["schemas"]["SynthesizeRequest"]
        assert set(body["required"]) == {"model", "n", "seed"}
        assert http.get("/docs").status_code == 200

    def test_up_twice_keeps_serving(self, served, http, stack) -> None:
        messages: list[str] = []
        assert serve_ops.up(stack, progress=messages.append) == served[0]
        assert any("RUNNING" in m for m in messages), messages
        assert _post(http, n=1).status_code == 200

    def test_zz_down_stops_serving(self, served, stack) -> None:
        serve_ops.down(stack, progress=lambda _: None)
        assert serve_ops.status(stack)["running"] is False
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{served[0]}/v1/healthz", timeout=5)
        messages: list[str] = []
        serve_ops.down(stack, progress=messages.append)  # second down: a no-op
        assert messages == ["Ray Serve is not running"]
