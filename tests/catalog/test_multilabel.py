"""Multi-label chest layouts (NIH ChestX-ray14 and CheXpert CSVs): label sets, uncertain policies,
membership selectors, and the one-line errors for bad rows and options.

The fixtures are the chest phantom's CSVs (tiny 16-px images rendered in the test), edited
where a test needs a bad row.
"""

from __future__ import annotations

import csv
import uuid
from dataclasses import asdict
from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.errors import BadInput
from services.cli.main import main
from training.catalog.chest import parse_nih_findings
from training.catalog.chest_phantom import PHANTOM_FINDINGS, write_chest_phantom
from training.catalog.ingest import IngestOptions, ingest
from training.catalog.layouts import scan
from training.catalog.splits import select
from training.catalog.store import Catalog, ImageRecord, _compact

N = 24


def _name() -> str:
    return f"chest-{uuid.uuid4().hex[:10]}"


def _rows(table: Path) -> list[dict[str, str]]:
    with table.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _edit(table: Path, row: int, column: str, value: str, extra_line: str = "") -> None:
    """Rewrite ``table`` with one cell changed (and a raw line appended)."""
    rows = _rows(table)
    rows[row][column] = value
    with table.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        fh.write(f"{extra_line}\n" if extra_line else "")


def _truth_nih(table: Path) -> dict[str, set[str]]:
    return {r["Image Index"]: set() if r["Finding Labels"] == "No Finding" else set(r["Finding Labels"].split("|"))
            for r in _rows(table)}


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> Path:
    return write_chest_phantom(tmp_path_factory.mktemp("nih"), N, size=16, seed=1)


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory) -> Path:
    return write_chest_phantom(tmp_path_factory.mktemp("chexpert"), N, size=16, seed=2, layout="chexpert",
                               uncertain_p=0.5)


# -- no stack -------------------------------------------------------------------------------------
def test_nih_finding_labels_parse_or_name_the_problem() -> None:
    assert parse_nih_findings("Pneumonia|Effusion") == (("Effusion", "Pneumonia"), "")
    assert parse_nih_findings("No Finding") == ((), "")
    assert "unknown finding 'Pneumonai'" in parse_nih_findings("Effusion|Pneumonai")[1]
    assert "combines 'No Finding'" in parse_nih_findings("No Finding|Mass")[1]
    assert "empty" in parse_nih_findings("Mass||Edema")[1]


def test_single_label_records_store_no_multilabel_fields() -> None:
    """Single-label manifests keep their JSON (hence their version hash) byte for byte."""
    record = ImageRecord(sha256="0" * 64, label=0, label_name="a", split="train", source_path="a/x.png",
                         bit_depth=8, width=4, height=4)
    body = _compact({"records": [asdict(record)], "findings": None})
    assert "findings" not in body and not {"label_set", "uncertain"} & set(body["records"][0])


def test_bad_rows_are_problems_naming_file_line_and_field(tmp_path: Path) -> None:
    table = write_chest_phantom(tmp_path / "nih", 4, size=16, seed=3)
    _edit(table, 1, "Finding Labels", "Pneumonai", extra_line="x.png,Mass,0,1,PA,extra")  # more cells than columns
    found = scan(table, "nih-cxr14")
    problems = {p.rel_path: p.reason for p in found.problems}
    assert problems["Data_Entry_2017.csv:3"].startswith("field 'Finding Labels': unknown finding 'Pneumonai'")
    assert "more cells" in problems["Data_Entry_2017.csv:6"]
    assert len(found.items) == 3

    cx = write_chest_phantom(tmp_path / "cx", 3, size=16, seed=3, layout="chexpert")
    _edit(cx, 2, "Effusion", "maybe")
    (problem,) = scan(cx, "chexpert").problems
    assert (problem.rel_path, problem.reason) == (
        "train.csv:4", "field 'Effusion': 'maybe' is not 1, 0, -1 (uncertain) or blank")
    with pytest.raises(BadInput, match="--uncertain 'maybe' is not a policy") as err:
        scan(cx, "chexpert", uncertain="maybe")
    assert err.value.field == "uncertain"


