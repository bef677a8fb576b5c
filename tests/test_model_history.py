"""FedGKD's buffer of global models (fedmpq_flwr.methods.model_history): the average, the window, when clients
distil, and saving and restoring the buffer as arrays plus a small dict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedmpq_flwr.methods.model_history import ModelHistory, distills


def model(value: float, seed: int = 0) -> list[np.ndarray]:
    """A small 'model' whose arrays are distinct per value: a conv weight, a bias, a running mean."""
    rng = np.random.default_rng(seed)
    return [
        (value + rng.standard_normal((4, 3, 3, 3))).astype(np.float32),
        np.full(4, value, dtype=np.float32),
        (value * np.arange(4)).astype(np.float32),
    ]


def hand_mean(models: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise mean written as a loop over models, in float64."""
    means = []
    for i in range(len(models[0])):
        total = np.zeros(models[0][i].shape, dtype=np.float64)
        for m in models:
            total += m[i]
        means.append(total / len(models))
    return means


def test_teacher_is_the_parameter_average() -> None:
    history = ModelHistory(5)
    models = [model(v, seed=s) for s, v in enumerate([1.0, -2.0, 0.5])]
    for server_round, weights in enumerate(models, start=1):
        history.push(weights, server_round)
    teacher = history.teacher()
    for got, expected, original in zip(teacher, hand_mean(models), models[0]):
        assert got.dtype == np.float32 and got.shape == original.shape
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(teacher[1], np.full(4, (1.0 - 2.0 + 0.5) / 3, dtype=np.float32))


def test_a_single_model_is_its_own_teacher_exactly() -> None:
    history = ModelHistory(1)
    history.push(model(1.0), 1)
    history.push(model(3.0, seed=1), 2)
    assert history.rounds == [2]
    for got, expected in zip(history.teacher(), model(3.0, seed=1)):
        np.testing.assert_array_equal(got, expected)


def test_the_window_keeps_the_last_m_models() -> None:
    history = ModelHistory(5)
    models = {r: model(float(r), seed=r) for r in range(1, 8)}
    for server_round, weights in models.items():
        history.push(weights, server_round)
    assert len(history) == 5 and history.rounds == [3, 4, 5, 6, 7]
    for got, expected in zip(history.teacher(), hand_mean([models[r] for r in range(3, 8)])):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_round_by_round_the_teacher_averages_the_current_model_and_the_m_minus_1_before_it() -> None:
    """A server loop: in round t the clients receive w_{t-1} and (from round 2) the teacher; after
    aggregating, the server pushes w_t. M = 3 counts the broadcast model itself."""
    m = 3
    history = ModelHistory(m)
    globals_ = {0: model(0.0, seed=100)}  # w_0, the initial model: never pushed
    for t in range(1, 9):
        if t == 1:
            assert not distills(t, history)
        else:
            assert distills(t, history)
            expected_rounds = list(range(max(1, t - m), t))
            assert history.rounds == expected_rounds
            assert history.rounds[-1] == t - 1  # the model broadcast in this round is in the teacher
            for got, expected in zip(history.teacher(), hand_mean([globals_[r] for r in expected_rounds])):
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
        globals_[t] = model(float(t), seed=t)  # the aggregation of round t
        history.push(globals_[t], t)
    assert not distills(1, history)  # round 1 never distils, whatever the buffer holds


def test_push_keeps_copies() -> None:
    history = ModelHistory(2)
    weights = model(1.0)
    history.push(weights, 1)
    weights[1][:] = 99.0
    np.testing.assert_array_equal(history.teacher()[1], np.ones(4, dtype=np.float32))
    teacher = history.teacher()
    teacher[0][:] = 0.0
    assert not np.array_equal(history.teacher()[0], teacher[0])


def test_history_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        ModelHistory(0)
    history = ModelHistory(3)
    with pytest.raises(ValueError):
        history.teacher()
    history.push(model(1.0), 2)
    with pytest.raises(ValueError):
        history.push(model(2.0), 2)  # rounds must increase
    with pytest.raises(ValueError):
        history.push([np.zeros(3, dtype=np.float32)], 3)  # another architecture


def test_the_buffer_saves_as_arrays_and_a_small_dict_and_restores(tmp_path: Path) -> None:
    history = ModelHistory(3)
    for r in range(1, 6):
        history.push(model(float(r), seed=r), r)
    arrays, meta = history.state()
    assert meta == {"length": 3, "tensors": 3, "rounds": [3, 4, 5]}
    assert len(arrays) == 9 and all(a.dtype == np.float32 for a in arrays)
    # through files, as a checkpoint would store them
    np.savez(tmp_path / "history.npz", *arrays)
    (tmp_path / "history.json").write_text(json.dumps(meta))
    with np.load(tmp_path / "history.npz") as saved:
        loaded = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    restored = ModelHistory.from_state(loaded, json.loads((tmp_path / "history.json").read_text()))
    assert restored.length == 3 and restored.rounds == [3, 4, 5]
    for got, expected in zip(restored.teacher(), history.teacher()):
        np.testing.assert_array_equal(got, expected)
    # and it goes on as the original would
    for h in (history, restored):
        h.push(model(6.0, seed=6), 6)
    assert restored.rounds == history.rounds == [4, 5, 6]
    for got, expected in zip(restored.teacher(), history.teacher()):
        np.testing.assert_array_equal(got, expected)


def test_an_empty_buffer_round_trips_and_a_bad_state_is_rejected() -> None:
    arrays, meta = ModelHistory(5).state()
    assert arrays == [] and meta == {"length": 5, "tensors": 0, "rounds": []}
    restored = ModelHistory.from_state(arrays, meta)
    assert len(restored) == 0 and restored.length == 5
    history = ModelHistory(2)
    history.push(model(1.0), 1)
    arrays, meta = history.state()
    with pytest.raises(ValueError):
        ModelHistory.from_state(arrays[:-1], meta)
    with pytest.raises(ValueError):
        ModelHistory.from_state(arrays * 3, {"length": 2, "tensors": 3, "rounds": [1, 2, 3]})
