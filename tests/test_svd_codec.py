"""FedKD's SVD uplink codec (fedmpq_flwr.quant.svd): energy bound, minimal rank, raw fallback,
conv reshaping, exact bit count and the energy schedule.

Expectations come from hand-built matrices with known singular values (Q1 diag(s) Q2^T with
random orthonormal Q1, Q2) or from numpy directly, never from the function under test."""

from __future__ import annotations

import numpy as np
import pytest

from fedmpq_flwr.quant.svd import (
    RAW,
    energy_threshold,
    matrix_shape,
    svd_decode,
    svd_encode,
    svd_rank,
    svd_upload_bits,
)


def with_singular_values(m: int, n: int, values: list[float], seed: int = 0) -> np.ndarray:
    """An m x n float32 matrix whose singular values are `values` (padded with zeros)."""
    rng = np.random.default_rng(seed)
    k = min(m, n)
    q1, _ = np.linalg.qr(rng.standard_normal((m, k)))
    q2, _ = np.linalg.qr(rng.standard_normal((n, k)))
    s = np.zeros(k)
    s[: len(values)] = values
    return ((q1 * s) @ q2.T).astype(np.float32)


def frobenius2(a: np.ndarray) -> float:
    return float(np.sum(np.asarray(a, dtype=np.float64) ** 2))


def hand_rank(values: list[float], energy: float) -> int:
    """Smallest k >= 1 with sum of the k largest squares >= energy * total, by a plain loop."""
    squares = sorted((v * v for v in values), reverse=True)
    total = sum(squares)
    kept = 0.0
    for k, square in enumerate(squares, start=1):
        kept += square
        if kept >= energy * total:
            return k
    return len(squares)


# ---------------------------------------------------------------------------------------------
# rank choice


@pytest.mark.parametrize(
    ("values", "energy", "expected"),
    [
        ([3.0, 2.0, 1.0], 0.5, 1),  # 9/14 = 0.64 >= 0.5
        ([3.0, 2.0, 1.0], 0.9, 2),  # 13/14 = 0.93 >= 0.9, 9/14 is not
        ([3.0, 2.0, 1.0], 0.95, 3),  # 13/14 < 0.95: all three needed
        ([1.0, 1.0, 1.0, 1.0], 0.75, 3),  # exactly 3/4: ">= T" keeps 3, not 4
        ([1.0, 1.0, 1.0, 1.0], 0.98, 4),  # every value needed (FedKD's code returns 0 here)
        ([5.0], 0.95, 1),  # a single singular value (FedKD's code returns 0 here)
        ([0.0, 0.0, 0.0], 0.95, 1),  # zero matrix: K >= 1
        ([1e-30, 1e-31], 0.95, 1),  # tiny energy: the share, not the size, decides
    ],
)
def test_svd_rank_is_the_smallest_rank_holding_the_energy_share(values, energy, expected) -> None:
    assert hand_rank(values, energy) == expected
    assert svd_rank(np.array(values), energy) == expected


@pytest.mark.parametrize("energy", [0.0, -0.1, 1.01])
def test_svd_rank_rejects_an_energy_share_outside_0_1(energy) -> None:
    with pytest.raises(ValueError):
        svd_rank(np.array([1.0, 2.0]), energy)


@pytest.mark.parametrize("energy", [0.5, 0.9, 0.95, 0.98, 1.0])
def test_reconstruction_meets_the_energy_bound_with_the_minimal_rank(energy) -> None:
    values = [10.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 0.5]
    matrix = with_singular_values(40, 60, values)
    arrays, layout = svd_encode([matrix], energy)
    (decoded,) = svd_decode(arrays, layout, [matrix.shape])
    rank = hand_rank(values, energy)
    assert layout == [rank]
    error = frobenius2(matrix - decoded)
    total = frobenius2(matrix)
    assert error <= (1.0 - energy) * total + 1e-6 * total
    # minimal: one rank less would break the bound (numpy's own truncation, independent of the codec)
    if rank > 1:
        u, s, vt = np.linalg.svd(matrix.astype(np.float64), full_matrices=False)
        smaller = (u[:, : rank - 1] * s[: rank - 1]) @ vt[: rank - 1]
        assert frobenius2(matrix - smaller) > (1.0 - energy) * total


