"""Tests of the FedPAQ quantizer (fedmpq_flwr.quant.qsgd): unbiasedness, variance bound, exact bits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmpq_flwr.quant.qsgd import (
    decode_model_update,
    encode_model_update,
    model_update_bits,
    num_buckets,
    qsgd_bits,
    qsgd_decode,
    qsgd_encode,
    qsgd_levels,
    qsgd_quantize,
)


def draws(d: np.ndarray, count: int, bits: int, bucket: int, seed: int = 0) -> np.ndarray:
    """`count` independent quantizations of d, stacked (float64)."""
    rng = np.random.default_rng(seed)
    return np.stack([qsgd_quantize(d, rng, bits, bucket).astype(np.float64) for _ in range(count)])


def bucket_rows(x: np.ndarray, bucket: int) -> list[np.ndarray]:
    flat = x.reshape(-1)
    return [flat[i : i + bucket] for i in range(0, flat.size, bucket)]


def test_levels_for_bits() -> None:
    assert [qsgd_levels(b) for b in range(2, 9)] == [1, 3, 7, 15, 31, 63, 127]
    for bad in (0, 1, 9, 4.0):
        with pytest.raises(ValueError):
            qsgd_levels(bad)  # type: ignore[arg-type]


def test_unbiased_within_five_standard_errors() -> None:
    """Mean of 3000 quantizations of a 1000-coordinate tensor (buckets of 512 and 488): every
    coordinate within 5 standard errors of d, the standard error from the exact per-coordinate
    variance (norm/s)^2 p (1 - p), p the fractional part of s |d_i| / norm."""
    rng = np.random.default_rng(1)
    d = (rng.standard_normal(1000) * np.linspace(0.01, 2.0, 1000)).astype(np.float32)
    bits, bucket, count, s = 4, 512, 3000, 7
    mean = draws(d, count, bits, bucket).mean(axis=0)
    _, norms = qsgd_encode(d, np.random.default_rng(0), bits, bucket)
    norm_per_coord = np.repeat(norms.astype(np.float64), bucket)[: d.size]
    ratio = s * np.abs(d.astype(np.float64)) / norm_per_coord
    frac = ratio - np.floor(ratio)
    std_err = norm_per_coord / s * np.sqrt(frac * (1 - frac) / count)
    assert np.all(np.abs(mean - d) <= 5 * std_err + 1e-6 * norm_per_coord)
    # and the total deviation is of the size sampling noise predicts (not systematically off)
    z = (mean - d).sum() / math.sqrt(float((std_err**2).sum()))
    assert abs(z) < 5


@pytest.mark.parametrize(
    ("bits", "bucket", "kind"),
    [(2, 512, "gauss"), (4, 512, "gauss"), (4, 16, "gauss"), (3, 64, "sparse"), (2, 100, "uniform")],
)
def test_variance_bound_per_bucket(bits: int, bucket: int, kind: str) -> None:
    """Measured E||Q(v)-v||^2 of every bucket (mean over 400 draws) is within 10% of its exact value
    sum_i (norm/s)^2 p_i (1 - p_i) and below min(n/s^2, sqrt(n)/s) ||v||^2 times 1.1 (sampling noise);
    bucket 16 at 4 bits exercises the n/s^2 branch of the minimum."""
    rng = np.random.default_rng(7)
    n = 3 * bucket + bucket // 3  # a short last bucket
    if kind == "gauss":
        d = rng.standard_normal(n)
    elif kind == "uniform":
        d = rng.uniform(-1, 1, n)
    else:
        d = np.zeros(n)
        d[rng.choice(n, size=n // 20, replace=False)] = rng.standard_normal(n // 20)
    d = d.astype(np.float32)
    s = qsgd_levels(bits)
    q = draws(d, 400, bits, bucket, seed=3)
    _, norms = qsgd_encode(d, np.random.default_rng(0), bits, bucket)
    for b, (v, norm) in enumerate(zip(bucket_rows(d.astype(np.float64), bucket), norms.astype(np.float64))):
        errors = ((q[:, b * bucket : b * bucket + v.size] - v) ** 2).sum(axis=1)
        ratio = s * np.abs(v) / norm
        frac = ratio - np.floor(ratio)
        exact = (norm / s) ** 2 * float((frac * (1 - frac)).sum())
        bound = min(v.size / s**2, math.sqrt(v.size) / s) * float((v**2).sum())
        assert exact <= bound
        assert errors.mean() == pytest.approx(exact, rel=0.1)
        assert errors.mean() <= 1.1 * bound


def test_bit_count_exact() -> None:
    assert num_buckets(1000, 512) == 2 and num_buckets(1024, 512) == 2 and num_buckets(0, 512) == 0
    assert qsgd_bits(1000, 4, 512) == 1000 * 4 + 32 * 2
    assert qsgd_bits(1, 8, 512) == 8 + 32
    assert qsgd_bits(0, 4, 512) == 0
    levels, norms = qsgd_encode(np.ones(1500, np.float32), np.random.default_rng(0), bits=3, bucket=100)
    assert levels.size * 3 + 32 * norms.size == qsgd_bits(1500, 3, 100) == 1500 * 3 + 32 * 15


@pytest.mark.parametrize("shape", [(3, 4, 5), (7,), (), (0,), (2, 0, 3), (1030,)])
def test_shapes_and_dtypes_round_trip(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    d = rng.standard_normal(shape).astype(np.float32)
    levels, norms = qsgd_encode(d, rng, bits=4, bucket=512)
    assert levels.dtype == np.int8 and levels.shape == d.shape
    assert norms.dtype == np.float32 and norms.shape == (num_buckets(d.size, 512),)
    assert levels.size == 0 or int(np.abs(levels).max()) <= 7
    decoded = qsgd_decode(levels, norms, bits=4, bucket=512)
    assert decoded.dtype == np.float32 and decoded.shape == d.shape
    # every decoded value is norm * level / s of its bucket, with d's sign where non-zero
    flat_levels = levels.reshape(-1).astype(np.float64)
    norm_per_coord = np.repeat(norms.astype(np.float64), 512)[: d.size]
    np.testing.assert_allclose(decoded.reshape(-1), norm_per_coord * flat_levels / 7, rtol=1e-6)
    assert np.all(np.sign(flat_levels) * np.sign(d.reshape(-1)) >= 0)


def test_zero_input_and_zero_bucket() -> None:
    """Zero tensors and zero buckets inside a tensor give zero levels, zero norms, no NaN, no warning."""
    rng = np.random.default_rng(0)
    with np.errstate(all="raise"):
        levels, norms = qsgd_encode(np.zeros((4, 300), np.float32), rng)
        assert not levels.any() and not norms.any()
        assert not qsgd_decode(levels, norms).any()
        d = np.zeros(1024, np.float32)
        d[600:] = 1.0  # first bucket all zeros, second not
        levels, norms = qsgd_encode(d, rng)
        q = qsgd_decode(levels, norms)
    assert norms[0] == 0 and norms[1] > 0
    assert np.all(np.isfinite(q)) and not q[:600].any() and np.all(q[600:] >= 0)


@pytest.mark.parametrize(("bits", "d"), [(4, [2.0, -3.0, 0.0, 6.0]), (3, [-1.0, 2.0, 2.0]), (2, [0.0, -2.5, 0.0])])
def test_grid_points_are_exact(bits: int, d: list[float]) -> None:
    """A bucket whose s |d_i| / ||d|| are integers is reproduced exactly, whatever the draw
    (norm 7 at s = 7, norm 3 at s = 3, norm 2.5 at s = 1)."""
    d_array = np.array(d, np.float32)
    for seed in range(5):
        np.testing.assert_array_equal(qsgd_quantize(d_array, np.random.default_rng(seed), bits), d_array)


def test_norm_is_rounded_up_to_float32() -> None:
    """The sent norm is never below the exact one, so no level exceeds s."""
    rng = np.random.default_rng(5)
    for _ in range(50):
        d = rng.standard_normal(37).astype(np.float32)
        levels, norms = qsgd_encode(d, rng, bits=2, bucket=512)
        assert float(norms[0]) >= math.sqrt(float((d.astype(np.float64) ** 2).sum()))
        assert int(np.abs(levels).max()) <= 1


def test_determinism_per_seed() -> None:
    d = np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32)
    a = qsgd_encode(d, np.random.default_rng(42))
    b = qsgd_encode(d, np.random.default_rng(42))
    c = qsgd_encode(d, np.random.default_rng(43))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_rejects_bad_input() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        qsgd_encode(np.array([1.0, np.nan]), rng)
    with pytest.raises(ValueError):
        qsgd_encode(np.ones(3), rng, bucket=0)
    with pytest.raises(ValueError):
        qsgd_decode(np.zeros(600, np.int8), np.ones(1, np.float32))  # needs 2 norms
    with pytest.raises(ValueError):
        qsgd_decode(np.full(3, 8, np.int8), np.ones(1, np.float32), bits=4)  # level 8 > s = 7


# ---- whole model update ---------------------------------------------------------------


def model_state(seed: int) -> list[np.ndarray]:
    """A small 'communicated state': conv weight, BN weight, BN bias, running mean, running var, fc."""
    rng = np.random.default_rng(seed)
    shapes = [(8, 3, 3, 3), (8,), (8,), (8,), (8,), (10, 8)]
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


MASK = [True, True, True, False, False, True]


def test_model_update_layout_and_bits() -> None:
    reference, local = model_state(0), model_state(1)
    upload = encode_model_update(local, reference, MASK, np.random.default_rng(0), bits=4, bucket=64)
    assert len(upload) == len(local) + 1
    for array, ref, is_quantized, value in zip(upload, reference, MASK, local):
        assert array.shape == ref.shape
        assert array.dtype == (np.int8 if is_quantized else np.float32)
        if not is_quantized:
            np.testing.assert_array_equal(array, value)
    buckets = [4, 1, 1, 2]  # 216, 8, 8, 80 coordinates in buckets of 64
    assert upload[-1].dtype == np.float32 and upload[-1].shape == (sum(buckets),)
    quantized_numel = 216 + 8 + 8 + 80
    expected = quantized_numel * 4 + 32 * sum(buckets) + 32 * 16
    assert model_update_bits(upload, MASK, bits=4, bucket=64) == expected


def test_model_update_round_trip_is_unbiased() -> None:
    """Decoded models: raw entries equal the local value; quantized ones average to it over draws."""
    reference, local = model_state(0), model_state(1)
    rng = np.random.default_rng(9)
    uploads = [encode_model_update(local, reference, MASK, rng) for _ in range(800)]
    decoded = [decode_model_update(upload, reference, MASK) for upload in uploads]
    for i, (is_quantized, value) in enumerate(zip(MASK, local)):
        stack = np.stack([model[i] for model in decoded]).astype(np.float64)
        assert stack.shape[1:] == value.shape
        if is_quantized:
            # one bucket per tensor here: per-coordinate std <= ||d|| / (2 s); 5 standard errors
            diff = value.astype(np.float64) - reference[i]
            tolerance = 5 * np.linalg.norm(diff) / (2 * 7 * math.sqrt(800)) + 1e-5
            assert np.abs(stack.mean(axis=0) - value).max() <= tolerance
        else:
            assert np.all(stack == value)


def test_model_update_when_nothing_changed() -> None:
    """A client that did not move uploads zero levels and zero norms; decoding gives the reference."""
    reference = model_state(0)
    upload = encode_model_update(reference, reference, MASK, np.random.default_rng(0))
    assert not upload[-1].any()
    for decoded, ref in zip(decode_model_update(upload, reference, MASK), reference):
        np.testing.assert_array_equal(decoded, ref)


def test_model_update_rejects_mismatches() -> None:
    reference, local = model_state(0), model_state(1)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        encode_model_update(local[:-1], reference, MASK, rng)
    with pytest.raises(ValueError):
        encode_model_update(local, reference, MASK[:-1], rng)
    upload = encode_model_update(local, reference, MASK, rng)
    with pytest.raises(ValueError):
        decode_model_update(upload[:-1], reference, MASK)
    with pytest.raises(ValueError):
        decode_model_update(upload[:-1] + [upload[-1][:-1]], reference, MASK)
    with pytest.raises(ValueError):
        model_update_bits(upload, MASK, bucket=64)  # norms were made for buckets of 512


def test_trainable_mask_excludes_batchnorm_buffers() -> None:
    from fedmpq_flwr.models import build_model
    from fedmpq_flwr.training.weights import communicated_keys, trainable_mask

    model = build_model("resnet20", 10)
    keys, mask = communicated_keys(model), trainable_mask(model)
    assert len(keys) == len(mask)
    for key, is_trainable in zip(keys, mask):
        assert is_trainable == (not key.endswith(("running_mean", "running_var")))
    assert sum(mask) == len(list(model.parameters()))


def test_fedpaq_upload_of_a_torch_model() -> None:
    """Encode a tiny_cnn update as a FedPAQ client would, decode it into the model: BatchNorm running
    statistics arrive exactly, the bit count follows from the model's sizes."""
    import torch

    from fedmpq_flwr.models import build_model
    from fedmpq_flwr.training.weights import get_weights, set_weights, trainable_mask

    torch.manual_seed(0)
    model = build_model("tiny_cnn", 10)
    reference, mask = get_weights(model), trainable_mask(model)
    rng = np.random.default_rng(1)
    local = [w + (0.01 * rng.standard_normal(w.shape)).astype(np.float32) for w in reference]
    upload = encode_model_update(local, reference, mask, np.random.default_rng(2))
    decoded = decode_model_update(upload, reference, mask)
    set_weights(model, decoded)
    for value, received, is_quantized in zip(local, decoded, mask):
        if not is_quantized:
            np.testing.assert_array_equal(received, value)
    quantized_sizes = [w.size for w, q in zip(reference, mask) if q]
    raw = sum(w.size for w, q in zip(reference, mask) if not q)
    expected = sum(4 * n + 32 * num_buckets(n, 512) for n in quantized_sizes) + 32 * raw
    assert model_update_bits(upload, mask) == expected
    assert expected < 32 * sum(w.size for w in reference) / 7  # about 4.3 bits per coordinate
