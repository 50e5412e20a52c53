"""Issue 21, item 1: user strings that end up in paths or keys are one safe name each.

The rule (:func:`infra.names.safe_name`) is applied where a name enters — CSV label cells,
class-folder names, ``--merge`` targets, ``--classes``, the phantom's ``--merge``, the model
name of every HTTP body and registry call, experiment names — and every path built from a
stored name is confined to its root (:func:`infra.names.confined`) where it is built:
``catalog export``, ``--report-dir``, the API client's downloads.

Regression input: a CSV layout whose label column holds ``../../escaped`` (two rows) and an
absolute path (two rows), plus ``--merge ../../merged=x,y``; ``catalog export REF DIR`` wrote
PNGs into ``DIR/../escaped/``, into the absolute path and into ``DIR/../merged/``.
"""

from __future__ import annotations

import csv
import io
import json
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from infra.errors import BadInput
from services.cli.main import main
from training.catalog.ingest import IngestOptions, parse_merge
from training.catalog.layouts import scan_csv, scan_imagefolder
from training.catalog.store import Catalog, CatalogError, ImageRecord

HOSTILE = ["../../escaped", "/abs/path", "a/../../b", "..", "a\\..\\b", "x\x01y", "a" * 200]


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (32, 32), dtype=np.uint8)).save(path)


def _csv(root: Path, labels: list[str]) -> Path:
    rows = []
    for i, label in enumerate(labels):
        _png(root / "img" / f"{i}.png", i)
        rows.append({"path": f"img/{i}.png", "label": label, "patient_id": f"p{i}"})
    table = root / "labels.csv"
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["path", "label", "patient_id"])
        writer.writeheader()
        writer.writerows(rows)
    return table


def _issue_csv(root: Path) -> Path:
    """The issue's input: 2 rows ../../escaped, 2 rows an absolute path, and ordinary x/y rows."""
    absolute = str(root.parent / "absolute-target")
    return _csv(root, ["../../escaped", "../../escaped", absolute, absolute] + ["x", "y"] * 4)


# -- entry points, no stack ----------------------------------------------------------------
@pytest.mark.parametrize("label", HOSTILE, ids=repr)
def test_csv_label_cells_are_checked_row_by_row(tmp_path: Path, label: str) -> None:
    found = scan_csv(_csv(tmp_path, [label, "ok", "ok"]))
    assert found.classes == ["ok"] and len(found.items) == 2
    [problem] = found.problems
    assert problem.kind == "bad-label" and problem.rel_path == "labels.csv:2" and "one path component" not in problem.reason
    assert repr(label)[:30] in problem.reason or "characters long" in problem.reason


@pytest.mark.parametrize("folder", ["a\\b", "tab\tname", " lead", "trail "], ids=repr)
def test_class_folder_names_are_checked(tmp_path: Path, folder: str) -> None:
    _png(tmp_path / "ok" / "1.png", 1)
    _png(tmp_path / folder / "2.png", 2)
    found = scan_imagefolder(tmp_path)
    assert found.classes == ["ok"] and [i.label_name for i in found.items] == ["ok"]
    assert [(p.kind, p.rel_path) for p in found.problems] == [("bad-label", f"{folder}/2.png")]


@pytest.mark.parametrize("target", HOSTILE, ids=repr)
def test_merge_targets_and_fixed_classes_are_refused(target: str) -> None:
    with pytest.raises(BadInput, match="--merge target"):
        parse_merge(f"{target}=x,y")
    with pytest.raises(BadInput, match="--merge target"):
        IngestOptions(name="d", layout="csv", merges={target: ["x"]}).validate()
    with pytest.raises(BadInput, match="--classes entry"):
        IngestOptions(name="d", layout="csv", classes=["ok", target]).validate()


def test_the_catalog_refuses_to_publish_unsafe_names() -> None:
    cat = Catalog(store=None)  # refused before the store is touched
    record = ImageRecord(sha256="a" * 64, label=0, label_name="../../escaped", split="train", source_path="x.png",
                         bit_depth=8, width=1, height=1)
    with pytest.raises(CatalogError, match="label_name '../../escaped'"):
        cat.publish_records("d", [record], ["ok"])
    with pytest.raises(CatalogError, match="class name '/abs/path'"):
        cat.publish_records("d", [replace(record, label_name="ok")], ["/abs/path"])
    with pytest.raises(CatalogError, match="split '..'"):
        cat.publish_records("d", [replace(record, label_name="ok", split="..")], ["ok"])


@pytest.mark.parametrize("name", ["..", "../x", "a/../../b", "/abs", "x\x00"], ids=repr)
def test_model_names_in_http_bodies_are_one_component(name: str) -> None:
    from pydantic import ValidationError

    from services.serving.schemas import BatchRequest, SweepRequest, SynthesizeRequest
    from training.registry.generators import parse_model

    for ref in (f"{name}@champion", f"{name}/2", f"models:/{name}@champion"):
        with pytest.raises(BadInput):
            parse_model(ref)
        for body in (SynthesizeRequest, BatchRequest):
            with pytest.raises(ValidationError):
                body.model_validate({"model": ref, "n": 1, "seed": 0})
        with pytest.raises(ValidationError):
            SweepRequest.model_validate({"model": ref, "seed": 0, "dim": 0})


