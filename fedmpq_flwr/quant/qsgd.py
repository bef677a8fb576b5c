"""The unbiased, bucketed QSGD quantizer that FedPAQ clients apply to their model update (numpy only).

FedPAQ (Reisizadeh et al., AISTATS 2020) uploads Q(x_local - x_global) with the QSGD quantizer of
Alistarh et al. (NeurIPS 2017). Here a tensor is flattened and cut into buckets of `bucket`
coordinates (the last one may be shorter), each quantized on its own:

    Q(v)_i = ||v|| * sign(v_i) * l_i / s,   l_i in {0, ..., s},

with `s = 2^(bits-1) - 1` levels, so that a coordinate takes `bits` bits: one sign bit and
`bits - 1` bits for its level (bits 4: s = 7). With r_i = s |v_i| / ||v|| the level is floor(r_i) + 1
with probability r_i - floor(r_i), floor(r_i) otherwise: E[Q(v)] = v, and (QSGD, Lemma 3.1)
E||Q(v) - v||^2 <= min(n / s^2, sqrt(n) / s) ||v||^2 for a bucket of n coordinates. The norm is
sent as float32; it is rounded *up* to float32 so that r_i <= s, and the quantizer is unbiased for
the norm that is actually sent. A bucket of zeros has norm 0 and levels 0 (decoded as zeros, no NaN).
Levels are fixed-length codes (QSGD's Elias coding of the levels is not used), so a tensor of
`numel` coordinates costs exactly `numel * bits + 32 * ceil(numel / bucket)` bits.

Upload layout of a whole model update (`encode_model_update`): for the m communicated state arrays
in order (`fedmpq_flwr.training.weights.communicated_keys`), one array each,
  - quantized entries (`quantized[i]`, the trainable parameters): int8 signed levels
    sign(d_j) * l_j in [-s, s], in the tensor's shape, of d = local - reference;
  - the other entries (BatchNorm running statistics, other float buffers): the client's local
    value as float32, unchanged;
then one 1-D float32 array with the bucket norms of the quantized entries, tensor after tensor in
order, bucket after bucket. `decode_model_update` turns an upload back into the client's model as
the server sees it: reference + Q(d) for quantized entries, the raw value for the others; the mean
of the decoded models is FedPAQ's x + mean_k Q(d_k). `model_update_bits` counts
`sum(numel * bits) + 32 * buckets + 32 * raw floats` (int8 is the in-memory container; the bit count
is that of the packed codes, as `fedmpq_flwr.quant.payload` counts N-bit codes held in int16).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

FLOAT_BITS = 32
DEFAULT_BITS = 4
DEFAULT_BUCKET = 512
MIN_BITS = 2  # 1 bit would leave s = 0 levels
MAX_BITS = 8  # s = 127: the signed levels fit int8


def qsgd_levels(bits: int) -> int:
    """s, the number of non-zero levels for `bits` bits per coordinate including the sign."""
    if not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"QSGD bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    return 2 ** (int(bits) - 1) - 1


def _check_bucket(bucket: int) -> int:
    if not isinstance(bucket, (int, np.integer)) or bucket < 1:
        raise ValueError(f"QSGD bucket size must be a positive integer, got {bucket!r}")
    return int(bucket)


def num_buckets(numel: int, bucket: int = DEFAULT_BUCKET) -> int:
    """Buckets of a tensor of `numel` coordinates: ceil(numel / bucket) (0 for an empty tensor)."""
    return -(-int(numel) // _check_bucket(bucket))


def qsgd_bits(numel: int, bits: int = DEFAULT_BITS, bucket: int = DEFAULT_BUCKET) -> int:
    """Exact size of one encoded tensor: `bits` per coordinate plus a float32 norm per bucket."""
    qsgd_levels(bits)
    return int(numel) * int(bits) + FLOAT_BITS * num_buckets(numel, bucket)


def _buckets(flat: np.ndarray, bucket: int) -> np.ndarray:
    """The flat float64 vector zero-padded to whole buckets, as a (buckets, bucket) matrix."""
    padded = np.zeros(num_buckets(flat.size, bucket) * bucket, dtype=np.float64)
    padded[: flat.size] = flat
    return padded.reshape(-1, bucket)


def _sent_norms(rows: np.ndarray) -> np.ndarray:
    """Each row's L2 norm as the float32 that is sent, rounded up so it is never below the true norm."""
    exact = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    sent = exact.astype(np.float32)
    low = sent.astype(np.float64) < exact
    sent[low] = np.nextafter(sent[low], np.float32(np.inf))
    return sent


