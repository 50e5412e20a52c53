"""Fault drills on the local stack (issue 10): what breaks, what is lost, how long until it recovers.

Every drill is bounded in count and time and talks to loopback only. Each one injects one real
fault into the real service (SIGKILL of a process, not a mock) and then checks the data:

* ``train``: SIGKILL one Ray Train worker half-way through an epoch of ``synthray train``.
  Ray restarts the worker group (``max_failures``) from the last checkpoint (one per epoch here). Reported:
  completed epochs lost (goal 0), the seconds of partial epoch replayed, the time from the kill
  to the resumed run (``resumed_from_epoch`` logged) and to its next finished epoch.
* ``s3-ingest``: SIGKILL SeaweedFS when 30 % of a dataset's blobs are uploaded, restart it,
  check that no version of the dataset is visible, publish again and re-hash every blob.
* ``s3-batch``: SIGKILL SeaweedFS while a batch job writes shards, keep it down ``--outage`` s,
  restart it. Check that no manifest was published, re-POST the batch if it failed (same id:
  shards already written are kept), then check counts and re-hash every shard object.
* ``serve``: clients (urllib3 ``Retry``: 5xx and 503 with Retry-After, connection errors) keep
  asking for images while the Synthesizer replica is SIGKILLed. Reported: attempts that failed,
  requests that still failed after retries (goal 0), the time until a new replica served.

Writes (merges into) ``out/bench/fault_drills.json``; ``--only`` picks drills.
"""

from __future__ import annotations

import hashlib
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import click
import psutil
from _common import bench_dataset, bench_generator, serve_client, write_json

from infra.settings import get_settings
from infra.stack import LocalStack

OUT = Path("out/bench/fault_drills.json")


