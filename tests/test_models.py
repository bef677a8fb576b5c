"""Model registry, architectures, the penultimate-features interface and the final-model file."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmpq_flwr.models import MODELS, build_model, load_final_model, save_final_model
from fedmpq_flwr.models.mobilenet import InvertedResidual
from fedmpq_flwr.quant import (
    bit_regularizer,
    quantizable_layers,
    quantize_model,
    quantized_param_count,
    rebinarize_model,
)
from fedmpq_flwr.rundir.results import MODEL_FILE
from fedmpq_flwr.training.distillation import inference_teacher

NAMES = sorted(MODELS)
REPO = Path(__file__).resolve().parents[1]


def documented_counts(path: Path, line_pattern: str) -> dict[str, int]:
    """`model.name` -> parameter count, read from the lines of a page that match `line_pattern`
    (groups: the name, the count written with thousands separators)."""
    found = re.findall(line_pattern, path.read_text(), flags=re.MULTILINE)
    return {name: int(count.replace(",", "")) for name, count in found}


README_COUNTS = documented_counts(REPO / "README.md", r"^- `(\w+)`: ([\d,]+) parameters")
MODELS_PAGE_COUNTS = documented_counts(REPO / "docs" / "models.md", r"^\| `(\w+)`(?: \(main\))? \| ([\d,]+) \|")


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_model_names_are_checked_without_torch() -> None:
    """A launcher validates `model.name` against the registry before any training, without the
    1.5-2 s of importing torch that every run would otherwise pay twice (runner, launcher)."""
    code = textwrap.dedent(
        """
        import sys
        import fedmpq_flwr.launch
        from fedmpq_flwr.config import ConfigError, defaults, validate
        from fedmpq_flwr.models import MODELS
        for name in MODELS:
            validate({**defaults(), "model": {"name": name}})
        try:
            validate({**defaults(), "model": {"name": "resnet18"}})
        except ConfigError as err:
            print(err)
        print(",".join(sorted(MODELS)))
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    error, names, torch_loaded = out.stdout.splitlines()
    assert error.startswith("key 'model.name': value 'resnet18' is not allowed; choose one of resnet20")
    assert names == ",".join(NAMES) and torch_loaded == "False"


def tiny(name: str, num_classes: int = 10) -> nn.Module:
    """The small configuration of a registry model (the documented size for the small models)."""
    return build_model(name, num_classes, **MODELS[name].tiny)