def qsgd_encode(
    d: np.ndarray, rng: np.random.Generator, bits: int = DEFAULT_BITS, bucket: int = DEFAULT_BUCKET
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize `d` (any shape, finite): int8 signed levels in d's shape, float32 norms per bucket.

    The stochastic rounding draws `ceil(d.size / bucket) * bucket` uniforms from `rng`, so the same
    generator state gives the same payload.
    """
    s = qsgd_levels(bits)
    bucket = _check_bucket(bucket)
    d = np.asarray(d)
    flat = d.reshape(-1).astype(np.float64)
    if not np.all(np.isfinite(flat)):
        raise ValueError("QSGD input has NaN or infinite entries")
    rows = _buckets(flat, bucket)
    norms = _sent_norms(rows)
    divisor = np.where(norms > 0, norms.astype(np.float64), 1.0)[:, None]
    ratio = np.minimum(np.abs(rows) * (s / divisor), float(s))  # r_i in [0, s]; zero rows stay 0
    lower = np.floor(ratio)
    level = lower + (rng.random(ratio.shape) < (ratio - lower))
    signed = (np.sign(rows) * level).reshape(-1)[: flat.size]
    return signed.astype(np.int8).reshape(d.shape), norms


def qsgd_decode(
    levels: np.ndarray, norms: np.ndarray, bits: int = DEFAULT_BITS, bucket: int = DEFAULT_BUCKET
) -> np.ndarray:
    """The float32 tensor an encoded (levels, norms) pair stands for: norm * level / s, in levels' shape."""
    s = qsgd_levels(bits)
    bucket = _check_bucket(bucket)
    levels = np.asarray(levels)
    norms = np.asarray(norms)
    expected = num_buckets(levels.size, bucket)
    if norms.shape != (expected,):
        raise ValueError(f"QSGD payload of {levels.size} levels needs {expected} norms, got shape {norms.shape}")
    if levels.size and int(np.abs(levels.astype(np.int64)).max()) > s:
        raise ValueError(f"QSGD levels exceed s = {s} for {bits} bits")
    rows = _buckets(levels.reshape(-1), bucket)
    values = rows * (norms.astype(np.float64)[:, None] / s)
    return values.reshape(-1)[: levels.size].astype(np.float32).reshape(levels.shape)


def qsgd_quantize(
    d: np.ndarray, rng: np.random.Generator, bits: int = DEFAULT_BITS, bucket: int = DEFAULT_BUCKET
) -> np.ndarray:
    """Q(d) as float32: encode then decode (what the server receives for `d`)."""
    return qsgd_decode(*qsgd_encode(d, rng, bits, bucket), bits, bucket)


def _check_lengths(name: str, arrays: Sequence[np.ndarray], quantized: Sequence[bool]) -> None:
    if len(arrays) != len(quantized):
        raise ValueError(f"{name} has {len(arrays)} arrays but the quantized mask has {len(quantized)} entries")


def encode_model_update(
    local: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    quantized: Sequence[bool],
    rng: np.random.Generator,
    bits: int = DEFAULT_BITS,
    bucket: int = DEFAULT_BUCKET,
) -> list[np.ndarray]:
    """The arrays a FedPAQ client uploads (layout in the module docstring): QSGD levels of
    local - reference for every quantized entry, the raw float32 local value for the others, then
    all bucket norms. `reference` is the global model the client received."""
    _check_lengths("local", local, quantized)
    _check_lengths("reference", reference, quantized)
    arrays, norms = [], []
    for value, ref, is_quantized in zip(local, reference, quantized):
        value, ref = np.asarray(value), np.asarray(ref)
        if value.shape != ref.shape:
            raise ValueError(f"local array of shape {value.shape} does not match the reference's {ref.shape}")
        if is_quantized:
            diff = value.astype(np.float64) - ref.astype(np.float64)
            levels, tensor_norms = qsgd_encode(diff, rng, bits, bucket)
            arrays.append(levels)
            norms.append(tensor_norms)
        else:
            arrays.append(value.astype(np.float32, copy=True))
    all_norms = np.concatenate(norms) if norms else np.zeros(0, dtype=np.float32)
    return arrays + [all_norms.astype(np.float32)]


def _split_upload(
    upload: Sequence[np.ndarray], quantized: Sequence[bool], bucket: int
) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """The upload's tensors and, per entry, its slice of the norms (None for raw entries)."""
    if len(upload) != len(quantized) + 1:
        raise ValueError(f"FedPAQ upload has {len(upload)} arrays; expected {len(quantized)} tensors and the norms")
    *tensors, norms = (np.asarray(a) for a in upload)
    counts = [num_buckets(t.size, bucket) if q else 0 for t, q in zip(tensors, quantized)]
    if norms.ndim != 1 or norms.size != sum(counts):
        raise ValueError(f"FedPAQ upload has {norms.size} bucket norms; expected {sum(counts)}")
    slices: list[np.ndarray | None] = []
    start = 0
    for is_quantized, count in zip(quantized, counts):
        slices.append(norms[start : start + count] if is_quantized else None)
        start += count
    return tensors, slices


def decode_model_update(
    upload: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    quantized: Sequence[bool],
    bits: int = DEFAULT_BITS,
    bucket: int = DEFAULT_BUCKET,
) -> list[np.ndarray]:
    """The client's model as the server reconstructs it, float32 in `reference`'s shapes:
    reference + Q(local - reference) for quantized entries, the raw value for the others."""
    _check_lengths("reference", reference, quantized)
    tensors, norm_slices = _split_upload(upload, quantized, _check_bucket(bucket))
    decoded = []
    for tensor, ref, tensor_norms in zip(tensors, reference, norm_slices):
        ref = np.asarray(ref)
        if tensor.shape != ref.shape:
            raise ValueError(f"uploaded array of shape {tensor.shape} does not match the reference's {ref.shape}")
        if tensor_norms is None:
            decoded.append(tensor.astype(np.float32, copy=True))
        else:
            diff = qsgd_decode(tensor, tensor_norms, bits, bucket)
            decoded.append((ref.astype(np.float64) + diff).astype(np.float32))
    return decoded


def model_update_bits(
    upload: Sequence[np.ndarray], quantized: Sequence[bool], bits: int = DEFAULT_BITS, bucket: int = DEFAULT_BUCKET
) -> int:
    """Exact size of a FedPAQ upload: `bits` per quantized coordinate, 32 per bucket norm, 32 per raw float."""
    tensors, _ = _split_upload(upload, quantized, _check_bucket(bucket))
    return sum(
        qsgd_bits(t.size, bits, bucket) if is_quantized else FLOAT_BITS * int(t.size)
        for t, is_quantized in zip(tensors, quantized)
    )
