"""Quantization rules declared by each model: what is quantized, what stays float, which activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedmpq_flwr.models import MODELS, build_model
from fedmpq_flwr.quant import (
    QuantConv2d,
    QuantLinear,
    QuantReLU,
    QuantRules,
    bit_regularizer,
    decode_update,
    dequantized_state,
    encode_update,
    inferred_rules,
    layer_bits,
    quant_layers,
    quant_rules,
    quantizable_layers,
    quantize_model,
    quantized_param_count,
)
from fedmpq_flwr.training.weights import communicated_keys

NAMES = sorted(MODELS)
RESNET20_QUANT = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in (0, 1, 2) for c in (1, 2)] + ["fc"]
RESNET20_RELUS = ["relu"] + [f"layer{s}.{b}.relu{r}" for s in (1, 2, 3) for b in (0, 1, 2) for r in (1, 2)]


def tiny(name: str) -> nn.Module:
    return build_model(name, **MODELS[name].tiny)


def mixed_bits(model: nn.Module) -> dict[str, int]:
    """Every bit-width from 1 to 8, cycling over the quantized layers."""
    return {layer: 1 + i % 8 for i, layer in enumerate(quantizable_layers(model))}


@pytest.mark.parametrize("name", NAMES)
def test_registry_models_declare_their_rules(name: str) -> None:
    model = tiny(name)
    declared = model.quant_rules()
    assert isinstance(declared, QuantRules) and quant_rules(model) == declared
    assert list(quantizable_layers(model)) == [n for n, _ in model.named_modules() if n in set(declared.layers)]
    assert all(kind == "relu6" for kind in declared.activations.values())


def test_resnet20_and_tiny_cnn_rules_are_what_the_name_based_conversion_did() -> None:
    """The declared rules equal the old inference (skip `downsample`, every ReLU quantized)."""
    for name in ("resnet20", "resnet32", "tiny_cnn"):
        model = build_model(name)
        declared, inferred = model.quant_rules(), inferred_rules(model)
        assert list(declared.layers) == list(inferred.layers)
        assert list(declared.float_layers) == list(inferred.float_layers)
        assert declared.activations == inferred.activations
    rules = build_model("resnet20").quant_rules()
    assert list(rules.layers) == RESNET20_QUANT
    assert list(rules.float_layers) == ["layer2.0.downsample.0", "layer3.0.downsample.0"]
    assert rules.activations == {name: "relu6" for name in RESNET20_RELUS}
    assert build_model("tiny_cnn").quant_rules() == QuantRules(
        layers=("conv1", "conv2", "fc"), activations={"relu1": "relu6", "relu2": "relu6"}
    )


def test_resnet32_rules() -> None:
    model = build_model("resnet32")
    rules = model.quant_rules()
    blocks = [f"layer{s}.{b}" for s in (1, 2, 3) for b in range(5)]
    assert list(rules.layers) == ["conv1", *(f"{b}.conv{c}" for b in blocks for c in (1, 2)), "fc"]
    assert list(rules.float_layers) == ["layer2.0.downsample.0", "layer3.0.downsample.0"]
    assert len(rules.activations) == 31
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    shortcuts = 16 * 32 + 32 * 64  # the two 1x1 downsample convolutions (no bias)
    assert sum(quantizable_layers(model).values()) == MODELS["resnet32"].params - bn - shortcuts


def test_mobilenet_v2_rules_quantize_every_convolution_and_relu6() -> None:
    model = build_model("mobilenet_v2")
    rules = model.quant_rules()
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(rules.layers) == [*convs, "classifier"] and not rules.float_layers
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and set(depthwise) <= set(rules.layers)
    assert rules.layers[:4] == (
        "features.0.conv",
        "features.1.depthwise.conv",
        "features.1.project",
        "features.2.expand.conv",
    )
    relu6 = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU6)]
    assert rules.activations == {n: "relu6" for n in relu6} and len(relu6) == 35
    # every weight but BatchNorm's is quantized
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert sum(quantizable_layers(model).values()) == MODELS["mobilenet_v2"].params - bn

    q = quantize_model(tiny_model := tiny("mobilenet_v2"), mixed_bits(tiny_model))
    assert not any(type(m) in (nn.Conv2d, nn.Linear, nn.ReLU6) for m in q.modules())
    assert sum(isinstance(m, QuantReLU) for m in q.modules()) == len(tiny_model.quant_rules().activations)
    for name in tiny_model.quant_rules().layers:
        if isinstance(original := tiny_model.get_submodule(name), nn.Conv2d):
            assert isinstance(q.get_submodule(name), QuantConv2d) and q.get_submodule(name).groups == original.groups


def test_vit_rules_are_weight_only_with_float_norms_and_embeddings() -> None:
    model = build_model("vit_small")
    rules = model.quant_rules()
    per_block = [f"blocks.{i}.{layer}" for i in range(12) for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
    assert list(rules.layers) == ["patch_embed", *per_block, "head"]
    assert not rules.float_layers and rules.activations == {}
    float_params = 2 * 384 * (2 * 12 + 1) + 384 + 65 * 384  # LayerNorms, class token, position embedding
    assert sum(quantizable_layers(model).values()) == MODELS["vit_small"].params - float_params

    torch.manual_seed(0)
    small = tiny("vit_small")
    q = quantize_model(small, mixed_bits(small))
    assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in q.modules())
    assert not any(isinstance(m, QuantReLU) for m in q.modules())
    assert all(type(m) is nn.GELU for n, m in q.named_modules() if n.endswith("mlp.act"))
    assert sum(type(m) is nn.LayerNorm for m in q.modules()) == 2 * 2 + 1
    for key in ("cls_token", "pos_embed", "norm.weight", "blocks.0.norm1.bias"):
        assert torch.equal(q.state_dict()[key], small.state_dict()[key])


@pytest.mark.parametrize("name", NAMES)
def test_mixed_bit_conversion_forward_backward_and_upload(name: str) -> None:
    """Mixed bits (1..8) on the tiny configuration: each layer in planes at its bits, a quantized
    forward and backward reach every plane and scale, and the upload decodes to the dequantized state."""
    torch.manual_seed(0)
    model = tiny(name)
    bits = mixed_bits(model)
    q = quantize_model(model, bits, act_bits=3)
    assert layer_bits(q) == bits and list(quant_layers(q)) == list(bits)
    assert quantized_param_count(q) == sum(quantizable_layers(model).values())
    assert all(r.bits == 3 for r in q.modules() if isinstance(r, QuantReLU))
    for layer_name, layer in quant_layers(q).items():
        assert isinstance(layer, QuantConv2d if isinstance(model.get_submodule(layer_name), nn.Conv2d) else QuantLinear)
    q.train()
    loss = F.cross_entropy(q(torch.randn(4, 3, 32, 32)), torch.arange(4)) + bit_regularizer(q) * 1e-6
    loss.backward()
    for layer in quant_layers(q).values():
        assert layer.weight_bits.planes.grad is not None and layer.weight_bits.scale.grad is not None
    keys = communicated_keys(model)
    decoded = decode_update(encode_update(q, keys), keys, bits)
    for key, array in zip(keys, decoded):
        np.testing.assert_allclose(dequantized_state(q, keys)[key].numpy(), array, rtol=1e-6, atol=1e-7)


class _Declared(nn.Module):
    """Names that the inference would treat as a shortcut; the declaration decides instead."""

    def __init__(self, rules: QuantRules | None = None) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(3, 4, 1)
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.act = nn.ReLU6()
        self.head = nn.Linear(4, 2)
        self.rules = rules

    def quant_rules(self) -> QuantRules:
        return self.rules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.act(self.relu(self.body(x))) + self.shortcut(x)).mean((2, 3)))


def test_declared_rules_are_followed_whatever_the_names() -> None:
    rules = QuantRules(layers=("shortcut", "head"), float_layers=("body",), activations={"act": "relu6"})
    model = _Declared(rules)
    assert list(quantizable_layers(model)) == ["shortcut", "head"]
    q = quantize_model(model, {"shortcut": 2, "head": 5})
    assert isinstance(q.shortcut, QuantConv2d) and type(q.body) is nn.Conv2d and isinstance(q.head, QuantLinear)
    assert type(q.relu) is nn.ReLU and isinstance(q.act, QuantReLU)  # only the declared activation
    assert q(torch.randn(2, 3, 5, 5)).shape == (2, 2)


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (QuantRules(layers=("body", "head")), r"without a rule \['shortcut'\]"),
        (QuantRules(layers=("body", "head", "shortcut", "head")), r"named twice \['head'\]"),
        (
            QuantRules(layers=("body", "head", "relu"), float_layers=("shortcut",)),
            r"not Conv2d/Linear layers \['relu'\]",
        ),
        (QuantRules(layers=("body", "head", "shortcut", "missing")), r"not Conv2d/Linear layers \['missing'\]"),
        (QuantRules(layers=("body", "head", "shortcut"), activations={"gone": "relu6"}), r"missing activation 'gone'"),
        (QuantRules(layers=("body", "head", "shortcut"), activations={"act": "gelu"}), r"unknown quantizer 'gelu'"),
    ],
)
def test_rules_that_do_not_match_the_model_are_errors(rules: QuantRules, message: str) -> None:
    model = _Declared(rules)
    with pytest.raises(ValueError, match=message):
        quantizable_layers(model)
    with pytest.raises(ValueError, match=message):
        quantize_model(model, {"body": 4, "head": 4, "shortcut": 4})


def test_undeclared_models_fall_back_to_the_inferred_rules() -> None:
    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ReLU6(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    assert quant_rules(seq) == QuantRules(layers=("0", "4"), activations={"1": "relu6"})
    q = quantize_model(seq, {"0": 3, "4": 3})
    assert [type(m) for m in q] == [QuantConv2d, QuantReLU, nn.ReLU6, nn.Flatten, QuantLinear]
