"""FedKD's uplink codec (Wu et al., Nature Communications 2022): a truncated SVD per weight matrix.

A client's model update dW (a list of float32 arrays, one per communicated state entry) is sent as
follows. Every tensor with at least two dimensions is viewed as a matrix A of shape m x n
(`matrix_shape`: a Linear weight as it is, a conv weight [out, in, kh, kw] as out x in*kh*kw);
everything else (biases, BatchNorm affine parameters and running statistics, scalars) is sent raw.

For a matrix with singular values s_1 >= s_2 >= ... the *energy* of the first k is
`sum_{i<=k} s_i^2`: its share of the total energy `sum_i s_i^2 = ||A||_F^2` is the share of the
squared Frobenius norm that the rank-k truncation A_k keeps, so that
`||A - A_k||_F^2 = ||A||_F^2 - sum_{i<=k} s_i^2`. The codec keeps the smallest K >= 1 whose
energy is at least a share T of the total (`svd_rank`), so `||A - A_K||_F^2 <= (1 - T) ||A||_F^2`,
and sends U_K (m x K), S_K (K) and V_K (K x n), all float32. When those factors hold at least as
many numbers as the matrix itself (K * (m + n + 1) >= m * n) the matrix is sent raw instead: it is
then exact and no larger. (FedKD's reference code, `run.py`, factorises every matrix whatever its
rank; a factorisation that costs more than the matrix would raise the communication FedKD exists to
cut, and lose precision for nothing.)

The upload is the list of arrays in the update's order (one array for a raw tensor, three for a
factorised one) plus its layout: one rank per tensor, 0 meaning raw. Its size is exactly 32 bits
per number sent: 32 * (m*K + K + K*n) per factorised matrix and 32 * numel per raw tensor
(`svd_upload_bits`); the layout is a few integers of metadata and is not counted.

Where the reference code is not followed (the paper is):
- it reconstructs with `np.dot(np.dot(u, sigma), v)` on the *vector* sigma, which is not
  U diag(S) V (it fails unless m == K): here the reconstruction is U_K diag(S_K) V_K;
- its rank search starts at k = 0 and stops before k = min(m, n), so a matrix that needs all its
  singular values gets K = 0 (an empty update): here K >= 1 and K = min(m, n) is reachable;
- its energy schedule `tmin + (comm_round + 1) / epochs * (tmax - tmin)` never uses `tmin`
  itself: here T(1) = energy_start and T(num_rounds) = energy_end exactly (`energy_threshold`).
"""

from __future__ import annotations

import math

import numpy as np

FLOAT_BITS = 32
RAW = 0  # the rank that marks a tensor sent raw in a layout


def energy_threshold(server_round: int, num_rounds: int, start: float = 0.95, end: float = 0.98) -> float:
    """The energy share T(t) kept in round t = 1..num_rounds: linear from `start` (round 1) to
    `end` (round num_rounds): with f = (t - 1) / (num_rounds - 1), T(t) = (1 - f) * start + f * end,
    which is `start` and `end` exactly at the two ends. With a single round, T = start."""
    if num_rounds < 1 or not 1 <= server_round <= num_rounds:
        raise ValueError(f"round {server_round} is not in 1..{num_rounds}")
    for name, value in (("start", start), ("end", end)):
        if not 0.0 < value <= 1.0:
            raise ValueError(f"energy {name} must be in (0, 1], got {value}")
    if num_rounds == 1:
        return float(start)
    fraction = (server_round - 1) / (num_rounds - 1)
    return float((1.0 - fraction) * start + fraction * end)


def svd_rank(singular_values: np.ndarray, energy: float) -> int:
    """The smallest K >= 1 whose K largest singular values hold at least a share `energy` of the
    total energy sum_i s_i^2 (1 for a zero matrix: no K needs more)."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy share must be in (0, 1], got {energy}")
    values = np.sort(np.abs(np.asarray(singular_values, dtype=np.float64).ravel()))[::-1]
    if values.size == 0:
        raise ValueError("no singular values")
    cumulative = np.cumsum(values * values)
    # cumulative[-1] is the total itself, so the search always ends at K <= len(values)
    return int(np.searchsorted(cumulative, energy * cumulative[-1], side="left")) + 1


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The m x n matrix a tensor is compressed as (out x everything else), None if it is sent raw."""
    if len(shape) < 2:
        return None
    return int(shape[0]), math.prod(shape[1:])


