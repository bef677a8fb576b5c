"""FedKD's adaptive mutual distillation (fedmpq_flwr.training.mutual_distillation): the losses against a hand
computation, the adaptive weight, what is detached, the stage outputs of the CIFAR ResNets and one
training step of a ResNet-20 mentee with a ResNet-32 mentor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedmpq_flwr.models import build_model
from fedmpq_flwr.models.resnet import CifarResNet, resnet20
from fedmpq_flwr.training.mutual_distillation import (
    hidden_mse,
    kl_divergence,
    mutual_losses,
    mutual_step,
    mutual_terms,
    stage_outputs,
)
from fedmpq_flwr.training.weights import get_weights

STAGE_SHAPES = [(16, 32, 32), (32, 16, 16), (64, 8, 8)]


def resnet32() -> CifarResNet:
    return CifarResNet(blocks_per_stage=5)


def softmax_rows(logits: list[list[float]]) -> list[list[float]]:
    rows = []
    for row in logits:
        exps = [math.exp(v) for v in row]
        rows.append([e / sum(exps) for e in exps])
    return rows


def hand_ce(logits: list[list[float]], labels: list[int]) -> float:
    probs = softmax_rows(logits)
    return sum(-math.log(p[y]) for p, y in zip(probs, labels)) / len(labels)


def hand_kl(target_logits: list[list[float]], input_logits: list[list[float]]) -> float:
    """KL(softmax(target) || softmax(input)) summed over classes, averaged over rows."""
    total = 0.0
    for p, q in zip(softmax_rows(target_logits), softmax_rows(input_logits)):
        total += sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
    return total / len(target_logits)


def small_batch() -> dict:
    mentee = [[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]]
    mentor = [[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]]
    generator = torch.Generator().manual_seed(0)
    mentee_stages = [torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 8, 2, 2, generator=generator)]
    mentor_stages = [torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 8, 2, 2, generator=generator)]
    return {
        "mentee": mentee,
        "mentor": mentor,
        "labels": [0, 2],
        "mentee_stages": mentee_stages,
        "mentor_stages": mentor_stages,
    }


def call_losses(batch: dict, labels: list[int] | None = None, requires_grad: bool = False) -> dict:
    tensors = {
        "mentee_logits": torch.tensor(batch["mentee"], requires_grad=requires_grad),
        "mentor_logits": torch.tensor(batch["mentor"], requires_grad=requires_grad),
        "mentee_stages": [h.clone().requires_grad_(requires_grad) for h in batch["mentee_stages"]],
        "mentor_stages": [h.clone().requires_grad_(requires_grad) for h in batch["mentor_stages"]],
    }
    terms = mutual_losses(**tensors, labels=torch.tensor(labels or batch["labels"]))
    return {"terms": terms, **tensors}


# ---------------------------------------------------------------------------------------------
# the losses


def test_losses_match_a_hand_computation() -> None:
    batch = small_batch()
    terms = call_losses(batch)["terms"]
    ce_s = hand_ce(batch["mentee"], batch["labels"])
    ce_t = hand_ce(batch["mentor"], batch["labels"])
    kl_ts = hand_kl(batch["mentor"], batch["mentee"])  # KL(p_t || p_s)
    kl_st = hand_kl(batch["mentee"], batch["mentor"])  # KL(p_s || p_t)
    hidden = sum(
        float(((a.double() - b.double()) ** 2).sum()) / a.numel()
        for a, b in zip(batch["mentee_stages"], batch["mentor_stages"])
    )
    assert float(terms["task_loss"]) == pytest.approx(ce_s, rel=1e-6)
    assert float(terms["mentor_task_loss"]) == pytest.approx(ce_t, rel=1e-6)
    assert float(terms["kd_loss"]) == pytest.approx(kl_ts, rel=1e-5)
    assert float(terms["mentor_kd_loss"]) == pytest.approx(kl_st, rel=1e-5)
    assert float(terms["hidden_loss"]) == pytest.approx(hidden, rel=1e-5)
    assert float(terms["adaptive_weight"]) == pytest.approx(1 / (ce_t + ce_s), rel=1e-6)
    assert float(terms["mentee_loss"]) == pytest.approx(ce_s + kl_ts / (ce_t + ce_s) + hidden / (ce_t + ce_s), rel=1e-5)
    assert float(terms["mentor_loss"]) == pytest.approx(ce_t + kl_st / (ce_t + ce_s) + hidden / (ce_t + ce_s), rel=1e-5)
    # argmax: mentee [0, 2], mentor [0, 1 (first of the tie)] -> one of two agree
    assert float(terms["agreement"]) == pytest.approx(0.5)


def test_kl_and_hidden_helpers() -> None:
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    assert float(kl_divergence(logits, logits)) == pytest.approx(0.0, abs=1e-7)
    assert float(kl_divergence(logits, torch.zeros(1, 3))) == pytest.approx(hand_kl([[1.0, 2.0, 3.0]], [[0.0] * 3]))
    a = [torch.ones(2, 2), torch.zeros(3)]
    b = [torch.zeros(2, 2), torch.full((3,), 2.0)]
    assert float(hidden_mse(a, b)) == pytest.approx(1.0 + 4.0)  # per-stage means, summed
    with pytest.raises(ValueError):
        hidden_mse(a, [torch.zeros(2, 3), torch.zeros(3)])
    with pytest.raises(ValueError):
        hidden_mse(a, b[:1])


def test_adaptive_weight_shrinks_as_the_task_losses_grow() -> None:
    batch = small_batch()
    # the same logits and stages: only the labels move, so KL and hidden are unchanged while
    # CE_t + CE_s changes; ordered by that sum, the weight and the distillation part must fall
    runs = [call_losses(batch, labels)["terms"] for labels in ([0, 2], [0, 1], [2, 0], [1, 1], [2, 1])]
    runs.sort(key=lambda t: float(t["task_loss"] + t["mentor_task_loss"]))
    task_sums = [float(t["task_loss"] + t["mentor_task_loss"]) for t in runs]
    assert len(set(task_sums)) == len(task_sums) and task_sums[-1] > 2 * task_sums[0]
    for terms, total in zip(runs, task_sums):
        assert float(terms["adaptive_weight"]) == pytest.approx(1 / total, rel=1e-6)
    weights = [float(t["adaptive_weight"]) for t in runs]
    assert all(a > b for a, b in zip(weights, weights[1:]))
    distillation = [float(t["mentee_loss"] - t["task_loss"]) for t in runs]
    assert all(a > b for a, b in zip(distillation, distillation[1:]))
    assert len({round(float(t["kd_loss"]), 6) for t in runs}) == 1
    assert len({round(float(t["hidden_loss"]), 6) for t in runs}) == 1


def test_each_loss_sends_no_gradient_to_the_other_model_nor_through_the_weight() -> None:
    call = call_losses(small_batch(), requires_grad=True)
    terms = call["terms"]
    mentee_side = [call["mentee_logits"], *call["mentee_stages"]]
    mentor_side = [call["mentor_logits"], *call["mentor_stages"]]
    assert not terms["adaptive_weight"].requires_grad
    for name in ("task_loss", "mentor_task_loss", "kd_loss", "mentor_kd_loss", "hidden_loss", "agreement"):
        assert not terms[name].requires_grad, name
    # the mentee's loss reaches none of the mentor's tensors, and the other way round
    assert all(g is None for g in torch.autograd.grad(terms["mentee_loss"], mentor_side, allow_unused=True))
    assert all(g is None for g in torch.autograd.grad(terms["mentor_loss"], mentee_side, allow_unused=True))
    # the weight is a constant: the gradient equals that of CE_s + c (KL + hidden) with c a number
    weight = float(terms["adaptive_weight"])
    logits = call["mentee_logits"]
    stages = call["mentee_stages"]
    (grad,) = torch.autograd.grad(terms["mentee_loss"], [logits], retain_graph=True)
    labels = torch.tensor(small_batch()["labels"])
    fixed_target = call["mentor_logits"].detach()
    reference = nn.functional.cross_entropy(logits, labels) + weight * (
        kl_divergence(fixed_target, logits) + hidden_mse(stages, [h.detach() for h in call["mentor_stages"]])
    )
    (expected,) = torch.autograd.grad(reference, [logits])
    torch.testing.assert_close(grad, expected)


# ---------------------------------------------------------------------------------------------
# stage outputs of the package's ResNets


@pytest.mark.parametrize("factory", [resnet20, resnet32], ids=["resnet20", "resnet32"])
def test_stage_outputs_are_the_forward_pass_and_its_three_stages(factory) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        logits, stages = stage_outputs(model, images)
        expected = model(images)
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    assert [tuple(h.shape[1:]) for h in stages] == STAGE_SHAPES
    assert all(len(m._forward_hooks) == 0 for m in model.modules())  # hooks removed
    # the last stage is what the classifier pools
    with torch.no_grad():
        torch.testing.assert_close(model.fc(torch.flatten(model.avgpool(stages[-1]), 1)), expected)


def test_stage_outputs_refuse_a_model_without_the_stages() -> None:
    with pytest.raises(ValueError, match="layer1"):
        stage_outputs(build_model("tiny_cnn"), torch.randn(1, 3, 32, 32))


# ---------------------------------------------------------------------------------------------
# one step of a ResNet-20 mentee and a ResNet-32 mentor


def models_and_batch(seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    mentee, mentor = resnet20(), resnet32()
    images = torch.randn(8, 3, 32, 32)
    labels = torch.randint(0, 10, (8,))
    return mentee.train(), mentor.train(), images, labels


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def test_one_backward_of_the_sum_gives_each_model_its_own_loss_gradient() -> None:
    mentee, mentor, images, labels = models_and_batch()
    terms = mutual_terms(mentee, mentor, images, labels)
    terms["loss"].backward()
    together_mentee = [p.grad.clone() for p in mentee.parameters()]
    together_mentor = [p.grad.clone() for p in mentor.parameters()]
    mentee.zero_grad(set_to_none=True)
    mentor.zero_grad(set_to_none=True)
    # separately: the mentee's loss alone, then the mentor's loss alone (same batch, same outputs)
    terms = mutual_terms(mentee, mentor, images, labels)
    mentee_grads = torch.autograd.grad(terms["mentee_loss"], list(mentee.parameters()), retain_graph=True)
    mentor_grads = torch.autograd.grad(terms["mentor_loss"], list(mentor.parameters()))
    for together, separate in ((together_mentee, mentee_grads), (together_mentor, mentor_grads)):
        assert len(together) == len(separate)
        for joint, alone in zip(together, separate):
            torch.testing.assert_close(joint, alone)


def test_one_step_changes_both_models_and_keeps_them_finite() -> None:
    mentee, mentor, images, labels = models_and_batch()
    before_mentee = [p.detach().clone() for p in mentee.parameters()]
    before_mentor = [p.detach().clone() for p in mentor.parameters()]
    terms = mutual_step(mentee, mentor, images, labels, sgd(mentee), sgd(mentor))
    assert set(terms) == {
        "loss",
        "mentor_loss",
        "task_loss",
        "mentor_task_loss",
        "kd_loss",
        "mentor_kd_loss",
        "hidden_loss",
        "adaptive_weight",
        "agreement",
        "grad_norm",
        "mentor_grad_norm",
    }
    for name, value in terms.items():
        assert value.dim() == 0 and torch.isfinite(value) and value.grad_fn is None, name
    assert float(terms["grad_norm"]) > 0 and float(terms["mentor_grad_norm"]) > 0
    changed = [not torch.equal(a, p) for a, p in zip(before_mentee, mentee.parameters())]
    assert all(changed)  # every mentee parameter moved (weight decay alone would move each)
    assert all(not torch.equal(a, p) for a, p in zip(before_mentor, mentor.parameters()))
    for model in (mentee, mentor):
        assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    # the mentee's loss is its CE plus the weighted distillation terms, from the same forward pass
    expected = terms["task_loss"] + terms["adaptive_weight"] * (terms["kd_loss"] + terms["hidden_loss"])
    torch.testing.assert_close(terms["loss"], expected)
    # a few more steps on the same batch lower both task losses
    mentee_opt, mentor_opt = sgd(mentee), sgd(mentor)
    first = mutual_step(mentee, mentor, images, labels, mentee_opt, mentor_opt)
    for _ in range(5):
        last = mutual_step(mentee, mentor, images, labels, mentee_opt, mentor_opt)
    assert float(last["task_loss"]) < float(first["task_loss"])
    assert float(last["mentor_task_loss"]) < float(first["mentor_task_loss"])


def test_the_mentee_carries_nothing_of_the_mentor() -> None:
    mentee, mentor, images, labels = models_and_batch()
    mutual_step(mentee, mentor, images, labels, sgd(mentee), sgd(mentor))
    fresh = resnet20()
    state = mentee.state_dict()
    assert list(state) == list(fresh.state_dict())
    assert [tuple(v.shape) for v in state.values()] == [tuple(v.shape) for v in fresh.state_dict().values()]
    mentor_storage = {t.untyped_storage().data_ptr() for t in mentor.state_dict().values()}
    assert not mentor_storage & {t.untyped_storage().data_ptr() for t in state.values()}
    # the mentee's loss has no path to any mentor parameter
    terms = mutual_terms(mentee, mentor, images, labels)
    grads = torch.autograd.grad(terms["mentee_loss"], list(mentor.parameters()), allow_unused=True)
    assert all(g is None for g in grads)
    uploaded = get_weights(mentee)
    assert [a.shape for a in uploaded] == [a.shape for a in get_weights(fresh)]
    # and changing the mentor after the step changes nothing the mentee would upload
    with torch.no_grad():
        for p in mentor.parameters():
            p.add_(1.0)
    assert all(np.array_equal(a, b) for a, b in zip(uploaded, get_weights(mentee)))
