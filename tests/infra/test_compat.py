"""infra.compat: torchvision's CUDA wheel on CPU torch.

Import-level behaviour is checked in fresh interpreters (a failed or shimmed import changes the
process for good); op-level behaviour in-process after ensure_torchvision().
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infra.compat import SHIMMED_OPS, ensure_torchvision, nms_reference

REPO = Path(__file__).resolve().parents[2]


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def shim_needed() -> bool:
    """Whether a plain ``import torchvision`` fails here (True with the CUDA wheel on CPU torch)."""
    proc = _python("import torchvision")
    if proc.returncode != 0:
        assert "torchvision::nms does not exist" in proc.stderr, proc.stderr[-2000:]
    return proc.returncode != 0


def test_import_without_shim_fails(shim_needed: bool) -> None:
    if not shim_needed:
        pytest.skip("torchvision imports fine without the shim here (its extension loads)")
    assert shim_needed


def test_shim_in_fresh_interpreter(shim_needed: bool) -> None:
    code = """
import json, torch
from infra.compat import ensure_torchvision
first, second = ensure_torchvision(), ensure_torchvision()
import torchvision
model = torchvision.models.resnet18().eval()
with torch.inference_mode():
    out = model(torch.rand(2, 3, 64, 64))
import pytorch_fid.inception
print(json.dumps({"first": first, "second": second, "third": ensure_torchvision(),
                  "shape": list(out.shape), "finite": bool(out.isfinite().all()),
                  "has_ops": torchvision.extension._has_ops(),
                  "fid_cls": pytorch_fid.inception.InceptionV3.__name__}))
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["first"] is shim_needed
    assert res["second"] is res["first"] and res["third"] is res["first"]
    assert res["shape"] == [2, 1000] and res["finite"]
    assert res["has_ops"] is True
    assert res["fid_cls"] == "InceptionV3"


def test_no_shim_when_extension_loads() -> None:
    """Where torchvision's own _C loads (a CUDA machine), nothing is registered or hooked."""
    code = """
import sys, torch
import infra.compat as compat
compat._extension_loads = lambda: True  # stand-in for a machine where _C loads
assert compat.ensure_torchvision() is False and compat.ensure_torchvision() is False
assert not hasattr(torch.ops.torchvision, "nms")
assert not any(isinstance(f, compat._ExtensionHook) for f in sys.meta_path)
print("ok")
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"


def test_recovers_after_failed_import(shim_needed: bool) -> None:
    """A failed ``import torchvision`` leaves torchvision.extension cached; the shim patches it."""
    if not shim_needed:
        pytest.skip("torchvision imports fine without the shim here")
    code = """
import torch
try:
    import torchvision
except RuntimeError:
    pass
from infra.compat import ensure_torchvision
assert ensure_torchvision()
import torchvision
print(torchvision.ops.nms(torch.tensor([[0, 0, 2, 2], [0, 0, 2, 2.1]]), torch.tensor([1.0, 2.0]), 0.5).tolist())
"""
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[1]"


def _brute_force_nms(boxes: list[list[float]], scores: list[float], thr: float) -> list[int]:
    def iou(a: list[float], b: list[float]) -> float:
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    keep: list[int] = []
    for i in sorted(range(len(boxes)), key=lambda k: -scores[k]):
        if all(iou(boxes[i], boxes[j]) <= thr for j in keep):
            keep.append(i)
    return keep


def _random_boxes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 4 + 20
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thr", [0.1, 0.5, 0.8])
def test_torchvision_nms_matches_brute_force(seed: int, thr: float) -> None:
    ensure_torchvision()
    import torchvision

    boxes, scores = _random_boxes(60, seed)
    expected = _brute_force_nms(boxes.float().tolist(), scores.float().tolist(), thr)
    got = torchvision.ops.nms(boxes.float(), scores.float(), thr).tolist()
    assert got == expected
    assert 0 < len(got) < 60  # the example actually suppresses something
    assert nms_reference(boxes, scores, thr).tolist() == expected


def test_batched_nms_and_empty_input() -> None:
    ensure_torchvision()
    import torchvision

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist() == [3, 2]
    # box 1 is in its own class, so it survives
    assert torchvision.ops.batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]), 0.5).tolist() == [3, 1, 2]
    empty = torchvision.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.dtype == torch.long and empty.numel() == 0


def test_unimplemented_ops_raise_clearly(shim_needed: bool) -> None:
    if not shim_needed:
        pytest.skip("real torchvision ops are loaded")
    assert ensure_torchvision() is True
    import torchvision

    with pytest.raises(NotImplementedError, match="roi_align.*CUDA build"):
        torchvision.ops.roi_align(torch.rand(1, 2, 8, 8), torch.tensor([[0, 0, 0, 4, 4.0]]), 2)
    assert torch.ops.torchvision._cuda_version() == -1


def test_shim_covers_every_op_torchvision_uses() -> None:
    """Every torchvision::op named in torchvision's Python sources is shimmed with the arity its
    meta kernels expect; guards against a torchvision upgrade adding ops."""
    ensure_torchvision()
    import torchvision._meta_registrations as meta

    spec = importlib.util.find_spec("torchvision")
    assert spec is not None and spec.submodule_search_locations
    pkg = Path(next(iter(spec.submodule_search_locations)))
    pattern = re.compile(r"torch\.ops\.torchvision\.(\w+)|torchvision::(\w+)|register_meta\(\"(\w+)\"")
    used = {
        next(g for g in m.groups() if g)
        for f in pkg.rglob("*.py")
        for m in pattern.finditer(f.read_text(encoding="utf-8"))
    }
    assert {"nms", "roi_align", "deform_conv2d"} <= used
    assert {f"torchvision::{name}" for name in used} <= set(SHIMMED_OPS)
    source = Path(meta.__file__).read_text(encoding="utf-8")
    decorated = re.findall(
        r'@(?:register_meta\("|torch\.library\.register_fake\("torchvision::)(\w+)"\)\s*def (\w+)',
        source,
    )
    assert len(decorated) >= 10
    for op_name, fn_name in decorated:
        schema = getattr(torch.ops.torchvision, op_name).default._schema
        assert len(inspect.signature(getattr(meta, fn_name)).parameters) == len(schema.arguments), op_name
