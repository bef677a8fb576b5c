"""Tests of q-FFL / q-FedAvg (fedmpq_flwr.methods.qffl_update) against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmpq_flwr.methods import qffl_update

# one trainable entry (2 coordinates) and one buffer entry (a BatchNorm running statistic)
TRAINABLE = [True, False]
GLOBAL = [np.array([1.0, 2.0], np.float32), np.array([10.0], np.float32)]
LOCAL_1 = [np.array([0.5, 2.0], np.float32), np.array([12.0], np.float32)]  # F = 2
LOCAL_2 = [np.array([1.0, 1.0], np.float32), np.array([14.0], np.float32)]  # F = 1
LIPSCHITZ = 2.0  # L, the authors' 1/lr at lr = 0.5


def run_round(q: float, losses: tuple[float, float] = (2.0, 1.0), **kwargs: object) -> list[np.ndarray]:
    updates = [
        qffl_update.client_update(GLOBAL, local, TRAINABLE, loss, q, LIPSCHITZ)
        for local, loss in zip((LOCAL_1, LOCAL_2), losses)
    ]
    return qffl_update.aggregate(GLOBAL, [u for u, _ in updates], [h for _, h in updates], TRAINABLE, **kwargs)


def test_hand_computed_client_update_q1_q2() -> None:
    """Client 1: L (w - w_1) = [1, 0], ||.||^2 = 1, F = 2.
    q = 1: Delta = 2 [1, 0], h = 1 * 2^0 * 1 + 2 * 2 = 5.   q = 2: Delta = 4 [1, 0], h = 2 * 2 * 1 + 2 * 4 = 12.
    Client 2: L (w - w_2) = [0, 2], ||.||^2 = 4, F = 1.
    q = 1: Delta = [0, 2], h = 4 + 2 = 6.                    q = 2: Delta = [0, 2], h = 2 * 4 + 2 = 10."""
    expected = {
        (1, 1.0): ([2.0, 0.0], 5.0),
        (1, 2.0): ([4.0, 0.0], 12.0),
        (2, 1.0): ([0.0, 2.0], 6.0),
        (2, 2.0): ([0.0, 2.0], 10.0),
    }
    for (client, q), (delta, h) in expected.items():
        local, loss = (LOCAL_1, 2.0) if client == 1 else (LOCAL_2, 1.0)
        upload, h_k = qffl_update.client_update(GLOBAL, local, TRAINABLE, loss, q, LIPSCHITZ)
        np.testing.assert_allclose(upload[0], delta, rtol=1e-7)
        assert upload[0].dtype == np.float32
        np.testing.assert_array_equal(upload[1], local[1])  # the buffer goes as the local value
        assert h_k == pytest.approx(h, rel=1e-12)


def test_hand_computed_server_step_q1_q2() -> None:
    """q = 1: sum h = 11, step [2, 2] / 11 -> w = [9/11, 20/11].
    q = 2: sum h = 22, step [4, 2] / 22 -> w = [9/11, 21/11]: the step towards the low-loss client
    (second coordinate) halves while the one towards the high-loss client stays.
    The buffer is the uniform mean of 12 and 14."""
    for q, expected in ((1.0, [9 / 11, 20 / 11]), (2.0, [9 / 11, 21 / 11])):
        new = run_round(q)
        np.testing.assert_allclose(new[0], expected, rtol=1e-6)
        np.testing.assert_allclose(new[1], [13.0])
        assert all(a.dtype == np.float32 for a in new)


def test_q0_is_uniform_fedavg() -> None:
    """With q = 0 the step is the uniform mean of the local models, whatever the losses."""
    new = run_round(0.0)
    np.testing.assert_allclose(new[0], [0.75, 1.5], rtol=1e-7)
    rng = np.random.default_rng(0)
    shapes = [(16, 3, 3, 3), (16,), (16,), (16,), (16,), (10, 16), (10,)]
    mask = [True, True, True, False, False, True, True]
    global_weights = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    locals_ = [[(w + 0.1 * rng.standard_normal(w.shape)).astype(np.float32) for w in global_weights] for _ in range(5)]
    losses = [0.3, 1.7, 2.2, 0.0, 5.0]
    updates = [
        qffl_update.client_update(global_weights, local, mask, loss, 0.0, 20.0) for local, loss in zip(locals_, losses)
    ]
    new = qffl_update.aggregate(global_weights, [u for u, _ in updates], [h for _, h in updates], mask)
    for i, array in enumerate(new):
        fedavg = np.mean([local[i].astype(np.float64) for local in locals_], axis=0)
        np.testing.assert_allclose(array, fedavg, rtol=1e-6, atol=1e-6)
    assert all(h == pytest.approx(20.0) for _, h in updates)  # h_k = L at q = 0


def test_larger_loss_gets_more_weight() -> None:
    """Two clients moving the same distance in orthogonal directions: with q > 0 the new model moves
    further towards the one with the larger loss, the more so the larger q; with q = 0 equally."""
    global_weights = [np.zeros(2, np.float32)]
    local_high = [np.array([1.0, 0.0], np.float32)]  # F = 3
    local_low = [np.array([0.0, 1.0], np.float32)]  # F = 1
    ratios = []
    for q in (0.0, 0.5, 1.0, 2.0, 5.0):
        updates = [
            qffl_update.client_update(global_weights, local, [True], loss, q, 0.1)
            for local, loss in ((local_high, 3.0), (local_low, 1.0))
        ]
        new = qffl_update.aggregate(global_weights, [u for u, _ in updates], [h for _, h in updates], [True])[0]
        assert new[0] > 0 and new[1] > 0
        # by hand: the component towards client k is F_k^q L / sum h, so the ratio is 3^q
        assert new[0] / new[1] == pytest.approx(3.0**q, rel=1e-6)
        ratios.append(new[0] / new[1])
    assert ratios[0] == pytest.approx(1.0) and all(b > a for a, b in zip(ratios, ratios[1:]))


def test_zero_loss_is_safe() -> None:
    """F = 0 is floored at 1e-10: finite Delta and h for q < 1, q = 1 and q > 1."""
    for q in (0.0, 0.5, 1.0, 2.0):
        upload, h = qffl_update.client_update(GLOBAL, LOCAL_1, TRAINABLE, 0.0, q, LIPSCHITZ)
        assert math.isfinite(h) and h > 0
        assert all(np.all(np.isfinite(a)) for a in upload)
        new = run_round(q, losses=(0.0, 0.0))
        assert all(np.all(np.isfinite(a)) for a in new)
    # q = 0.5, F = 0: h = 0.5 * (1e-10)^-0.5 * 1 + 2 * (1e-10)^0.5
    _, h = qffl_update.client_update(GLOBAL, LOCAL_1, TRAINABLE, 0.0, 0.5, LIPSCHITZ)
    assert h == pytest.approx(0.5 * 1e5 + 2 * 1e-5, rel=1e-9)


def test_weighted_buffers() -> None:
    new = run_round(1.0, buffer_weights=[3, 1])
    np.testing.assert_allclose(new[1], [(3 * 12 + 14) / 4])
    np.testing.assert_allclose(new[0], [9 / 11, 20 / 11], rtol=1e-6)  # the step does not depend on it


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        qffl_update.client_update(GLOBAL, LOCAL_1, TRAINABLE, 1.0, -1.0, LIPSCHITZ)
    with pytest.raises(ValueError):
        qffl_update.client_update(GLOBAL, LOCAL_1, TRAINABLE, float("nan"), 1.0, LIPSCHITZ)
    with pytest.raises(ValueError):
        qffl_update.client_update(GLOBAL, LOCAL_1, TRAINABLE, 1.0, 1.0, 0.0)  # L must be > 0
    with pytest.raises(ValueError):
        qffl_update.client_update(GLOBAL, LOCAL_1[:1], TRAINABLE, 1.0, 1.0, LIPSCHITZ)
    upload, h = qffl_update.client_update(GLOBAL, LOCAL_1, TRAINABLE, 1.0, 1.0, LIPSCHITZ)
    with pytest.raises(ValueError):
        qffl_update.aggregate(GLOBAL, [upload], [0.0], TRAINABLE)
    with pytest.raises(ValueError):
        qffl_update.aggregate(GLOBAL, [upload], [h, h], TRAINABLE)
    with pytest.raises(ValueError):
        qffl_update.aggregate(GLOBAL, [upload], [h], TRAINABLE, buffer_weights=[0.0])
    with pytest.raises(ValueError):
        qffl_update.client_update(GLOBAL, LOCAL_1, TRAINABLE, 100.0, 200.0, LIPSCHITZ)  # 100^200 overflows


def test_one_round_on_a_torch_model() -> None:
    """The pieces as the wiring will use them: F_k = loss_and_accuracy() of the received model on the client's
    partition (eval mode, no augmentation), local SGD, client_update over trainable_mask, aggregate,
    set_weights. With q = 0 the result is the uniform mean of the local models, BatchNorm included."""
    import torch

    from fedmpq_flwr.data.loaders import eval_loader
    from fedmpq_flwr.data.registry import CIFAR10_MEAN, CIFAR10_STD
    from fedmpq_flwr.models import build_model
    from fedmpq_flwr.training.loop import loss_and_accuracy, train_epochs
    from fedmpq_flwr.training.weights import get_weights, set_weights, trainable_mask

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 10)
    global_weights, mask = get_weights(model), trainable_mask(model)
    device, lr = torch.device("cpu"), 0.05
    locals_, losses = [], []
    for _ in range(2):
        x = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, size=16)
        loader = eval_loader(x, y, 8, mean=CIFAR10_MEAN, std=CIFAR10_STD)
        set_weights(model, global_weights)
        losses.append(loss_and_accuracy(model, loader, device)[0])
        train_epochs(model, loader, torch.optim.SGD(model.parameters(), lr=lr), 1, device)
        locals_.append(get_weights(model))
    for q in (0.0, 1.0):
        updates = [
            qffl_update.client_update(global_weights, w_k, mask, f, q, 1 / lr) for w_k, f in zip(locals_, losses)
        ]
        new = qffl_update.aggregate(global_weights, [u for u, _ in updates], [h for _, h in updates], mask)
        set_weights(model, new)  # shapes and order fit the model
        for i, is_trainable in enumerate(mask):
            mean = (locals_[0][i].astype(np.float64) + locals_[1][i]) / 2
            if not is_trainable or q == 0:
                np.testing.assert_allclose(new[i], mean, rtol=1e-5, atol=1e-6)