def _procs(marker: str) -> list[psutil.Process]:
    """This machine's processes whose command line contains ``marker`` (Ray sets actor titles)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def _wait_for(what: str, check: Callable[[], object], timeout_s: float, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every_s)
    raise click.ClickException(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _kill_s3(stack: LocalStack) -> float:
    stack.down(progress=click.echo, only=["seaweedfs"], graceful=False)  # SIGKILL: an outage, not a shutdown
    return time.monotonic()


# -- training -------------------------------------------------------------------------------------
def drill_train(epochs: int, images: int) -> dict:
    """Kill one Ray Train worker mid-epoch; the run must finish every epoch from its checkpoint."""
    from mlflow import MlflowClient

    from training.gan.config import GanTrainConfig
    from training.nets.presets import get_preset
    from training.gan.trainer import train_gan

    arch = "wgan-gp-knee-small"
    settings = get_settings()
    # 2 workers x 1 CPU do not fit next to the Serve app on a 2-CPU head (Train waits, then times out).
    subprocess.run([sys.executable, "-m", "services.cli.main", "serve", "down"], check=True)
    dataset = bench_dataset(images, get_preset(arch).image_size)
    # checkpoint_every=1: the drill measures resuming from the last completed epoch (the default
    # cadence checkpoints less often and would lose up to one interval by design).
    cfg = GanTrainConfig(dataset=dataset, arch=arch, epochs=epochs, workers=2, batch_size=32, fid_every=0,
                         grid_size=16, max_failures=1, checkpoint_every=1, experiment="synthray-bench-faults")
    mlflow = MlflowClient(settings.mlflow_tracking_uri)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(run=train_gan(cfg, progress=click.echo)), daemon=True)
    started = time.time()
    thread.start()

    def running_run():
        exp = mlflow.get_experiment_by_name(cfg.experiment)
        runs = exp and mlflow.search_runs([exp.experiment_id], f"attributes.start_time >= {int(started * 1000)}")
        return runs[0] if runs else None

    run = _wait_for("the training run", running_run, 300)

    def epochs_logged():
        return sorted(mlflow.get_metric_history(run.info.run_id, "epoch"), key=lambda m: m.timestamp)

    first = _wait_for("the first epoch", epochs_logged, 600)
    rate = mlflow.get_metric_history(run.info.run_id, "images_per_s")[0].value
    epoch_s = (images // 32) * 32 / rate
    time.sleep(epoch_s / 2)  # half-way through epoch 2
    before = epochs_logged()
    victim = max(_procs("RayTrainWorker"), key=lambda p: p.pid)
    killed_at = time.time()
    victim.send_signal(signal.SIGKILL)
    click.echo(f"train: SIGKILL worker pid {victim.pid} after epoch {int(before[-1].value)} "
               f"({killed_at - before[-1].timestamp / 1000:.1f} s into the next, epoch ≈ {epoch_s:.1f} s)")
    thread.join(timeout=1800)
    if "run" not in result:
        raise click.ClickException("training did not finish after the worker was killed")
    history = epochs_logged()
    resumed = mlflow.get_metric_history(run.info.run_id, "resumed_from_epoch")
    after_kill = [m for m in history if m.timestamp / 1000 > killed_at]
    completed_before = int(before[-1].value)
    resumed_from = int(resumed[0].value) if resumed else None
    return {
        "run_id": run.info.run_id, "epochs": epochs, "epoch_s": epoch_s, "killed_pid": victim.pid,
        "completed_before_kill": completed_before, "resumed_from_epoch": resumed_from,
        "completed_epochs_lost": None if resumed_from is None else completed_before - resumed_from,
        "partial_epoch_replayed_s": killed_at - before[-1].timestamp / 1000,
        "recovery_s": None if not resumed else resumed[0].timestamp / 1000 - killed_at,
        "next_epoch_after_s": after_kill[0].timestamp / 1000 - killed_at if after_kill else None,
        "final_epoch": int(max(m.value for m in history)),
        "run_status": mlflow.get_run(run.info.run_id).info.status, "first_epoch_s": first[0].timestamp / 1000 - started,
    }


# -- object store -----------------------------------------------------------------------------------
def drill_s3_ingest(n: int) -> dict:
    """Kill S3 at 30 % of a dataset's uploads; nothing visible; the retry publishes every blob intact."""
    from catalog_read import radiographs

    from training.catalog.store import Catalog, encode_png
    from infra.object_store import ObjectStore

    settings = get_settings()
    stack, store = LocalStack(settings), ObjectStore(settings)
    catalog = Catalog(store)
    name = f"drill-ingest-{int(time.time())}"
    items = [(encode_png(p), {"label": 0, "label_name": "drill", "split": "train", "source_path": f"d/{i:05d}.png",
                              "bit_depth": 8, "width": 210, "height": 210, "patient_id": f"p{i:05d}",
                              "preprocessing": []})
             for i, p in enumerate(radiographs(n, 210, seed=7))]
    killed: dict[str, float] = {}

    def progress(done: int, total: int) -> None:
        if not killed and done >= 0.3 * total:
            click.echo(f"s3-ingest: {done}/{total} blobs uploaded, killing SeaweedFS")
            killed["at"], killed["done"] = _kill_s3(stack), done

    error = None
    try:
        catalog.publish(name, items, ["drill"], description="fault drill", progress=progress)
    except Exception as exc:  # noqa: BLE001 - the outage's error is the observation
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    failed_after = time.monotonic() - killed["at"] if killed else None
    click.echo(f"s3-ingest: publish {'failed' if error else 'did not fail'} {failed_after or 0:.1f} s after the kill: {error}")
    t0 = time.monotonic()
    stack.up(progress=click.echo, only=["seaweedfs"])
    restart_s = time.monotonic() - t0
    visible_after_outage = name in catalog.datasets()
    manifest = catalog.publish(name, items, ["drill"], description="fault drill", progress=lambda d, t: None)
    bad = [r.sha256 for r in manifest.records
           if hashlib.sha256(store.get_bytes(catalog.blob_key(r.sha256))).hexdigest() != r.sha256]
    return {"n": n, "dataset": str(manifest.ref), "killed_at_blobs": killed.get("done"), "publish_error": error,
            "failed_after_kill_s": failed_after, "s3_restart_s": restart_s,
            "version_visible_after_outage": visible_after_outage, "retry_records": len(manifest.records),
            "retry_bad_hashes": len(bad)}


