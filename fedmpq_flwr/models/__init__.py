"""Model registry: adding a model is one new file plus one line in `MODELS`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from fedmpq_flwr.models.resnet import resnet20
from fedmpq_flwr.models.tiny_cnn import tiny_cnn
from fedmpq_flwr.results import MODEL_FILE

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": resnet20,
    "tiny_cnn": tiny_cnn,
}


def build_model(name: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised model from the registry (seed torch first for a repeatable init)."""
    if name not in MODELS:
        raise ValueError(f"model.name {name!r} is unknown (options for model.name: {', '.join(MODELS)})")
    return MODELS[name](num_classes=num_classes)


def save_final_model(path: str | Path, model: nn.Module, model_name: str, num_classes: int) -> None:
    """Save the weights with what is needed to rebuild the network (see `load_final_model`)."""
    torch.save({"model_name": model_name, "num_classes": num_classes, "state_dict": model.state_dict()}, path)


def load_final_model(run_dir: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """THE way to load a run's model: read `<run_dir>/final_model.pt`, rebuild it through the
    registry, load its weights and return it in eval mode."""
    checkpoint = torch.load(Path(run_dir) / MODEL_FILE, map_location=map_location, weights_only=True)
    model = build_model(checkpoint["model_name"], checkpoint["num_classes"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(map_location).eval()