def factor_numbers(m: int, n: int, rank: int) -> int:
    """How many numbers the factors U (m x K), S (K) and V (K x n) hold."""
    return rank * (m + n + 1)


def svd_encode(update: list[np.ndarray], energy: float) -> tuple[list[np.ndarray], list[int]]:
    """The arrays a client sends for `update` and their layout (one rank per tensor, 0 = raw)."""
    arrays: list[np.ndarray] = []
    layout: list[int] = []
    for tensor in update:
        tensor = np.asarray(tensor, dtype=np.float32)
        matrix = matrix_shape(tensor.shape)
        if matrix is None:
            arrays.append(tensor.copy())
            layout.append(RAW)
            continue
        m, n = matrix
        # float64 decomposition of the float32 values: the rank choice is not at the mercy of
        # float32 rounding in the singular values
        u, s, vt = np.linalg.svd(tensor.reshape(m, n).astype(np.float64), full_matrices=False)
        rank = svd_rank(s, energy)
        if factor_numbers(m, n, rank) >= m * n:
            arrays.append(tensor.copy())
            layout.append(RAW)
            continue
        arrays += [
            u[:, :rank].astype(np.float32),
            s[:rank].astype(np.float32),
            vt[:rank, :].astype(np.float32),
        ]
        layout.append(rank)
    return arrays, layout


def _grouped(arrays: list[np.ndarray], layout: list[int]) -> list[list[np.ndarray]]:
    """The upload's arrays split per tensor (1 array if raw, 3 if factorised)."""
    expected = sum(1 if rank == RAW else 3 for rank in layout)
    if len(arrays) != expected or any(rank < 0 for rank in layout):
        raise ValueError(f"SVD upload has {len(arrays)} arrays; its layout {layout} describes {expected}")
    groups, position = [], 0
    for rank in layout:
        count = 1 if rank == RAW else 3
        groups.append(list(arrays[position : position + count]))
        position += count
    return groups


def svd_decode(arrays: list[np.ndarray], layout: list[int], shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
    """The float32 update an upload stands for, each tensor in its original `shapes` entry
    (the server knows them: they are its global model's)."""
    if len(layout) != len(shapes):
        raise ValueError(f"layout has {len(layout)} tensors, the model {len(shapes)}")
    decoded = []
    for group, rank, shape in zip(_grouped(arrays, layout), layout, shapes):
        shape = tuple(int(d) for d in shape)
        if rank == RAW:
            (tensor,) = group
            if tuple(tensor.shape) != shape:
                raise ValueError(f"raw tensor of shape {tuple(tensor.shape)} where {shape} was expected")
            decoded.append(np.asarray(tensor, dtype=np.float32).copy())
            continue
        u, s, vt = group
        matrix = matrix_shape(shape)
        if matrix is None or u.shape != (matrix[0], rank) or s.shape != (rank,) or vt.shape != (rank, matrix[1]):
            raise ValueError(
                f"factors {u.shape}, {s.shape}, {vt.shape} do not give a rank-{rank} tensor of shape {shape}"
            )
        # U diag(S) V: scale U's columns by S (not a product with the vector S, the reference's bug)
        product = (u.astype(np.float64) * s.astype(np.float64)) @ vt.astype(np.float64)
        decoded.append(product.astype(np.float32).reshape(shape))
    return decoded


def svd_upload_bits(arrays: list[np.ndarray], layout: list[int]) -> int:
    """Exact size of an upload: 32 bits per number sent (factors of the compressed matrices and
    every raw tensor), i.e. 32 * (m*K + K + K*n) per compressed matrix + 32 * numel per raw one."""
    return FLOAT_BITS * sum(int(array.size) for group in _grouped(arrays, layout) for array in group)