def test_random_updates_meet_the_energy_bound() -> None:
    rng = np.random.default_rng(3)
    for trial in range(20):
        m, n = rng.integers(20, 80, size=2)
        # a decaying spectrum, as real updates have
        low_rank = rng.standard_normal((m, 4)) @ rng.standard_normal((4, n))
        matrix = (low_rank + 0.05 * rng.standard_normal((m, n))).astype(np.float32)
        energy = float(rng.uniform(0.8, 0.99))
        arrays, layout = svd_encode([matrix], energy)
        (decoded,) = svd_decode(arrays, layout, [matrix.shape])
        assert frobenius2(matrix - decoded) <= (1.0 - energy + 1e-6) * frobenius2(matrix), trial


def test_tiny_and_zero_matrices_keep_rank_one_and_decode_exactly() -> None:
    tiny = with_singular_values(30, 40, [1e-20])
    zero = np.zeros((30, 40), dtype=np.float32)
    arrays, layout = svd_encode([tiny, zero], 0.95)
    assert layout == [1, 1]
    tiny_decoded, zero_decoded = svd_decode(arrays, layout, [tiny.shape, zero.shape])
    assert np.array_equal(zero_decoded, zero)
    assert frobenius2(tiny - tiny_decoded) <= 0.05 * frobenius2(tiny) + 1e-80
    assert np.all(np.isfinite(tiny_decoded))


# ---------------------------------------------------------------------------------------------
# which tensors are compressed, and how


def test_vectors_and_scalars_go_raw_and_come_back_bit_exact() -> None:
    rng = np.random.default_rng(1)
    bias = rng.standard_normal(16).astype(np.float32)
    scalar = np.array(0.25, dtype=np.float32)
    arrays, layout = svd_encode([bias, scalar], 0.95)
    assert layout == [RAW, RAW]
    decoded = svd_decode(arrays, layout, [bias.shape, scalar.shape])
    assert np.array_equal(decoded[0], bias) and decoded[0].dtype == np.float32
    assert np.array_equal(decoded[1], scalar) and decoded[1].shape == ()


def test_a_full_rank_matrix_goes_raw_when_its_factors_would_be_larger() -> None:
    # 10 x 64 with 10 equal singular values: K = 10, factors 10 * (10 + 64 + 1) = 750 >= 640
    matrix = with_singular_values(10, 64, [1.0] * 10)
    arrays, layout = svd_encode([matrix], 0.95)
    assert layout == [RAW]
    assert len(arrays) == 1 and np.array_equal(arrays[0], matrix)
    # 12 x 12 with K = 4 (29/30 of the energy < 0.99): 4 * 25 = 100 < 144 numbers, factorised
    square = with_singular_values(12, 12, [4.0, 3.0, 2.0, 1.0])
    _, square_layout = svd_encode([square], 0.99)
    assert square_layout == [4]


def test_break_even_goes_raw() -> None:
    # 2 x 3 with K = 1: factors 1 * (2 + 3 + 1) = 6 == 6 numbers, raw; 4 x 4 with K = 1: 9 < 16, factorised
    small = with_singular_values(2, 3, [1.0])
    _, layout = svd_encode([small], 0.95)
    assert layout == [RAW]
    four = with_singular_values(4, 4, [1.0])
    _, layout = svd_encode([four], 0.95)
    assert layout == [1]


