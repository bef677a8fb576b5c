"""FedKD's adaptive mutual distillation (Wu et al., Nature Communications 2022) in plain PyTorch.

Each client keeps a private, larger *mentor* (ResNet-32 here) next to the shared *mentee*
(ResNet-20). On every batch both are trained on the same images; with CE_t and CE_s the mentor's
and the mentee's cross-entropy on the labels, p_t and p_s their softmax predictions and
`hidden` the mean squared error between the two models' stage outputs:

    mentee loss = CE_s + KL(p_t || p_s) / (CE_t + CE_s) + hidden / (CE_t + CE_s)
    mentor loss = CE_t + KL(p_s || p_t) / (CE_t + CE_s) + hidden / (CE_t + CE_s)

The 1 / (CE_t + CE_s) factor is the *adaptive* part: when both models still predict the labels
badly, what they would teach each other is unreliable and the distillation is weak; as both get
the labels right, it grows.

What is detached, and why (the reference code, `model_bert.py` of wuch15/FedKD, sums all six terms
into one scalar and detaches nothing; the paper writes one loss per model, which is what this
module optimises):
- in each model's loss the *other* model's probabilities and stage outputs are targets, detached:
  the mentee's loss trains only the mentee and the mentor's loss only the mentor. Without this,
  minimising KL(p_t || p_s) would also pull the mentor towards the mentee through the mentee's
  loss, and the hidden MSE, which both losses contain, would pull each model towards the other
  twice (that is what the reference's single undetached sum does);
- the adaptive weight 1 / (CE_t + CE_s) is detached: it is a reliability estimate, not an
  objective. Left attached, its gradient is that of -(KL + hidden) / (CE_t + CE_s)^2 times the
  gradient of CE: every step would push both task losses *up* to shrink the distillation terms.
Because of these detachments the two losses touch disjoint sets of parameters, so one backward
pass of their sum gives each model exactly the gradient of its own loss (`mutual_step` relies on
this and the tests check it).

KL is the true Kullback-Leibler divergence averaged over the batch (`reduction="batchmean"`); the
reference's `nn.KLDivLoss()` averages over batch x classes, which divides it by the number of
classes. There is no temperature in FedKD (T = 1).

Hidden states: the reference (`model_bert.py`, `loss_mse`) sums, over the student's layers, the MSE
between each student layer and the teacher layer at the same relative depth (plus an MSE between
attention maps, which a CNN does not have). Here the layers are the three stages of the CIFAR
ResNets (`layer1..3`: 16, 32 and 64 channels at 32, 16 and 8 pixels for both ResNet-20 and
ResNet-32), and `hidden` is the sum over the stages of the mean squared error per stage. The paper
maps hidden states through a learnable linear layer when widths differ (the reference builds
`mdenses` for that and never uses them); the stage widths here are equal, so no mapping is needed
and unequal shapes are an error.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

STAGES = ("layer1", "layer2", "layer3")


def stage_outputs(
    model: nn.Module, images: torch.Tensor, stages: Sequence[str] = STAGES
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The model's logits and the outputs of its `stages` submodules in one ordinary forward pass
    (forward hooks on those submodules, removed afterwards): works for any model that has them,
    e.g. `CifarResNet` and its quantized copies, without changing the model."""
    modules = dict(model.named_modules())
    missing = [name for name in stages if name not in modules]
    if missing:
        raise ValueError(f"{type(model).__name__} has no submodule(s) {missing} to take stage outputs from")
    captured: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            captured[name] = output

        return hook

    handles = [modules[name].register_forward_hook(keeper(name)) for name in stages]
    try:
        logits = model(images)
    finally:
        for handle in handles:
            handle.remove()
    return logits, [captured[name] for name in stages]


def stage_shapes(
    model: nn.Module, image_chw: Sequence[int], stages: Sequence[str] = STAGES
) -> list[tuple[int, ...]] | None:
    """The shapes (without the batch) of a model's `stages` outputs for one image of shape C x H x W,
    or None when the model lacks one of them: FedKD's mentor must give the mentee's shapes."""
    modules = dict(model.named_modules())
    if any(name not in modules for name in stages):
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _, outputs = stage_outputs(model, torch.zeros(1, *image_chw), stages)
    finally:
        model.train(was_training)
    return [tuple(output.shape[1:]) for output in outputs]


