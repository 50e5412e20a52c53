"""Issue 21, item 7: every input of a run is checked on the driver before any worker (or any
run of a plan) starts, and a worker's input error is never retried.

Regression input: ``train gan --init-from s3://BUCKET/ray-results/does-not-exist/checkpoint_000000``
started the workers, failed, retried (max_failures = 1), failed again and printed a
``WorkerGroupError`` traceback after about 30 s.
"""

from __future__ import annotations

import io
import time
from collections import Counter

import pytest
import torch
from click.testing import CliRunner

from infra.errors import BadInput, NotFound, Unavailable
from infra.settings import Settings
from infra.train_failures import fit_or_input_error, input_error, is_input_error

# -- a worker's input error is final (no stack) ----------------------------------------------


def _worker_group_error(*errors: BaseException):
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    return WorkerGroupError("boom", {rank: UserExceptionWithTraceback(e, "tb") for rank, e in enumerate(errors)})


def test_the_failure_policy_retries_outages_and_crashes_but_not_input_errors() -> None:
    from ray.train import FailureConfig

    from infra.train_failures import _policy_class

    policy = _policy_class()(FailureConfig(max_failures=3))
    assert not policy._is_retryable_error(_worker_group_error(NotFound("--init-from x: no checkpoint there")))
    assert not policy._is_retryable_error(_worker_group_error(RuntimeError("gloo reset"), BadInput("shard too small")))
    assert policy._is_retryable_error(_worker_group_error(RuntimeError("worker killed")))
    assert policy._is_retryable_error(_worker_group_error(Unavailable("S3 down")))
    assert policy.make_decision(_worker_group_error(BadInput("x"))).name == "RAISE"
    assert policy.make_decision(_worker_group_error(RuntimeError("x"))).name == "RETRY"


def test_the_driver_reraises_the_workers_input_error() -> None:
    error = _worker_group_error(RuntimeError("collective aborted"), NotFound("--init-from s3://b/x: no checkpoint"))
    assert is_input_error(error.worker_failures[1]) and not is_input_error(error.worker_failures[0])
    assert isinstance(input_error(error), NotFound)

    class Failing:
        def fit(self):
            raise error

    with pytest.raises(NotFound, match="no checkpoint"):
        fit_or_input_error(Failing())


def test_the_trainers_use_the_fail_fast_policy() -> None:
    import ray.train
    from ray.train.torch import TorchConfig

    from infra.train_failures import torch_trainer

    trainer = torch_trainer(lambda: None, torch_config=TorchConfig(backend="gloo"),
                            scaling_config=ray.train.ScalingConfig(num_workers=1))
    assert hasattr(type(trainer), "_initialize_and_run_controller")
    assert type(trainer).__name__ == "FailFastTorchTrainer"  # not silently the default (another Ray)


# -- checks before any worker, on the real stack ----------------------------------------------
@pytest.fixture(scope="module")
def phantom(stack: Settings) -> str:
    from training.catalog.phantom import PhantomSpec
    from training.catalog.selection import publish_phantom

    manifest = publish_phantom(120, PhantomSpec(size=64, seed=5), name="phantom-preflight-test",
                               settings=stack, progress=lambda _: None)
    return str(manifest.ref)


@pytest.fixture
def no_cluster(monkeypatch):
    """Fail the test if anything joins Ray or opens an MLflow run: checks come first."""
    import training.gan.trainer as trainer

    def refuse(*_a, **_k):
        raise AssertionError("a run started before its inputs were checked")

    monkeypatch.setattr(trainer, "connect", refuse)
    monkeypatch.setattr(trainer, "configure", refuse)


def _put_checkpoint(stack: Settings, prefix: str, arch: str) -> str:
    from infra.object_store import ObjectStore
    from training.nets.presets import get_preset

    gen, critic = get_preset(arch).build(1)
    buf = io.BytesIO()
    torch.save({"generator": gen.state_dict(), "critic": critic.state_dict(), "config": {"arch": arch}}, buf)
    ObjectStore(stack).put_bytes(f"{stack.ray_results_prefix}/{prefix}/checkpoint_000000/gan.pt", buf.getvalue())
    return f"s3://{stack.bucket}/{stack.ray_results_prefix}/{prefix}/checkpoint_000000"