def drill_s3_batch(n: int, outage_s: float) -> dict:
    """Kill S3 while a batch job writes shards; no manifest until every shard is stored and hashed."""
    from infra.object_store import ObjectStore
    from services.batches.ids import manifest_key

    settings = get_settings()
    stack, store = LocalStack(settings), ObjectStore(settings)
    model, _ = bench_generator("wgan-gp-knee-small", "bench-batch")
    http, _, _ = serve_client()
    body = {"model": model, "n": n, "seed": int(time.time())}
    bid = http.post("/v1/batches", json=body).raise_for_status().json()["batch_id"]

    def status() -> dict:
        r = http.get(f"/v1/batches/{bid}")
        if r.status_code == 503:  # S3 down and no live coordinator to ask: the API says "retry"
            return {"state": f"unknown (503, Retry-After {r.headers.get('retry-after')})", "progress": {}}
        return r.raise_for_status().json()

    _wait_for("two shards", lambda: status()["progress"].get("shards_done", 0) >= 2, 600)
    before = status()["progress"]
    killed_at = _kill_s3(stack)
    click.echo(f"s3-batch: {bid} at {before['shards_done']}/{before['shards_total']} shards, SeaweedFS killed")
    time.sleep(outage_s)
    during = status()
    click.echo(f"s3-batch: after {outage_s:.0f} s down: state {during['state']}, error {during.get('error')}")
    t0 = time.monotonic()
    stack.up(progress=click.echo, only=["seaweedfs"])
    restarted = time.monotonic()
    manifest_during = store.exists(manifest_key(bid)) if during["state"] != "succeeded" else None
    final = _wait_for("the batch to end", lambda: (s := status())["state"] not in ("queued", "running") and s, 900)
    resubmitted, error_after_restart = final["state"] != "succeeded", final.get("error")
    if resubmitted:  # a failed batch is resumed by POSTing it again: same id, written shards kept
        click.echo(f"s3-batch: {final['state']} ({final.get('error')}); re-POSTing the same request")
        again = http.post("/v1/batches", json=body).raise_for_status().json()
        if again["batch_id"] != bid:
            raise click.ClickException(f"re-POST gave another batch id {again['batch_id']} != {bid}")
        final = _wait_for("the resumed batch", lambda: (s := status())["state"] not in ("queued", "running") and s, 900)
    done_s = time.monotonic() - restarted
    manifest = http.get(final["urls"]["manifest"]).raise_for_status().json() if final["state"] == "succeeded" else {}
    bad = [s["key"] for s in manifest.get("shards", [])
           if hashlib.sha256(store.get_bytes(s["key"])).hexdigest() != s["sha256"]]
    return {"batch_id": bid, "n": n, "shards_total": before["shards_total"], "shards_done_at_kill": before["shards_done"],
            "outage_s": restarted - killed_at,
            "state_during_outage": during["state"], "error_during_outage": during.get("error"),
            "manifest_visible_before_done": manifest_during, "resubmitted": resubmitted,
            "final_state": final["state"], "shards_reused": final["progress"]["shards_reused"],
            "error_after_restart": error_after_restart,
            "manifest_count": manifest.get("count"), "bad_hashes": len(bad), "s3_restart_s": restarted - t0,
            "completed_after_restart_s": done_s}


