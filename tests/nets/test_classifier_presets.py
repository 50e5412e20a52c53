"""Classifier presets (architectures pinned to the papers) and verified pretrained loading. No stack."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from training.nets.classifier import SmallCNN
from training.nets.classifier_presets import CLASSIFIER_PRESETS, get_classifier_preset, parameter_counts
from training.classify.pretrained import FROM_SCRATCH_TAGS, load_pretrained


def _save(state: dict, path: Path) -> str:
    torch.save(state, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def vgg() -> nn.Module:
    torch.manual_seed(0)
    return get_classifier_preset("vgg16-knee").build(num_classes=2)


def test_vgg16_knee_matches_table_6(vgg: nn.Module) -> None:
    assert parameter_counts(vgg) == (19_433_793, 11_798_529)
    preset = get_classifier_preset("vgg16-knee")
    assert (preset.image_size, preset.in_channels, preset.epochs) == (210, 3, 22)
    assert preset.head_for(2) == "sigmoid" and preset.head_for(5) == "softmax"
    assert preset.num_outputs(2) == 1 and preset.num_outputs(5) == 5
    seen: list[torch.Size] = []
    hook = vgg.features.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    try:
        with torch.inference_mode():
            logits = vgg(torch.rand(1, 3, 210, 210) * 2 - 1)
    finally:
        hook.remove()
    assert logits.shape == (1, 1)
    assert seen == [torch.Size([1, 512, 6, 6])]  # 18,432 flattened, as Keras at 210×210×3
    frozen = [p.requires_grad for p in vgg.features[:24].parameters()]
    assert frozen and not any(frozen)
    assert all(p.requires_grad for p in vgg.features[24:].parameters())


def test_resnet18_small_keeps_a_4x4_last_stage() -> None:
    preset = get_classifier_preset("resnet18-small")
    net = preset.build(num_classes=3).eval()
    assert net.conv1.in_channels == 1 and net.conv1.weight.shape == (64, 1, 7, 7)
    seen: list[torch.Size] = []
    net.layer4.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.inference_mode():
        assert net(torch.rand(2, 1, 64, 64) * 2 - 1).shape == (2, 3)
    assert seen == [torch.Size([2, 512, 4, 4])]
    assert preset.head_for(2) == "softmax" and preset.num_outputs(2) == 2
    with pytest.raises(ValueError, match="multi-label"):
        preset.head_for(3, multilabel=True)


@pytest.mark.parametrize("name", ["densenet121", "densenet169"])
def test_densenet_heads(name: str) -> None:
    preset = get_classifier_preset(name)
    assert (preset.image_size, preset.in_channels) == (224, 3)
    assert preset.head_for(2) == "sigmoid" and preset.head_for(4) == "softmax"
    assert preset.head_for(4, multilabel=True) == "multilabel"
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.inference_mode():
        assert preset.build(2).eval()(x).shape == (1, 1)
        assert preset.build(5, multilabel=True).eval()(x).shape == (1, 5)


def test_small_cnn_and_registry() -> None:
    net = get_classifier_preset("small-cnn").build(4)
    assert isinstance(net, SmallCNN) and net(torch.zeros(2, 1, 64, 64)).shape == (2, 4)
    assert set(CLASSIFIER_PRESETS) == {"vgg16-knee", "resnet18-small", "densenet121", "densenet169", "small-cnn"}
    with pytest.raises(ValueError) as err:
        get_classifier_preset("vgg19")
    assert all(name in str(err.value) for name in CLASSIFIER_PRESETS)
    with pytest.raises(ValueError, match="num_classes"):
        get_classifier_preset("small-cnn").num_outputs(1)


def test_load_pretrained_round_trip_and_sha(tmp_path: Path) -> None:
    preset = get_classifier_preset("resnet18-small")
    source = preset.build(3)
    path = tmp_path / "r18.pt"
    sha = _save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    fresh = preset.build(3)
    report = load_pretrained(fresh, str(path), sha)
    assert report.loaded and not report.skipped and report.sha256 == sha
    for key, value in source.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    tags = report.tags()
    assert tags["synthray.pretrained"] == str(path) and tags["synthray.pretrained.sha256"] == sha
    assert tags["synthray.pretrained.loaded"] == str(len(report.loaded))
    assert FROM_SCRATCH_TAGS["synthray.pretrained"].startswith("none")

    wrong = "0" * 64
    with pytest.raises(ValueError) as err:
        load_pretrained(fresh, str(path), wrong)
    assert sha in str(err.value) and wrong in str(err.value)
    with pytest.raises(ValueError, match="missing.pt"):
        load_pretrained(fresh, str(tmp_path / "missing.pt"), sha)


def test_load_pretrained_rejects_another_architecture(tmp_path: Path) -> None:
    path = tmp_path / "cnn.pt"
    sha = _save(SmallCNN(1, 3).state_dict(), path)
    with pytest.raises(ValueError, match="cnn.pt"):
        load_pretrained(get_classifier_preset("resnet18-small").build(3), str(path), sha)


def test_imagenet_resnet18_conv1_sums_to_gray(tmp_path: Path) -> None:
    from infra.compat import ensure_torchvision

    ensure_torchvision()
    from torchvision.models import resnet18

    imagenet = resnet18().state_dict()  # 3-channel conv1, 1000-class fc
    path = tmp_path / "resnet18-imagenet.pth"
    sha = _save(imagenet, path)
    net = get_classifier_preset("resnet18-small").build(3)
    report = load_pretrained(net, str(path), sha)
    assert torch.equal(net.conv1.weight, imagenet["conv1.weight"].sum(1, keepdim=True))
    assert "conv1.weight" in report.loaded and report.notes
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    assert torch.equal(net.layer4[0].conv1.weight, imagenet["layer4.0.conv1.weight"])


def test_imagenet_vgg16_fills_features_and_keeps_the_head(vgg: nn.Module, tmp_path: Path) -> None:
    checkpoint = {f"features.{k}": torch.randn_like(v) for k, v in vgg.features.state_dict().items()}
    checkpoint["classifier.6.weight"] = torch.zeros(1000, 4096)  # torchvision's top: not ours
    path = tmp_path / "vgg16-imagenet.pth"
    sha = _save(checkpoint, path)
    head_before = {k: v.clone() for k, v in vgg.head.state_dict().items()}
    report = load_pretrained(vgg, str(path), sha)
    assert report.skipped == ["classifier.6.weight"] and len(report.loaded) == 26
    assert torch.equal(vgg.features[0].weight, checkpoint["features.0.weight"])
    assert all(torch.equal(vgg.head.state_dict()[k], v) for k, v in head_before.items())
    assert parameter_counts(vgg) == (19_433_793, 11_798_529)  # frozen blocks stay frozen


def test_every_run_of_an_experiment_reads_the_weights_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import training.classify.pretrained as pretrained

    source = get_classifier_preset("small-cnn").build(2)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    reads: list[str] = []
    real = pretrained.read_verified
    monkeypatch.setattr(pretrained, "read_verified", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    monkeypatch.setattr(pretrained, "_last", None)
    for _ in range(3):  # three runs (cells × seeds) in one worker
        model = get_classifier_preset("small-cnn").build(2)
        load_pretrained(model, str(path), digest)
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    assert reads == [str(path)]
    with pytest.raises(ValueError, match="does not match the expected"):  # another claimed hash is checked again
        load_pretrained(get_classifier_preset("small-cnn").build(2), str(path), "0" * 64)