def kl_divergence(target_logits: torch.Tensor, input_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) || softmax(input)), summed over classes and averaged over the batch."""
    return F.kl_div(
        F.log_softmax(input_logits, dim=1), F.log_softmax(target_logits, dim=1), reduction="batchmean", log_target=True
    )


def hidden_mse(outputs: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over stages of the mean squared error between `outputs` and `targets` (equal shapes)."""
    if len(outputs) != len(targets) or not outputs:
        raise ValueError(f"{len(outputs)} stage outputs against {len(targets)} targets")
    total = outputs[0].new_zeros(())
    for output, target in zip(outputs, targets):
        if output.shape != target.shape:
            raise ValueError(f"stage output of shape {tuple(output.shape)} against {tuple(target.shape)}")
        total = total + F.mse_loss(output, target)
    return total


def mutual_losses(
    mentee_logits: torch.Tensor,
    mentor_logits: torch.Tensor,
    mentee_stages: Sequence[torch.Tensor],
    mentor_stages: Sequence[torch.Tensor],
    labels: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Both models' losses on one batch (see the module docstring) and their parts.

    `mentee_loss` depends only on the mentee's outputs and `mentor_loss` only on the mentor's; the
    other entries are detached values for logging: `task_loss` / `mentor_task_loss` (CE_s, CE_t),
    `kd_loss` = KL(p_t || p_s), `mentor_kd_loss` = KL(p_s || p_t), `hidden_loss`,
    `adaptive_weight` = 1 / (CE_t + CE_s) and `agreement` (share of equal top-1 predictions)."""
    mentee_task = F.cross_entropy(mentee_logits, labels)
    mentor_task = F.cross_entropy(mentor_logits, labels)
    weight = 1.0 / (mentee_task.detach() + mentor_task.detach())
    mentee_kd = kl_divergence(mentor_logits.detach(), mentee_logits)
    mentor_kd = kl_divergence(mentee_logits.detach(), mentor_logits)
    mentee_hidden = hidden_mse(mentee_stages, [h.detach() for h in mentor_stages])
    mentor_hidden = hidden_mse(mentor_stages, [h.detach() for h in mentee_stages])
    agreement = (mentee_logits.argmax(dim=1) == mentor_logits.argmax(dim=1)).float().mean()
    return {
        "mentee_loss": mentee_task + weight * (mentee_kd + mentee_hidden),
        "mentor_loss": mentor_task + weight * (mentor_kd + mentor_hidden),
        "task_loss": mentee_task.detach(),
        "mentor_task_loss": mentor_task.detach(),
        "kd_loss": mentee_kd.detach(),
        "mentor_kd_loss": mentor_kd.detach(),
        "hidden_loss": mentee_hidden.detach(),
        "adaptive_weight": weight,
        "agreement": agreement.detach(),
    }


def mutual_terms(
    mentee: nn.Module,
    mentor: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    stages: Sequence[str] = STAGES,
) -> dict[str, torch.Tensor]:
    """Forward both models on the same batch and return `mutual_losses` plus `loss`, the sum of
    the two models' losses: its gradient is each model's own loss gradient (the losses share no
    attached tensor), so one backward trains both."""
    mentee_logits, mentee_stages = stage_outputs(mentee, images, stages)
    mentor_logits, mentor_stages = stage_outputs(mentor, images, stages)
    terms = mutual_losses(mentee_logits, mentor_logits, mentee_stages, mentor_stages, labels)
    terms["loss"] = terms["mentee_loss"] + terms["mentor_loss"]
    return terms


def mutual_step(
    mentee: nn.Module,
    mentor: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mentee_optimizer: torch.optim.Optimizer,
    mentor_optimizer: torch.optim.Optimizer,
    stages: Sequence[str] = STAGES,
) -> dict[str, torch.Tensor]:
    """One optimizer step of both models on one batch. The caller puts both models in train mode
    (as `train.train_epochs` does for one model) and owns the optimizers. Returns the detached loss
    terms of `mutual_losses` with `loss` = the mentee's loss (the shared model's objective, what a
    round reports as `train_loss`), `mentor_loss`, and `grad_norm` / `mentor_grad_norm` (L2 norm of
    each model's gradient before its step)."""
    mentee_optimizer.zero_grad(set_to_none=True)
    mentor_optimizer.zero_grad(set_to_none=True)
    terms = mutual_terms(mentee, mentor, images, labels, stages)
    terms["loss"].backward()
    norms = {
        name: torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        for name, model in (("grad_norm", mentee), ("mentor_grad_norm", mentor))
    }
    mentee_optimizer.step()
    mentor_optimizer.step()
    logged = {name: value.detach() for name, value in terms.items() if name not in ("loss", "mentee_loss")}
    return {"loss": terms["mentee_loss"].detach(), **logged, **norms}
