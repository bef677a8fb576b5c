"""Model registry: adding a model is one new file plus one `ModelSpec` in `MODELS`.

Every registered model is a builder `builder(num_classes=..., **size)` whose defaults are the
documented size, and the model it returns has:

* `forward(x)` -> logits and `penultimate(x)` -> the classifier's input (what t-SNE draws; not
  `features`, which torchvision-style models use for a submodule);
* `quant_rules()` -> `fedmpq_flwr.quant.QuantRules`: which layers FedMPQ quantizes, which stay
  float, which activations are quantized and how (read by `quantize_model`);
* a forward that torch.fx can trace, with every BatchNorm right after the convolution it folds
  into: FedMPQ-KD's teacher (`distillation.inference_teacher`) folds them, and the tests check that the
  folded teacher gives the model's logits. Every model here qualifies (ViT-Small has no BatchNorm:
  folding only traces it), so the registry has no per-model opt-out.

Importing the registry does not import torch (the config schema reads the names to check
`model.name` before any training starts); a builder's module is imported when it is first used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmpq_flwr.rundir.results import MODEL_FILE

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    source:  "<module>:<function>", the builder in `fedmpq_flwr.models.<module>`.
    params:  parameter count of `builder(num_classes=10)` (checked by the tests).
    tiny:    size arguments of a small configuration of the same code, for fast tests.
    """

    source: str
    params: int
    tiny: Mapping[str, Any] = field(default_factory=dict)

    @property
    def builder(self) -> Callable[..., nn.Module]:
        """`builder(num_classes=..., **size)`; its defaults are the documented size."""
        module, function = self.source.split(":")
        return getattr(importlib.import_module(f"fedmpq_flwr.models.{module}"), function)


MODELS: dict[str, ModelSpec] = {
    "resnet20": ModelSpec("resnet:resnet20", params=272_474),
    "resnet32": ModelSpec("resnet:resnet32", params=466_906),
    "mobilenet_v2": ModelSpec(
        "mobilenet:mobilenet_v2",
        params=2_236_682,
        tiny={"width_mult": 0.25, "blocks": (1, 2, 2, 1, 1, 1, 1), "last_channel": 64},
    ),
    "vit_small": ModelSpec(
        "vit:vit_small", params=21_342_346, tiny={"depth": 2, "width": 48, "heads": 3, "mlp_dim": 96}
    ),
    "tiny_cnn": ModelSpec("tiny_cnn:tiny_cnn", params=20_138),
}


def build_model(name: str, num_classes: int = 10, **size: Any) -> nn.Module:
    """A freshly initialised model from the registry (seed torch first for a repeatable init);
    `size` overrides the documented size (e.g. `MODELS[name].tiny`)."""
    if name not in MODELS:
        raise ValueError(f"model.name {name!r} is unknown (options for model.name: {', '.join(MODELS)})")
    return MODELS[name].builder(num_classes=num_classes, **size)


def save_final_model(
    path: str | Path, model: nn.Module, model_name: str, num_classes: int, size: Mapping[str, Any] | None = None
) -> None:
    """Save the weights with what is needed to rebuild the network (see `load_final_model`)."""
    import torch  # here, not at the top: the registry stays importable without torch

    checkpoint = {"model_name": model_name, "num_classes": num_classes, "state_dict": model.state_dict()}
    if size:
        checkpoint["size"] = dict(size)
    torch.save(checkpoint, path)


def load_final_model(run_dir: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """THE way to load a run's model: read `<run_dir>/final_model.pt`, rebuild it through the
    registry, load its weights and return it in eval mode."""
    import torch  # here, not at the top: the registry stays importable without torch

    checkpoint = torch.load(Path(run_dir) / MODEL_FILE, map_location=map_location, weights_only=True)
    model = build_model(checkpoint["model_name"], checkpoint["num_classes"], **checkpoint.get("size", {}))
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(map_location).eval()