@pytest.mark.parametrize("name", ["..", "."], ids=repr)
def test_experiment_and_registry_names_are_one_component(name: str) -> None:
    from training.experiments.config import ExperimentConfig
    from training.registry.generators import register_run

    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="names the current or parent folder"):
        ExperimentConfig.model_validate({"name": name, "dataset": "d"})
    with pytest.raises(ValidationError, match="register_name 'x/"):
        ExperimentConfig.model_validate({"name": "ok", "dataset": "d", "register_name": f"x/{name}"})
    with pytest.raises(BadInput, match="--name"):
        register_run("run-id", name=f"{name}/x")  # before MLflow is asked anything


@pytest.mark.parametrize("member", ["../../escaped.png", "/abs/escaped.png", "a/../../escaped.png"])
def test_client_downloads_are_confined(tmp_path: Path, member: str) -> None:
    """``synthray generate`` unpacks the server's zip: a hostile member name cannot leave --out."""
    import zipfile

    import httpx

    from infra.settings import Settings
    from services.client import ApiClient

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ok.png", b"png")
        zf.writestr(member, b"png")
    answers = {"/healthz": httpx.Response(200, json={"max_sync_images": 8}),
               "/v1/synthesize": httpx.Response(200, content=buf.getvalue(),
                                                headers={"x-model-name": "m", "x-model-version": "1"})}
    client = ApiClient(Settings(state_dir=tmp_path / "state"), url="http://127.0.0.1:9", api_key="k")
    client.request = lambda method, path, **kw: answers[path]  # type: ignore[method-assign]
    with pytest.raises(BadInput, match="would leave"):
        client.generate("m@champion", 2, 0, tmp_path / "deep" / "out", echo=lambda _: None)
    assert not list(tmp_path.rglob("escaped.png*"))


# -- the issue's input through the real CLI and S3 ----------------------------------------------
def _outside(tmp_path: Path, out: Path) -> list[Path]:
    return [p for p in tmp_path.rglob("*.png") if not p.is_relative_to(out) and not p.is_relative_to(tmp_path / "src")]


@pytest.mark.stack
def test_issue_input_cli_ingest_merge_and_export_stay_confined(tmp_path: Path, catalog: Catalog) -> None:
    table = _issue_csv(tmp_path / "src")
    name = f"hostile-{uuid.uuid4().hex[:8]}"
    runner = CliRunner()

    merged = runner.invoke(main, ["catalog", "ingest", str(table), "--name", name, "--layout", "csv",
                                  "--merge", "../../merged=x,y"])
    assert merged.exit_code == 1, merged.output
    assert merged.output.count("Error:") == 1 and "--merge target '../../merged'" in merged.output
    assert "Traceback" not in merged.output

    phantom = runner.invoke(main, ["catalog", "phantom", "--n", "10", "--size", "32", "--name", name,
                                   "--merge", "/abs/merged=0,1"])
    assert phantom.exit_code == 1 and phantom.output.count("Error:") == 1, phantom.output
    assert "--merge target '/abs/merged'" in phantom.output

    out = runner.invoke(main, ["catalog", "ingest", str(table), "--name", name, "--layout", "csv",
                               "--merge", "xy=x,y", "--split", "train=1", "--report-dir", str(tmp_path / "report")])
    assert out.exit_code == 0, out.output
    assert out.output.count("skipped bad-label") == 4
    ref = out.output.strip().splitlines()[-1]
    manifest = catalog.manifest(ref)
    assert manifest.classes == ["xy"] and {r.label_name for r in manifest.records} == {"xy"}

    export_dir = tmp_path / "deep" / "export"
    exported = runner.invoke(main, ["catalog", "export", ref, str(export_dir)])
    assert exported.exit_code == 0, exported.output
    assert len(list(export_dir.rglob("*.png"))) == len(manifest.records)
    assert _outside(tmp_path, export_dir) == []
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "deep" / "escaped").exists()


@pytest.mark.stack
def test_export_confines_a_tampered_manifest(tmp_path: Path, catalog: Catalog) -> None:
    """A manifest that holds a hostile name (written by an old version, or by hand) cannot escape."""
    from training.catalog.store import _version_of

    _csv(tmp_path / "src", ["ok", "ok"])
    name = f"tampered-{uuid.uuid4().hex[:8]}"
    out = CliRunner().invoke(main, ["catalog", "ingest", str(tmp_path / "src" / "labels.csv"), "--name", name,
                                    "--layout", "csv", "--split", "train=1"])
    assert out.exit_code == 0, out.output
    good = catalog.manifest(out.output.strip().splitlines()[-1])
    body = asdict(good)
    body["records"][0]["label_name"] = "../../escaped"
    body["version"] = ""
    version = _version_of(body)
    body["version"] = version
    catalog.store.put_bytes(catalog.manifest_key(name, version), json.dumps(body, sort_keys=True).encode())

    export_dir = tmp_path / "deep" / "export"
    with pytest.raises(BadInput, match="would leave"):
        catalog.export(f"{name}@{version}", export_dir)
    assert _outside(tmp_path, export_dir) == []
    exported = CliRunner().invoke(main, ["catalog", "export", f"{name}@{version}", str(export_dir)])
    assert exported.exit_code == 1 and exported.output.count("Error:") == 1, exported.output