# -- on the stack ---------------------------------------------------------------------------------
@pytest.mark.stack
def test_nih_ingest_carries_label_sets_and_selectors_test_membership(nih: Path, catalog: Catalog) -> None:
    manifest = ingest(nih, IngestOptions(name=_name(), layout="nih-cxr14", preset="none",
                                         classes=list(PHANTOM_FINDINGS)), catalog, lambda _: None).manifest
    assert manifest.findings == list(PHANTOM_FINDINGS)
    truth = _truth_nih(nih)
    assert len(manifest.records) == N
    for r in manifest.records:
        name = Path(r.source_path).name
        assert {manifest.findings[i] for i in r.label_set} == truth[name]
        assert r.label_name == ("+".join(f for f in PHANTOM_FINDINGS if f in truth[name]) or "No Finding")
        assert manifest.classes[r.label] == r.label_name
        assert r.patient_id and r.attributes["view_position"] == "PA"
    assert catalog.manifest(manifest.ref) == manifest  # stored and re-read through the hash check

    with_pneumonia = {Path(r.source_path).name for r in select(manifest, "label~Pneumonia")}
    assert with_pneumonia == {k for k, v in truth.items() if "Pneumonia" in v} != set()
    assert select(manifest, "label∋Pneumonia") == select(manifest, "label~Pneumonia")
    assert {Path(r.source_path).name for r in select(manifest, "label!~Pneumonia,label~Effusion")} == \
        {k for k, v in truth.items() if "Pneumonia" not in v and "Effusion" in v}
    assert {Path(r.source_path).name for r in select(manifest, "label=No Finding")} == \
        {k for k, v in truth.items() if not v}
    with pytest.raises(BadInput, match="'Pneumonai' is not a finding"):
        select(manifest, "label~Pneumonai")

    targets, mask = manifest.multi_hot(manifest.records)
    assert targets.shape == (N, 3) and mask.min() == 1.0
    assert targets.sum() == sum(len(v) for v in truth.values())


@pytest.mark.stack
def test_chexpert_uncertain_policies(chexpert: Path, catalog: Catalog) -> None:
    rows = {r["Path"]: r for r in _rows(chexpert)}
    unsure = sum(v == "-1.0" for r in rows.values() for v in r.values())
    assert unsure > 0
    got = {}
    for policy in ("zeros", "ones", "ignore"):
        options = IngestOptions(name=_name(), layout="chexpert", preset="none", layout_options={"uncertain": policy})
        result = ingest(chexpert, options, catalog, lambda _: None)
        got[policy] = result.manifest
        assert result.report["layout_options"] == {"uncertain": policy}
    for policy, manifest in got.items():
        targets, mask = manifest.multi_hot(manifest.records)
        for r, t, m in zip(manifest.records, targets, mask):
            cells = [rows[r.source_path][f] for f in manifest.findings]
            expected = [1.0 if c == "1.0" or (c == "-1.0" and policy == "ones") else 0.0 for c in cells]
            assert t.tolist() == expected, (policy, r.source_path)
            assert m.tolist() == [0.0 if (c == "-1.0" and policy == "ignore") else 1.0 for c in cells]
    assert got["ignore"].version != got["zeros"].version
    assert sum(len(r.uncertain or []) for r in got["ignore"].records) == unsure
    assert all(r.uncertain is None for r in got["zeros"].records)


@pytest.mark.stack
def test_cli_ingest_multilabel_and_bad_options_are_one_line(nih: Path, chexpert: Path) -> None:
    runner = CliRunner()
    name = _name()
    out = runner.invoke(main, ["catalog", "ingest", str(nih), "--name", name, "--layout", "nih-cxr14",
                               "--classes", "Pneumonia,Effusion"])
    assert out.exit_code == 0, out.output
    assert "per finding: {'Pneumonia'" in out.output
    shown = runner.invoke(main, ["catalog", "show", name])
    assert "findings (multi-hot order): Pneumonia, Effusion" in shown.output
    cases = [
        (["--layout", "nih-cxr14", "--classes", "Pneumonia,Flu"], "--classes: 'Flu' is not a finding", nih),
        (["--layout", "nih-cxr14", "--uncertain", "ones"], "uncertain", nih),
        (["--layout", "chexpert", "--uncertain", "maybe"], "'maybe' is not one of", chexpert),
        (["--layout", "nih-cxr14", "--merge", "A=Mass"], "--merge does not apply", nih),
    ]
    for args, message, src in cases:
        out = runner.invoke(main, ["catalog", "ingest", str(src), "--name", _name(), *args])
        assert out.exit_code != 0 and message in out.output, (args, out.output)
        assert "Traceback" not in out.output
