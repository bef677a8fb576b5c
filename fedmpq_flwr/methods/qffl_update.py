"""q-FFL / q-FedAvg (Li, Sanjabi, Beirami, Smith, "Fair Resource Allocation in Federated Learning",
ICLR 2020), client and server steps on lists of numpy arrays (no torch, no Flower).

Client k receives the global model w, computes F_k, the mean cross-entropy of w on its whole
training partition *before* local training, trains to w_k and, with L the Lipschitz estimate (the
authors' 1/lr by default), returns

    Delta_k = F_k^q * L (w - w_k)                                  (one array per trainable entry)
    h_k     = q * F_k^(q-1) * ||L (w - w_k)||^2 + L * F_k^q        (a float)

The server sets w <- w - sum_k Delta_k / sum_k h_k on the trainable entries. The norm runs over the
trainable parameters only (conv/linear weights and biases, BatchNorm affine weights:
`fedmpq_flwr.training.weights.trainable_mask`). BatchNorm running statistics (and any other non-trainable
float) are not part of the objective's gradient: clients send their local values and the server
averages them as FedAvg does, uniformly by default (`buffer_weights` to change it), because with
q = 0 the parameter step is the *uniform* mean of the w_k (h_k = L, Delta_k = L (w - w_k)), so the
whole model is then exactly uniform FedAvg (`strategy.weighting: uniform`).

Upload layout (`client_update`): one float32 array per communicated state entry, in order: Delta_k
for trainable entries, the local value for the others; h_k (and F_k for logging) travel as scalars
beside it (Flower fit metrics). Same size as a FedAvg upload: 32 bits per float.

Compared with the authors' `flearn/trainers/qffedavg.py` (litian96/fair_flearn, TensorFlow):
- same: F_k is the loss of the received model on the client's whole training data before local
  training (`c.get_loss()`); L = 1/learning_rate, the local SGD learning rate; the pseudo-gradient
  is (w - w_k) / lr; the norm is the squared L2 norm of all of it flattened (`norm_grad`);
  the server step is `aggregate2` (w - sum Delta / sum h); sampled clients enter uniformly.
- F_k = 0: the authors add 1e-10 to every loss; here F_k is floored at 1e-10 (max), which differs
  only for losses below ~1e-10 and keeps F_k^(q-1) finite for q < 1.
- their models (linear, SVM, LSTM) have no BatchNorm, so "all trainable variables" is the whole
  model; here BatchNorm running statistics are excluded from the step and averaged as above, and
  F_k is computed in eval mode (running statistics of the received model), without augmentation.
- their local solver is plain SGD, so w - w_k = lr * (sum of the local gradients); this project's
  clients use momentum (and weight decay), which makes w - w_k up to 1/(1 - momentum) times larger,
  so L (w - w_k) overstates the gradient and the first term of h_k grows by that factor squared
  relative to the second. `client_update` takes L explicitly; the wiring passes
  `qffl.lipschitz_scale / train.lr`, the authors' rule at scale 1 (L is immaterial at q = 0, where
  the step is the uniform mean).
- they sample clients with probability proportional to their data size (`--sampling 2`); here the
  strategy's seeded uniform sampling chooses the participants.
- arithmetic is float64 on both sides; the uploaded Deltas are float32, like every Flower upload.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LOSS_FLOOR = 1e-10


def _check_q(q: float) -> float:
    if not math.isfinite(q) or q < 0:
        raise ValueError(f"q-FFL q must be a finite number >= 0, got {q!r}")
    return float(q)


def _check_loss(loss: float) -> float:
    if not math.isfinite(loss) or loss < 0:
        raise ValueError(f"q-FFL loss F_k must be a finite number >= 0, got {loss!r}")
    return max(float(loss), LOSS_FLOOR)


def _check_entries(name: str, arrays: Sequence[np.ndarray], trainable: Sequence[bool]) -> None:
    if len(arrays) != len(trainable):
        raise ValueError(f"{name} has {len(arrays)} arrays but the trainable mask has {len(trainable)} entries")


def client_update(
    global_weights: Sequence[np.ndarray],
    local_weights: Sequence[np.ndarray],
    trainable: Sequence[bool],
    loss: float,
    q: float,
    lipschitz: float,
) -> tuple[list[np.ndarray], float]:
    """Client k's upload and h_k: Delta_k = F^q L (w - w_k) (float32) for trainable entries, the local
    value (float32) for the others, and h_k = q F^(q-1) ||L (w - w_k)||^2 + L F^q over the trainable
    entries, with L = `lipschitz` and F = max(loss, 1e-10)."""
    q, loss = _check_q(q), _check_loss(loss)
    if not math.isfinite(lipschitz) or lipschitz <= 0:
        raise ValueError(f"q-FFL L (lipschitz) must be a finite number > 0, got {lipschitz!r}")
    _check_entries("global_weights", global_weights, trainable)
    _check_entries("local_weights", local_weights, trainable)
    try:
        weight = loss**q
    except OverflowError as error:
        raise ValueError(f"q-FFL F_k^q overflows for F_k = {loss} and q = {q}: use a smaller q") from error
    upload, squared_norm = [], 0.0
    for w, w_k, is_trainable in zip(global_weights, local_weights, trainable):
        w, w_k = np.asarray(w), np.asarray(w_k)
        if w.shape != w_k.shape:
            raise ValueError(f"local array of shape {w_k.shape} does not match the global one's {w.shape}")
        if not is_trainable:
            upload.append(w_k.astype(np.float32, copy=True))
            continue
        pseudo_gradient = lipschitz * (w.astype(np.float64) - w_k.astype(np.float64))
        squared_norm += float(np.sum(pseudo_gradient**2))
        upload.append((weight * pseudo_gradient).astype(np.float32))
    h = lipschitz * weight
    if q > 0:
        h += q * loss ** (q - 1) * squared_norm
    return upload, float(h)


def aggregate(
    global_weights: Sequence[np.ndarray],
    uploads: Sequence[Sequence[np.ndarray]],
    hs: Sequence[float],
    trainable: Sequence[bool],
    buffer_weights: Sequence[float] | None = None,
) -> list[np.ndarray]:
    """The new global model (float32): w - sum_k Delta_k / sum_k h_k for trainable entries, the
    average of the clients' values for the others (uniform, or weighted by `buffer_weights`)."""
    if not uploads or len(uploads) != len(hs):
        raise ValueError(f"q-FFL aggregate needs one h per upload and at least one; got {len(uploads)} and {len(hs)}")
    _check_entries("global_weights", global_weights, trainable)
    for upload in uploads:
        _check_entries("an upload", upload, trainable)
    total_h = math.fsum(float(h) for h in hs)
    if any(not math.isfinite(float(h)) or float(h) < 0 for h in hs) or not total_h > 0:
        raise ValueError(f"q-FFL needs finite h_k >= 0 with a positive sum, got {list(hs)}")
    if buffer_weights is None:
        buffer_weights = [1.0] * len(uploads)
    shares = np.asarray(buffer_weights, dtype=np.float64)
    if shares.shape != (len(uploads),) or np.any(shares < 0) or not shares.sum() > 0:
        raise ValueError(f"buffer_weights must be one non-negative weight per upload with a positive sum, got {shares}")
    shares = shares / shares.sum()
    new_weights = []
    for i, (w, is_trainable) in enumerate(zip(global_weights, trainable)):
        w = np.asarray(w)
        arrays = [np.asarray(upload[i]) for upload in uploads]
        if any(a.shape != w.shape for a in arrays):
            raise ValueError(f"entry {i}: uploaded shapes {[a.shape for a in arrays]} do not match {w.shape}")
        if is_trainable:
            step = sum(a.astype(np.float64) for a in arrays) / total_h
            new_weights.append((w.astype(np.float64) - step).astype(np.float32))
        else:
            mean = sum(share * a.astype(np.float64) for share, a in zip(shares, arrays))
            new_weights.append(np.asarray(mean).astype(np.float32))
    return new_weights