def test_conv_weights_are_compressed_as_out_by_in_k_k_and_round_trip() -> None:
    rng = np.random.default_rng(2)
    out_channels, in_channels, k = 32, 16, 3
    # a conv update of rank 3 as an out x (in*k*k) matrix
    matrix = rng.standard_normal((out_channels, 3)) @ rng.standard_normal((3, in_channels * k * k))
    conv = matrix.reshape(out_channels, in_channels, k, k).astype(np.float32)
    assert matrix_shape(conv.shape) == (out_channels, in_channels * k * k)
    arrays, layout = svd_encode([conv], 0.999)
    assert layout == [3]
    u, s, vt = arrays
    assert u.shape == (32, 3) and s.shape == (3,) and vt.shape == (3, 144)
    assert all(a.dtype == np.float32 for a in arrays)
    (decoded,) = svd_decode(arrays, layout, [conv.shape])
    assert decoded.shape == conv.shape and decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, conv, rtol=0, atol=1e-4 * np.abs(conv).max())
    # the reconstruction is U diag(S) V, written out entry by entry for a few entries
    for o, i, r, c in [(0, 0, 0, 0), (5, 3, 1, 2), (31, 15, 2, 2)]:
        column = i * k * k + r * k + c
        expected = sum(float(u[o, j]) * float(s[j]) * float(vt[j, column]) for j in range(3))
        assert decoded[o, i, r, c] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_a_whole_model_update_keeps_its_order_shapes_and_raw_entries() -> None:
    rng = np.random.default_rng(4)
    update = [
        (rng.standard_normal((16, 2)) @ rng.standard_normal((2, 27))).reshape(16, 3, 3, 3).astype(np.float32),
        rng.standard_normal(16).astype(np.float32),  # BatchNorm weight
        rng.standard_normal(16).astype(np.float32),  # running mean
        (rng.standard_normal((10, 1)) @ rng.standard_normal((1, 64))).astype(np.float32),  # Linear weight
        rng.standard_normal(10).astype(np.float32),  # Linear bias
    ]
    arrays, layout = svd_encode(update, 0.95)
    assert layout == [2, RAW, RAW, 1, RAW]
    assert len(arrays) == 3 + 1 + 1 + 3 + 1
    decoded = svd_decode(arrays, layout, [t.shape for t in update])
    for original, back in zip(update, decoded):
        assert back.shape == original.shape and back.dtype == np.float32
        np.testing.assert_allclose(back, original, atol=1e-4 * (np.abs(original).max() + 1))
    for index in (1, 2, 4):
        assert np.array_equal(decoded[index], update[index])


# ---------------------------------------------------------------------------------------------
# bits


def test_bit_count_is_32_per_factor_entry_and_per_raw_number() -> None:
    rng = np.random.default_rng(5)
    conv = (rng.standard_normal((32, 2)) @ rng.standard_normal((2, 144))).reshape(32, 16, 3, 3).astype(np.float32)
    linear = (rng.standard_normal((10, 1)) @ rng.standard_normal((1, 64))).astype(np.float32)
    full = with_singular_values(10, 64, [1.0] * 10)  # goes raw
    bias = rng.standard_normal(10).astype(np.float32)
    update = [conv, linear, full, bias]
    arrays, layout = svd_encode(update, 0.95)
    assert layout == [2, 1, RAW, RAW]
    expected = 32 * (32 * 2 + 2 + 2 * 144) + 32 * (10 * 1 + 1 + 1 * 64) + 32 * (10 * 64) + 32 * 10
    assert svd_upload_bits(arrays, layout) == expected
    assert expected < 32 * sum(t.size for t in update)


def test_a_layout_that_does_not_match_the_arrays_is_rejected() -> None:
    matrix = with_singular_values(20, 30, [2.0, 1.0])
    arrays, layout = svd_encode([matrix], 0.95)
    with pytest.raises(ValueError):
        svd_upload_bits(arrays[:2], layout)
    with pytest.raises(ValueError):
        svd_decode(arrays, [RAW], [matrix.shape])
    with pytest.raises(ValueError):
        svd_decode(arrays, layout, [(30, 20)])


# ---------------------------------------------------------------------------------------------
# energy schedule


def test_energy_schedule_endpoints_and_linear_steps() -> None:
    assert energy_threshold(1, 50) == 0.95  # exactly, not approximately
    assert energy_threshold(50, 50) == 0.98
    steps = np.diff([energy_threshold(t, 50) for t in range(1, 51)])
    np.testing.assert_allclose(steps, 0.03 / 49, rtol=1e-9)
    assert energy_threshold(2, 3) == pytest.approx(0.965)
    assert energy_threshold(1, 1) == 0.95  # a single round stays at the start
    assert energy_threshold(3, 5, start=0.9, end=0.8) == pytest.approx(0.85)  # decreasing is allowed


@pytest.mark.parametrize(("server_round", "num_rounds"), [(0, 10), (11, 10), (1, 0)])
def test_energy_schedule_rejects_rounds_outside_1_to_num_rounds(server_round, num_rounds) -> None:
    with pytest.raises(ValueError):
        energy_threshold(server_round, num_rounds)


def test_energy_schedule_rejects_shares_outside_0_1() -> None:
    with pytest.raises(ValueError):
        energy_threshold(1, 10, start=0.0)
    with pytest.raises(ValueError):
        energy_threshold(1, 10, end=1.5)