def classifier_of(model: nn.Module) -> nn.Linear:
    """The last Linear layer: what `penultimate` feeds."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def test_the_docs_list_every_registered_model() -> None:
    assert sorted(README_COUNTS) == NAMES  # README's "Models" list
    assert sorted(MODELS_PAGE_COUNTS) == NAMES  # docs/models.md's table


@pytest.mark.parametrize("name", NAMES)
def test_documented_parameter_count(name: str) -> None:
    """The built model (10 classes) has the count the registry, its docstring, the README's model
    list and docs/models.md state."""
    count = num_params(build_model(name))
    assert count == MODELS[name].params
    assert f"{count:,}" in MODELS[name].builder.__doc__
    assert README_COUNTS[name] == count
    assert MODELS_PAGE_COUNTS[name] == count


@pytest.mark.parametrize("name", NAMES)
def test_penultimate_is_the_classifier_input(name: str) -> None:
    torch.manual_seed(0)
    model = tiny(name, num_classes=7).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, features = model(x), model.penultimate(x)
    head = classifier_of(model)
    assert logits.shape == (3, 7) and features.shape == (3, head.in_features)
    torch.testing.assert_close(head(features), logits)


def test_tiny_configurations_are_small() -> None:
    for name in NAMES:
        assert num_params(tiny(name)) < 500_000, name
    assert num_params(tiny("vit_small")) < 50_000 and num_params(tiny("mobilenet_v2")) < 100_000


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


def test_resnet32_is_resnet20_with_five_blocks_per_stage() -> None:
    r20, r32 = build_model("resnet20"), build_model("resnet32").eval()
    assert [len(s) for s in (r32.layer1, r32.layer2, r32.layer3)] == [5, 5, 5]
    assert type(r32) is type(r20)
    widths = lambda m: [s[-1].conv2.out_channels for s in (m.layer1, m.layer2, m.layer3)]  # noqa: E731
    assert widths(r32) == widths(r20) == [16, 32, 64]
    convs = [m for m in r32.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 30 + 2
    assert r32.penultimate(torch.randn(2, 3, 32, 32)).shape == (2, 64)  # same feature size as ResNet-20's


def test_mobilenet_v2_cifar_variant() -> None:
    model = build_model("mobilenet_v2").eval()
    stem, *blocks, last = model.features
    assert stem.conv.stride == (1, 1) and stem.conv.out_channels == 32
    assert all(isinstance(b, InvertedResidual) for b in blocks) and len(blocks) == 17
    out_channels = [b.project.out_channels for b in blocks]
    assert out_channels == [16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160, 160, 320]
    strides = [b.depthwise.conv.stride[0] for b in blocks]
    assert strides == [1, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1]  # the c=24 stage: 2 on ImageNet
    assert sum(b.use_residual for b in blocks) == 10
    for block in blocks:
        dw = block.depthwise.conv
        assert dw.groups == dw.in_channels == dw.out_channels and dw.kernel_size == (3, 3)
    assert last.conv.out_channels == 1280 and model.classifier.in_features == 1280
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.ReLU6, nn.GELU))]
    assert len(acts) == 35 and all(type(m) is nn.ReLU6 for m in acts)
    assert isinstance(model.features, nn.Sequential)  # torchvision's name, no clash with `penultimate`
    x = torch.randn(2, 3, 32, 32)
    assert model.features(x).shape == (2, 1280, 4, 4)
    assert model.penultimate(x).shape == (2, 1280)


def test_vit_small_architecture() -> None:
    model = build_model("vit_small").eval()
    assert model.patch_embed.kernel_size == (4, 4) and model.patch_embed.stride == (4, 4)
    assert model.pos_embed.shape == (1, 64 + 1, 384) and model.cls_token.shape == (1, 1, 384)
    assert len(model.blocks) == 12
    for block in model.blocks:
        assert block.attn.heads == 6 and block.attn.head_dim == 64
        assert block.attn.qkv.in_features == 384 and block.attn.qkv.out_features == 3 * 384
        assert block.mlp.fc1.out_features == 1536 and isinstance(block.mlp.act, nn.GELU)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert model.head.in_features == 384


def test_vit_attention_is_multi_head_attention() -> None:
    """The hand-written attention computes what nn.MultiheadAttention computes with the same weights."""
    torch.manual_seed(0)
    attn = build_model("vit_small", **MODELS["vit_small"].tiny).blocks[0].attn
    width = attn.proj.in_features
    reference = nn.MultiheadAttention(width, attn.heads, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(attn.qkv.weight)
        reference.in_proj_bias.copy_(attn.qkv.bias)
        reference.out_proj.weight.copy_(attn.proj.weight)
        reference.out_proj.bias.copy_(attn.proj.bias)
        x = torch.randn(2, 65, width)
        torch.testing.assert_close(attn(x), reference(x, x, x, need_weights=False)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_folded_teacher_gives_the_models_logits(name: str) -> None:
    """FedMPQ-KD's teacher folds BatchNorm with torch.fx: exact for every registry model (logits
    within 1e-4 of their scale, with BatchNorm statistics and affine parameters far from their init)."""
    torch.manual_seed(0)
    model = tiny(name)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    model.eval()
    images = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)
    teacher = inference_teacher(model, fold_batchnorm=True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())
    with torch.inference_mode():
        logits = teacher(images.contiguous(memory_format=torch.channels_last))
    scale = expected.abs().max()
    torch.testing.assert_close(logits / scale, expected / scale, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("quantized", [False, True], ids=["float", "quantized"])
@pytest.mark.parametrize("name", NAMES)
def test_tiny_configuration_trains(name: str, quantized: bool) -> None:
    """A few SGD steps on one fixed batch (float, or bit planes at mixed bits with the bit
    regularizer and re-binarization, as a FedMPQ client): the loss stays finite and goes down."""
    torch.manual_seed(0)
    model = tiny(name)
    if quantized:
        model = quantize_model(model, {layer: 2 + i % 7 for i, layer in enumerate(quantizable_layers(model))})
        count = quantized_param_count(model)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        task = F.cross_entropy(model(images), labels)
        loss = task + 0.01 * bit_regularizer(model) / count if quantized else task
        loss.backward()
        optimizer.step()
        if quantized:
            rebinarize_model(model, generator)
        losses.append(task.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert min(losses[-3:]) < losses[0]


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    size = MODELS[name].tiny
    model = tiny(name)
    model.train()
    model(torch.randn(8, 3, 32, 32))  # move the BatchNorm running statistics off their defaults
    model.eval()
    save_final_model(tmp_path / MODEL_FILE, model, name, 10, size)
    loaded = load_final_model(tmp_path)
    assert not loaded.training and type(loaded) is type(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_without_size_rebuilds_the_documented_size(tmp_path: Path) -> None:
    model = build_model("tiny_cnn", num_classes=4)
    save_final_model(tmp_path / MODEL_FILE, model, "tiny_cnn", 4)
    assert "size" not in torch.load(tmp_path / MODEL_FILE, weights_only=True)
    assert num_params(load_final_model(tmp_path)) == num_params(model)


def test_unknown_model_name() -> None:
    with pytest.raises(ValueError, match=r"model\.name 'vgg11'.*resnet20, resnet32, mobilenet_v2, vit_small, tiny_cnn"):
        build_model("vgg11")
