"""Model registry, architectures and the final-model file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fedmpq_flwr.models import MODELS, build_model, load_final_model, save_final_model
from fedmpq_flwr.results import MODEL_FILE


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_resnet20_architecture() -> None:
    model = build_model("resnet20").eval()
    assert 260_000 <= num_params(model) <= 280_000
    x = torch.randn(3, 3, 32, 32)
    assert model(x).shape == (3, 10)
    assert model.penultimate(x).shape == (3, 64)
    torch.testing.assert_close(model.fc(model.penultimate(x)), model(x))
    assert isinstance(model.fc, nn.Linear)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 18 + 2  # stem, 9 blocks x 2, 2 shortcuts


def test_resnet20_downsample_shortcuts() -> None:
    model = build_model("resnet20")
    shortcuts = {name: m for name, m in model.named_modules() if name.endswith("downsample")}
    assert sorted(shortcuts) == ["layer2.0.downsample", "layer3.0.downsample"]
    for module in shortcuts.values():
        convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs) == 1
        assert convs[0].kernel_size == (1, 1) and convs[0].stride == (2, 2) and convs[0].bias is None
    # Every other conv is 3x3: the layers its quantization rules declare quantized.
    others = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n]
    assert all(m.kernel_size == (3, 3) for m in others)


def test_tiny_cnn_is_small_and_shapes_match() -> None:
    model = build_model("tiny_cnn", num_classes=7).eval()
    assert num_params(model) < 30_000
    x = torch.randn(5, 3, 32, 32)
    assert model(x).shape == (5, 7)
    assert model.penultimate(x).shape == (5, model.fc.in_features)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10)
    model.train()
    model(torch.randn(8, 3, 32, 32))  # move the BatchNorm running statistics off their defaults
    model.eval()
    save_final_model(tmp_path / MODEL_FILE, model, name, 10)
    loaded = load_final_model(tmp_path)
    assert not loaded.training and type(loaded) is type(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match=r"model\.name 'vgg11'.*resnet20, tiny_cnn"):
        build_model("vgg11")