@pytest.mark.stack
def test_missing_init_from_is_one_line_in_a_second(stack: Settings, phantom: str, no_cluster) -> None:
    from services.cli.main import main

    uri = f"s3://{stack.bucket}/{stack.ray_results_prefix}/does-not-exist/checkpoint_000000"
    started = time.perf_counter()
    out = CliRunner().invoke(main, ["train", "gan", "--dataset", phantom, "--epochs", "1", "--init-from", uri])
    elapsed = time.perf_counter() - started
    assert out.exit_code == 1, out.output
    assert out.output.count("Error:") == 1 and "Traceback" not in out.output
    assert f"--init-from {uri}: no checkpoint there" in out.output
    assert elapsed < 15, elapsed  # was ~30 s (two worker-group starts); most of this is first imports

    from training.gan.config import GanTrainConfig
    from training.gan.preflight import check_run

    started = time.perf_counter()
    with pytest.raises(NotFound, match="no checkpoint there"):  # warm: the check itself
        check_run(GanTrainConfig(dataset=phantom, epochs=1, init_from=uri), stack)
    assert time.perf_counter() - started < 3


@pytest.mark.stack
def test_init_from_must_fit_the_architecture(stack: Settings, phantom: str, no_cluster) -> None:
    from training.gan.config import GanTrainConfig
    from training.gan.preflight import check_run

    other = _put_checkpoint(stack, "preflight-dcgan", "dcgan-fracture-small")
    fits = _put_checkpoint(stack, "preflight-knee", "wgan-gp-knee-small")
    cfg = GanTrainConfig(dataset=phantom, arch="wgan-gp-knee-small", batch_size=8, workers=1)
    with pytest.raises(BadInput, match="its generator does not fit --arch wgan-gp-knee-small"):
        check_run(cfg.model_copy(update={"init_from": other}), stack)
    check_run(cfg.model_copy(update={"init_from": fits, "transfer_critic": True}), stack)
    with pytest.raises(BadInput, match="use s3://BUCKET/PATH"):
        check_run(cfg.model_copy(update={"init_from": "s3://bucket-only"}), stack)
    with pytest.raises(NotFound, match="no checkpoint there"):
        check_run(cfg.model_copy(update={"init_from": "/nonexistent/checkpoint_000000"}), stack)


@pytest.mark.stack
@pytest.mark.parametrize(("update", "message"), [
    ({"dataset": "no-such-dataset"}, "dataset 'no-such-dataset' does not exist"),
    ({"class_label": 9}, r"has no images of class \? \(9\)"),
    ({"subset": "nope"}, "has no subset 'nope'"),
    ({"batch_size": 5000}, "fewer than one batch"),
    ({"limit": 1, "batch_size": 1}, "FID reference of dataset .* a covariance needs at least 2"),
    ({"arch": "wgan-gp-knee"}, "has 64x64"),
], ids=["dataset", "class", "subset", "batch", "fid-reference", "size"])
def test_every_run_input_is_checked_on_the_driver(stack: Settings, phantom: str, no_cluster, update, message) -> None:
    from training.gan.config import GanTrainConfig
    from training.gan.preflight import check_run

    with pytest.raises((BadInput, NotFound), match=message):
        check_run(GanTrainConfig(dataset=phantom, batch_size=8, workers=1).model_copy(update=update), stack)


@pytest.mark.stack
def test_a_plan_checks_every_step_before_the_first_trains(stack: Settings, phantom: str, monkeypatch) -> None:
    from training.catalog.selection import catalog
    from training.gan import trainer
    from training.gan.config import GanTrainConfig
    from training.gan.methods import plan_method, run_plan

    manifest = catalog(stack).manifest(phantom)
    counts = sorted(Counter(r.label for r in manifest.select(split="train")).values())
    batch = counts[-1]  # the majority class holds a batch; every smaller class does not
    assert counts[0] < batch
    started: list[str] = []
    monkeypatch.setattr(trainer, "train_gan", lambda cfg, **_: started.append(cfg.dataset))
    plan = plan_method(manifest, "IV", GanTrainConfig(dataset=phantom, batch_size=batch, workers=1, fid_every=0))
    with pytest.raises(BadInput, match=r"plan step 'class\d': dataset .* fewer than one batch"):
        run_plan(plan, settings=stack, progress=lambda _: None)
    assert started == []

    # a warm start from a later or unknown step is refused too
    broken = [plan[1], plan[0]]
    with pytest.raises(BadInput, match="not an earlier step"):
        run_plan(broken, settings=stack, progress=lambda _: None)
    assert started == []