# -- serving ------------------------------------------------------------------------------------------
def drill_serve(clients: int, seconds: float, kill_at_s: float) -> dict:
    """Kill the Synthesizer replica under load; clients retry, so none should see a failure."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    model, _ = bench_generator("wgan-gp-knee-small", "bench-http")
    _, url, headers = serve_client()
    retry = Retry(total=8, connect=8, read=8, status=8, backoff_factor=0.25, backoff_max=4,
                  status_forcelist=(500, 502, 503, 504), allowed_methods=None, respect_retry_after_header=True,
                  raise_on_status=False)
    records: list[tuple[float, float, int, int]] = []  # start, seconds, final status, failed attempts
    deadline = time.monotonic() + seconds

    def client(i: int) -> None:
        session = requests.Session()
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.headers.update(headers)
        k = 0
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            try:
                r = session.post(f"{url}/v1/synthesize", json={"model": model, "n": 16, "seed": i * 10**6 + k,
                                                                 "format": "npz"}, timeout=120)
                code, attempts = r.status_code, len(r.raw.retries.history) if r.raw.retries else 0
            except requests.RequestException:
                code, attempts = -1, retry.total
            records.append((t0, time.monotonic() - t0, code, attempts))
            k += 1

    replicas = {p.pid for p in _procs("ServeReplica:synthray:Synthesizer")}
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    time.sleep(kill_at_s)
    victim = min(replicas)
    killed_at = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    click.echo(f"serve: SIGKILL Synthesizer replica pid {victim} after {killed_at - started:.1f} s of load")
    new = _wait_for("a new Synthesizer replica", lambda: {p.pid for p in _procs("ServeReplica:synthray:Synthesizer")}
                    - replicas, 300, every_s=0.1)
    replica_s = time.monotonic() - killed_at
    for t in threads:
        t.join()
    ok_after = [s + d for s, d, code, _ in records if code == 200 and s > killed_at]
    around = [d for s, d, _, _ in records if s <= killed_at + replica_s and s + d >= killed_at]
    return {"clients": clients, "seconds": seconds, "requests": len(records), "killed_pid": victim,
            "new_replica_pids": sorted(new), "new_replica_up_s": replica_s,
            "first_ok_after_kill_s": (min(ok_after) - killed_at) if ok_after else None,
            "failed_attempts": sum(a for *_, a in records), "requests_retried": sum(1 for *_, a in records if a),
            "failed_requests": sum(1 for _, _, code, _ in records if code != 200),
            "max_latency_around_kill_s": max(around) if around else None,
            "p50_latency_s": sorted(d for _, d, _, _ in records)[len(records) // 2] if records else None}


DRILLS = ("train", "s3-ingest", "s3-batch", "serve")


@click.command()
@click.option("--only", multiple=True, type=click.Choice(DRILLS), help="run these (default: all)")
@click.option("--epochs", type=click.IntRange(3, 20), default=4, show_default=True, help="train drill")
@click.option("--images", type=click.IntRange(64), default=640, show_default=True, help="train drill dataset")
@click.option("--ingest-n", type=click.IntRange(10, 20000), default=3000, show_default=True)
@click.option("--batch-n", type=click.IntRange(100, 100_000), default=20000, show_default=True)
@click.option("--outage", "outage_s", type=click.FloatRange(1, 300), default=20, show_default=True,
              help="seconds S3 stays down in the batch drill")
@click.option("--clients", type=click.IntRange(1, 32), default=4, show_default=True, help="serve drill")
@click.option("--seconds", type=click.FloatRange(10, 300), default=45, show_default=True, help="serve drill load")
@click.option("--out", type=click.Path(path_type=Path), default=OUT, show_default=True)
def main(only, epochs, images, ingest_n, batch_n, outage_s, clients, seconds, out) -> None:
    import json

    report = json.loads(out.read_text()) if out.exists() else {}
    runs = {"train": lambda: drill_train(epochs, images), "s3-ingest": lambda: drill_s3_ingest(ingest_n),
            "s3-batch": lambda: drill_s3_batch(batch_n, outage_s), "serve": lambda: drill_serve(clients, seconds, 10)}
    for name in only or DRILLS:
        click.echo(f"== drill {name}")
        report[name] = runs[name]() | {"date": time.strftime("%Y-%m-%d %H:%M")}
        click.echo(f"{name}: {report[name]}")
        report |= {"cpus": os.cpu_count(), "machine": platform.platform()}
        write_json(out, report)


if __name__ == "__main__":
    main()
