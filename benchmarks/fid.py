"""synthray's FID vs ``python -m pytorch_fid`` on 2 x N PNGs (default 2,000): time and value.

Two folders of N phantom knees each (64 px, different seeds, so the FID is that of two samples
of one distribution: small, as in model selection). Each case runs in a fresh process, so
imports and model loading count for both:

* ``pytorch_fid_cli``: ``python -m pytorch_fid A B --device cpu`` (its defaults: batch 50,
  DataLoader workers = CPUs, scipy sqrtm).
* ``synthray_cold``: read both folders once (PIL), ``compute_fid`` (batch ``--batch-size``,
  eigen Fréchet distance) - the same work as the CLI.
* ``synthray_cached_reference`` (in the ``synthray_cold`` process, afterwards): the second FID
  against the same real set, as training does every few epochs: fake features + one ``eigh``
  with √Σ_real kept. The S3 download of the cached npz (~40 MB on the local SeaweedFS) is not
  included.
* ``frechet``: eigh vs pytorch-fid's ``calculate_frechet_distance`` on the same 2048-d
  statistics: seconds and |difference|.

Prints one JSON document (and writes it to ``--out``). Absolute seconds depend on the
machine; the ratios and differences are the result.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLI = (
    "from infra.compat import ensure_torchvision; ensure_torchvision(); import runpy; "
    "runpy.run_module('pytorch_fid', run_name='__main__', alter_sys=True)"
)


def _write_phantoms(folder: Path, n: int, seed: int) -> None:
    from training.catalog.phantom import PhantomSpec, make_phantom

    folder.mkdir(parents=True)
    for i, img in enumerate(make_phantom(n, PhantomSpec(size=64, seed=seed))):
        Image.fromarray(img.pixels).save(folder / f"{i:05d}.png")


def _ours(a: Path, b: Path, batch_size: int) -> dict:
    """The synthray side, run in its own process (see main's --ours)."""
    t0 = time.perf_counter()
    from infra.compat import ensure_torchvision

    ensure_torchvision()
    from training.evaluate import fid as F
    from training.evaluate.images import load_image_folder

    t_import = time.perf_counter()
    real, fake = load_image_folder(a).images, load_image_folder(b).images
    t_decode = time.perf_counter()
    model = F.inception(dims=2048)
    F.fid_weights()
    t_model = time.perf_counter()
    f_real, f_fake = F.features(real, model, batch_size), F.features(fake, model, batch_size)
    t_feats = time.perf_counter()
    (mu1, s1), (mu2, s2) = F.statistics(f_real), F.statistics(f_fake)
    fid = F.frechet_distance(mu1, s1, mu2, s2)
    t_fid = time.perf_counter()

    sqrt_s1 = F.sqrt_psd(s1)  # what a cached ReferenceStats keeps (once per process)
    t_warm = time.perf_counter()
    f2 = F.features(fake, model, batch_size)
    fid_cached = F.frechet_distance(mu1, s1, *F.statistics(f2), sqrt_s1=sqrt_s1)
    t_cached = time.perf_counter()

    t_sq = time.perf_counter()
    fid_sqrtm = F.frechet_distance(mu1, s1, mu2, s2, method="sqrtm")
    t_sq_end = time.perf_counter()
    return {
        "fid": fid, "fid_cached_reference": fid_cached, "fid_sqrtm": fid_sqrtm,
        "seconds": {
            "total": t_fid - t0, "import": t_import - t0, "decode": t_decode - t_import,
            "model_load": t_model - t_decode, "features": t_feats - t_model, "frechet_eigh": t_fid - t_feats,
            "cached_reference_fid": t_cached - t_warm, "sqrt_real_once": t_warm - t_fid,
            "frechet_sqrtm": t_sq_end - t_sq, "after_fid": t_sq_end - t_fid,
        },
        "images_per_second": (len(real) + len(fake)) / (t_feats - t_model),
    }


def _timed(cmd: list[str], env: dict) -> tuple[float, str, float]:
    """(wall seconds, stdout, 1-min load average at the end: > CPUs means another job competed)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise click.ClickException(f"{cmd[:3]} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, proc.stdout, os.getloadavg()[0]


@click.command()
@click.option("--n", type=click.IntRange(2, 100_000), default=2000, show_default=True, help="images per folder")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=100, show_default=True, help="synthray batch")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=REPO / "out" / "bench-fid.json",
              show_default=True)
@click.option("--ours", nargs=2, type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              hidden=True)
def main(n: int, batch_size: int, out: Path, ours: tuple[Path, Path] | None) -> None:
    """Time and value of synthray's FID against the pytorch-fid CLI."""
    if ours:
        click.echo(json.dumps(_ours(*ours, batch_size)))
        return
    from infra.settings import get_settings

    weights = get_settings().torch_home
    env = {**os.environ, "TORCH_HOME": str(weights), "HTTPS_PROXY": "http://127.0.0.1:9"}
    with tempfile.TemporaryDirectory(prefix="bench-fid-") as tmp:
        a, b = Path(tmp) / "a", Path(tmp) / "b"
        _write_phantoms(a, n, seed=1)
        _write_phantoms(b, n, seed=2)
        click.echo(f"{n} + {n} phantom PNGs in {tmp}; running the pytorch-fid CLI …", err=True)
        cli_s, cli_out, cli_load = _timed([sys.executable, "-c", CLI, str(a), str(b), "--device", "cpu"], env)
        cli_fid = float(re.search(r"^FID:\s+(\S+)\s*$", cli_out, re.MULTILINE).group(1))
        click.echo(f"CLI: FID {cli_fid} in {cli_s:.1f} s; running synthray …", err=True)
        ours_wall, ours_out, ours_load = _timed([sys.executable, __file__, "--ours", str(a), str(b),
                                      "--batch-size", str(batch_size)], env)
        mine = json.loads(ours_out.strip().splitlines()[-1])
        ours_s = ours_wall - mine["seconds"]["after_fid"]  # process start to FID; extras excluded
    report = {
        "n_per_side": n, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "pytorch_fid_cli": {"fid": cli_fid, "seconds": cli_s, "load_avg_1min_at_end": cli_load},
        "synthray_cold": {"fid": mine["fid"], "seconds": ours_s, "phases": mine["seconds"],
                          "images_per_second": mine["images_per_second"], "batch_size": batch_size,
                          "load_avg_1min_at_end": ours_load},
        "synthray_cached_reference": {"fid": mine["fid_cached_reference"],
                                      "seconds": mine["seconds"]["cached_reference_fid"]},
        "frechet": {"eigh_seconds": mine["seconds"]["frechet_eigh"], "sqrtm_seconds": mine["seconds"]["frechet_sqrtm"],
                    "abs_diff": abs(mine["fid"] - mine["fid_sqrtm"]),
                    "rel_diff": abs(mine["fid"] - mine["fid_sqrtm"]) / abs(mine["fid_sqrtm"])},
        "fid_abs_diff_vs_cli": abs(mine["fid"] - cli_fid),
        "fid_rel_diff_vs_cli": abs(mine["fid"] - cli_fid) / abs(cli_fid),
        "time_ratio_cold": ours_s / cli_s,
        "time_ratio_cached_reference": mine["seconds"]["cached_reference_fid"] / cli_s,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    click.echo(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
