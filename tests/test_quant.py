"""Bit-plane quantization (fedmpq_flwr.quant): conversion, rebinarization, pruning, regularizer,
model conversion, activation quantizer and upload format.

Every expectation is computed by hand or independently in the test (from codes, plane sums
written out, or the float model's state_dict), never by the function under test.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedmpq_flwr.models import build_model
from fedmpq_flwr.quant import (
    SCALE_GRAD_MODES,
    BitTensor,
    QuantConv2d,
    QuantLinear,
    QuantReLU,
    bit_regularizer,
    decode_update,
    dequantized_state,
    encode_update,
    layer_bits,
    prune_model,
    quant_layers,
    quantizable_layers,
    quantize_model,
    quantized_param_count,
    rebinarize_model,
    set_scale_grad,
    upload_bits,
)
from fedmpq_flwr.quant.bitplanes import plane_values
from fedmpq_flwr.training.weights import communicated_keys

# ---------------------------------------------------------------------------------------------
# helpers (independent of the code under test)


def top(bits: int) -> int:
    return 2**bits - 1


def hand_value(planes: torch.Tensor) -> torch.Tensor:
    """sum_i b_i 2^(N-1-i), written as an explicit loop (plane 0 most significant)."""
    planes = planes.detach()
    n = planes.shape[0]
    total = torch.zeros_like(planes[0], dtype=torch.float64)
    for i in range(n):
        total = total + planes[i].double() * float(2 ** (n - 1 - i))
    return total


def hand_planes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer magnitudes -> 0/1 planes [N, *shape], MSB first, by repeated division."""
    rest = codes.abs().long().clone()
    planes = []
    for i in range(bits):
        weight = 2 ** (bits - 1 - i)
        planes.append((rest // weight).float())
        rest = rest % weight
    assert rest.numel() == 0 or int(rest.max()) == 0, "a code does not fit in `bits` bits"
    return torch.stack(planes)


def set_state(t: BitTensor, signed_codes: torch.Tensor, scale: float) -> None:
    """Overwrite a BitTensor with given signed integer codes and scale (same bit-width)."""
    with torch.no_grad():
        t.planes.copy_(hand_planes(signed_codes, t.bits))
        t.sign.copy_(torch.where(signed_codes < 0, -1.0, 1.0))
        t.scale.fill_(scale)


def assert_binary(planes: torch.Tensor) -> None:
    assert bool(((planes == 0) | (planes == 1)).all()), "planes must hold exactly 0/1"


def effective_codes(t: BitTensor) -> torch.Tensor:
    """The weight the layer uses, in units of one step S/(2^N-1) (float, should be integers)."""
    with torch.no_grad():
        return t() / (t.scale / top(t.bits))


# ---------------------------------------------------------------------------------------------
# conversion


@pytest.mark.parametrize("bits", range(1, 9))
def test_conversion_is_nearest_grid_point(bits: int) -> None:
    torch.manual_seed(bits)
    w = torch.randn(37, 29) * 0.7
    t = BitTensor(w, bits)
    scale = float(w.abs().max())
    deq = t.dequantize()

    assert t.planes.shape == (bits, 37, 29)
    assert_binary(t.planes)
    assert float(t.scale.detach()) == pytest.approx(scale, rel=1e-7)
    assert deq.abs().unique().numel() <= 2**bits
    step = scale / top(bits)
    assert float((w - deq).abs().max()) <= step / 2 + 1e-6
    # the dequantized value is what the planes encode: S * sign * sum_i b_i 2^(N-1-i) / (2^N-1)
    by_hand = scale * t.sign.double() * hand_value(t.planes) / top(bits)
    torch.testing.assert_close(deq.double(), by_hand, rtol=1e-6, atol=1e-7)
    # sign of every non-zero weight is kept, the max magnitude is exactly on the top code
    nonzero = deq != 0
    assert bool((torch.sign(deq[nonzero]) == torch.sign(w[nonzero])).all())
    assert float(deq.abs().max()) == pytest.approx(scale, rel=1e-6)
    # forward (what the layer computes with) equals dequantize
    with torch.no_grad():
        torch.testing.assert_close(t(), deq, rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
def test_grid_values_round_trip_exactly(bits: int) -> None:
    torch.manual_seed(100 + bits)
    n = top(bits)
    k = torch.randint(-n, n + 1, (200,))
    k[7] = n  # max |k| = 2^N - 1 so the conversion scale is S
    k[11] = -n
    for scale, exact in ((0.5, True), (0.3719, False)):
        w = scale * k.float() / n
        t = BitTensor(w, bits)
        deq = t.dequantize()
        if exact:  # power-of-two scale: the grid is representable, round trip is bit-exact
            assert torch.equal(deq, w)
        else:
            torch.testing.assert_close(deq, w, rtol=1e-6, atol=1e-7)
        # the planes hold exactly |k| and the sign buffer the sign of k
        assert torch.equal(hand_value(t.planes).long(), k.abs())
        assert torch.equal(t.sign.long()[k != 0], k.sign()[k != 0])


def test_zero_tensor_converts_to_zero() -> None:
    t = BitTensor(torch.zeros(3, 4), 4)
    assert torch.equal(t.dequantize(), torch.zeros(3, 4))
    assert_binary(t.planes)


# ---------------------------------------------------------------------------------------------
# optimizer step + rebinarize


def make_layer(kind: str, bits: int) -> nn.Module:
    torch.manual_seed(3)
    if kind == "linear":
        return QuantLinear(nn.Linear(12, 6), bits)
    return QuantConv2d(nn.Conv2d(3, 5, kernel_size=3, padding=1), bits)


def layer_input(kind: str) -> torch.Tensor:
    torch.manual_seed(4)
    return torch.randn(16, 12) if kind == "linear" else torch.randn(4, 3, 6, 6)


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("stochastic", [False, True])
def test_step_then_rebinarize_returns_to_grid(kind: str, bits: int, stochastic: bool) -> None:
    layer = make_layer(kind, bits)
    x = layer_input(kind)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(7) if stochastic else None
    tensors = [layer.weight_bits, layer.bias_bits]
    before = [t.dequantize().clone() for t in tensors]
    for _ in range(3):
        opt.zero_grad()
        loss = ((layer(x) - 3.0) ** 2).sum()
        loss.backward()
        opt.step()
        # value each plane stack encodes right after the float update, by hand
        pre = [t.sign.double() * hand_value(t.planes.detach()) for t in tensors]
        for t in tensors:
            t.rebinarize(gen)
        for t, v in zip(tensors, pre):
            assert_binary(t.planes)
            codes = t.sign.double() * hand_value(t.planes)
            # (+-1e-4: the code sums planes in float32, this check in float64)
            expected_lo = (v - 1e-4).floor().clamp(-top(bits), top(bits))
            expected_hi = (v + 1e-4).ceil().clamp(-top(bits), top(bits))
            if stochastic:
                assert bool(((codes >= expected_lo) & (codes <= expected_hi)).all())
                assert bool(((codes - v.clamp(-top(bits), top(bits))).abs() < 1 + 1e-4).all())
            else:
                expected = torch.round(v).clamp(-top(bits), top(bits))
                near_tie = (v - v.floor() - 0.5).abs() < 1e-4
                assert torch.equal(codes[~near_tie], expected[~near_tie])
    for t, b in zip(tensors, before):
        eff = effective_codes(t)
        assert torch.allclose(eff, eff.round(), atol=1e-4), "weights must be integer multiples of S/(2^N-1)"
        assert eff.round().abs().max() <= top(bits)
        with torch.no_grad():
            assert t().abs().unique().numel() <= 2**bits
        assert not torch.equal(t.dequantize(), b), "a large-lr step must change the weights"


def test_quant_layers_compute_with_dequantized_weights() -> None:
    torch.manual_seed(8)
    conv = nn.Conv2d(4, 6, kernel_size=3, stride=2, padding=2, dilation=2, groups=2)
    qconv = QuantConv2d(conv, 5)
    x = torch.randn(2, 4, 9, 9)
    w, b = qconv.weight_bits.dequantize(), qconv.bias_bits.dequantize()
    expected = torch.nn.functional.conv2d(x, w, b, stride=2, padding=2, dilation=2, groups=2)
    torch.testing.assert_close(qconv(x), expected, rtol=1e-5, atol=1e-6)

    lin = nn.Linear(7, 3, bias=False)
    qlin = QuantLinear(lin, 3)
    assert qlin.bias_bits is None
    x = torch.randn(5, 7)
    torch.testing.assert_close(qlin(x), x @ qlin.weight_bits.dequantize().T, rtol=1e-5, atol=1e-6)

    with pytest.raises(ValueError):
        QuantConv2d(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), 4)


def test_rebinarize_model_covers_all_tensors() -> None:
    torch.manual_seed(0)
    model = build_model("tiny_cnn")
    q = quantize_model(model, {"conv1": 3, "conv2": 4, "fc": 5})
    tensors = [t for layer in quant_layers(q).values() for t in (layer.weight_bits, layer.bias_bits) if t is not None]
    assert len(tensors) == 4  # conv1, conv2, fc weight, fc bias
    with torch.no_grad():
        for t in tensors:
            t.planes.add_(torch.rand_like(t.planes) * 0.8 - 0.4)
    rebinarize_model(q, torch.Generator().manual_seed(1))
    for t in tensors:
        assert_binary(t.planes)


# ---------------------------------------------------------------------------------------------
# stochastic rounding


def fractional_tensor(bits: int, base: int, frac: float, n: int, sign: float) -> BitTensor:
    t = BitTensor(torch.ones(n), bits)
    with torch.no_grad():
        planes = hand_planes(torch.full((n,), base), bits)
        planes[-1] += frac  # one LSB worth `frac`
        t.planes.copy_(planes)
        t.sign.fill_(sign)
    return t


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_stochastic_rebinarize_is_unbiased(sign: float) -> None:
    n, bits, base, frac = 200_000, 4, 5, 0.3
    t = fractional_tensor(bits, base, frac, n, sign)
    t.rebinarize(torch.Generator().manual_seed(123))
    codes = t.sign.double() * hand_value(t.planes)
    assert set(codes.unique().tolist()) == {sign * 5.0, sign * 6.0}
    tol = 5 * math.sqrt(frac * (1 - frac) / n)
    assert float(codes.mean()) == pytest.approx(sign * (base + frac), abs=tol)

    nearest = fractional_tensor(bits, base, frac, 10, sign)
    nearest.rebinarize()
    assert torch.equal(
        nearest.sign.double() * hand_value(nearest.planes), torch.full((10,), sign * 5.0, dtype=torch.float64)
    )


def test_rebinarize_through_zero_flips_sign() -> None:
    # positive weight whose planes now encode -0.7: nearest gives -1 (sign flips, digit 1)
    t = BitTensor(torch.ones(4), 3)
    with torch.no_grad():
        t.planes.zero_()
        t.planes[-1] = -0.7
    t.rebinarize()
    assert torch.equal(t.sign, torch.full((4,), -1.0))
    assert torch.equal(hand_value(t.planes), torch.ones(4, dtype=torch.float64))
    assert torch.equal(t.dequantize(), torch.full((4,), -1.0 / 7))

    # negative weight pushed to +0.7 becomes +1
    t = BitTensor(-torch.ones(4), 3)
    with torch.no_grad():
        t.planes.zero_()
        t.planes[-1] = -0.7
    t.rebinarize()
    assert torch.equal(t.sign, torch.ones(4))
    assert torch.equal(t.dequantize(), torch.full((4,), 1.0 / 7))

    # stochastic: -0.3 goes to -1 with probability 0.3, else 0 (mean -0.3)
    n = 100_000
    t = BitTensor(torch.ones(n), 3)
    with torch.no_grad():
        t.planes.zero_()
        t.planes[-1] = -0.3
    t.rebinarize(torch.Generator().manual_seed(5))
    codes = t.sign.double() * hand_value(t.planes)
    assert set(codes.unique().tolist()) == {-1.0, 0.0}
    assert float(codes.mean()) == pytest.approx(-0.3, abs=5 * math.sqrt(0.21 / n))
    assert bool((t.sign[codes < 0] == -1).all())


def test_forward_rounds_float_planes_with_straight_through_gradient() -> None:
    bits, scale = 4, 0.75
    t = BitTensor(torch.tensor([1.0, -1.0, 0.5]), bits)
    with torch.no_grad():
        t.scale.fill_(scale)
        # encode 5.3, 5.3 (negative weight) and 2.6: the forward pass rounds to 5, -5, 3
        t.planes.copy_(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.3, 1.3, 0.6]]))
    out = t()
    torch.testing.assert_close(out, torch.tensor([5.0, -5.0, 3.0]) * scale / 15, rtol=1e-6, atol=0.0)
    out.backward(torch.tensor([1.0, 2.0, -1.0]))
    # STE: d w / d b_i = S * sign * 2^(N-1-i) / (2^N-1); d w / d S = sign * round(code) / (2^N-1)
    upstream_times_sign = torch.tensor([1.0, -2.0, -1.0])
    expected = torch.stack([scale * upstream_times_sign * 2 ** (bits - 1 - i) / 15 for i in range(bits)])
    torch.testing.assert_close(t.planes.grad, expected, rtol=1e-6, atol=1e-7)
    assert float(t.scale.grad) == pytest.approx((1.0 * 5 - 2.0 * 5 - 1.0 * 3) / 15, rel=1e-6)


def test_rebinarize_clamps_to_top_code() -> None:
    t = BitTensor(torch.ones(3), 2)
    with torch.no_grad():
        t.planes.fill_(1.4)  # encodes 4.2 > 3
    t.rebinarize()
    assert torch.equal(hand_value(t.planes), torch.full((3,), 3.0, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# pruning


def linear_with_codes(codes: torch.Tensor, bits: int, scale: float, bias: bool = False) -> QuantLinear:
    out_f, in_f = codes.shape
    layer = QuantLinear(nn.Linear(in_f, out_f, bias=bias), bits)
    set_state(layer.weight_bits, codes, scale)
    return layer


def test_prune_lossless_when_msb_and_lsb_planes_are_zero() -> None:
    torch.manual_seed(0)
    bits, scale = 4, 0.9
    # magnitudes in {2, 4, 6} (even and < 8): MSB (8s) and LSB (1s) planes are all zero; the
    # 4s and 2s planes are dense
    mags = torch.tensor([2, 4, 6]).repeat(40)[torch.randperm(120)].reshape(10, 12)
    signs = torch.where(torch.rand(10, 12) < 0.5, -1, 1)
    codes = mags * signs
    layer = linear_with_codes(codes, bits, scale)
    model = nn.Sequential(layer)
    expected = scale * codes.double() / 15

    assert layer.weight_bits.sparse_planes(0.5) == (1, 1)
    removed = prune_model(model, thre=0.5)
    assert removed == {"0": 2}
    assert layer_bits(model) == {"0": 2}
    assert layer.weight_bits.planes.shape == (2, 10, 12)
    assert_binary(layer.weight_bits.planes)
    torch.testing.assert_close(layer.weight_bits.dequantize().double(), expected, rtol=1e-6, atol=0.0)
    with torch.no_grad():
        torch.testing.assert_close(layer.weight_bits().double(), expected, rtol=1e-6, atol=0.0)
    # new scale: codes 2,4,6 become 1,2,3 of a 2-bit grid -> S' = S * 6/15
    assert float(layer.weight_bits.scale.detach()) == pytest.approx(scale * 6 / 15, rel=1e-6)


def test_threshold_zero_prunes_nothing_on_a_dense_tensor() -> None:
    torch.manual_seed(1)
    layer = QuantLinear(nn.Linear(30, 20), 6)
    model = nn.Sequential(layer)
    before = layer.weight_bits.dequantize().clone()
    assert prune_model(model, thre=0.0) == {"0": 0}
    assert layer_bits(model) == {"0": 6}
    assert torch.equal(layer.weight_bits.dequantize(), before)


def test_sparse_msb_plane_saturates() -> None:
    torch.manual_seed(2)
    bits, scale, n = 4, 1.2, 1000
    mags = torch.randint(0, 8, (n,))  # MSB 0; LSB, 2s and 4s planes dense
    big = torch.randperm(n)[:10]  # 1% of entries use the MSB
    mags[big] = torch.tensor([8, 9, 10, 11, 12, 13, 14, 15, 15, 9])
    signs = torch.where(torch.rand(n) < 0.5, -1, 1)
    codes = (mags * signs).reshape(20, 50)
    layer = linear_with_codes(codes, bits, scale)
    before = layer.weight_bits.dequantize().clone()

    assert prune_model(nn.Sequential(layer), thre=2.0) == {"0": 1}
    assert layer.weight_bits.bits == 3
    after = layer.weight_bits.dequantize()
    # expected by hand: magnitudes above 7 saturate at 7 steps of the old grid (the new max)
    expected = scale * (codes.abs().clamp(max=7) * codes.sign()).double() / 15
    torch.testing.assert_close(after.double(), expected, rtol=1e-6, atol=1e-7)
    changed = ~torch.isclose(after, before, rtol=1e-6, atol=1e-7)
    assert torch.equal(changed.flatten().nonzero().flatten().sort().values, big.sort().values)
    assert float(after.abs().max()) == pytest.approx(scale * 7 / 15, rel=1e-6)


def test_sparse_lsb_plane_truncates() -> None:
    torch.manual_seed(3)
    bits, scale, n = 4, 0.8, 1000
    mags = torch.randint(0, 8, (n,)) * 2  # even magnitudes 0..14: LSB zero, other planes dense
    mags[0] = 14
    odd = torch.randperm(n - 1)[:10] + 1  # 1% of entries use the LSB
    mags[odd] += 1
    signs = torch.where(torch.rand(n) < 0.5, -1, 1)
    codes = (mags * signs).reshape(25, 40)
    layer = linear_with_codes(codes, bits, scale)
    before = layer.weight_bits.dequantize().clone()

    assert prune_model(nn.Sequential(layer), thre=2.0) == {"0": 1}
    assert layer.weight_bits.bits == 3
    after = layer.weight_bits.dequantize()
    truncated = (codes.abs() // 2) * 2 * codes.sign()
    torch.testing.assert_close(after.double(), scale * truncated.double() / 15, rtol=1e-6, atol=1e-7)
    changed = ~torch.isclose(after, before, rtol=1e-6, atol=1e-7)
    assert torch.equal(changed.flatten().nonzero().flatten().sort().values, odd.sort().values)


def test_threshold_boundaries_follow_bsq() -> None:
    # BSQ: an MSB plane is dropped when its density is < thre, an LSB plane when it is <= thre
    n = 100
    msb_at_thre = torch.full((n,), 2)  # 3 bits: all codes 2 (010); LSB plane empty
    msb_at_thre[:2] = 6  # 110: MSB density exactly 2%
    layer = linear_with_codes(msb_at_thre.reshape(10, 10), 3, 1.0)
    assert layer.weight_bits.sparse_planes(2.0) == (0, 1)

    lsb_at_thre = torch.full((n,), 6)  # 110
    lsb_at_thre[:2] = 7  # LSB density exactly 2%
    layer = linear_with_codes(lsb_at_thre.reshape(10, 10), 3, 1.0)
    assert layer.weight_bits.sparse_planes(2.0) == (0, 1)
    assert layer.weight_bits.sparse_planes(1.99) == (0, 0)


def test_lsb_decision_uses_saturated_codes() -> None:
    # 4 bits, 3% of the codes are 8 (1000, sparse MSB at thre=5), 3% odd codes below 8, the rest
    # even: after the MSB saturates 8 -> 7 (0111) the LSB plane holds 6% > 5%, so it is kept
    torch.manual_seed(6)
    n = 1000
    mags = torch.tensor([0, 2, 4, 6]).repeat(n // 4)
    mags[:30] = 8
    mags[30:60] = torch.tensor([1, 3, 5]).repeat(10)
    codes = mags[torch.randperm(n)].reshape(20, 50)
    layer = linear_with_codes(codes, 4, 1.5)
    assert prune_model(nn.Sequential(layer), thre=5.0) == {"0": 1}
    expected = 1.5 * codes.clamp(max=7).double() / 15
    torch.testing.assert_close(layer.weight_bits.dequantize().double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bits", [1, 2, 5])
def test_pruning_never_goes_below_one_bit(bits: int) -> None:
    torch.manual_seed(4)
    dense = QuantLinear(nn.Linear(16, 8), bits)
    zero = QuantLinear(nn.Linear(16, 8), bits)
    set_state(zero.weight_bits, torch.zeros(8, 16, dtype=torch.long), 1.0)
    model = nn.Sequential(dense, zero)
    removed = prune_model(model, thre=100.0)
    assert layer_bits(model) == {"0": 1, "1": 1}
    assert removed == {"0": bits - 1, "1": bits - 1}
    for layer in (dense, zero):
        assert layer.bias_bits.bits == 1
        assert_binary(layer.weight_bits.planes)
    assert torch.equal(zero.weight_bits.dequantize(), torch.zeros(8, 16))


def test_bias_drops_the_same_planes_as_the_weight() -> None:
    torch.manual_seed(5)
    bits, scale = 4, 0.6
    mags = torch.tensor([2, 4, 6]).repeat(20)[torch.randperm(60)].reshape(6, 10)
    layer = linear_with_codes(mags, bits, scale, bias=True)
    bias_codes = torch.tensor([15, -9, 3, -1, 7, 12])  # dense planes, uses MSB and LSB
    set_state(layer.bias_bits, bias_codes, 0.25)
    assert prune_model(nn.Sequential(layer), thre=1.0) == {"0": 2}
    assert layer.weight_bits.bits == layer.bias_bits.bits == 2
    # bias: MSB saturates (min(c, 7)), then LSB truncates: value = S_b * 2 * floor(min(|c|, 7) / 2) / 15
    expected = 0.25 * bias_codes.sign().double() * 2 * (bias_codes.abs().clamp(max=7) // 2).double() / 15
    torch.testing.assert_close(layer.bias_bits.dequantize().double(), expected, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# regularizer


def test_bit_regularizer_hand_computed() -> None:
    first = nn.Linear(2, 2, bias=False)
    second = nn.Linear(2, 1)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -2.0 / 3], [2.0 / 3, 0.0]]))  # N=2 codes [[3,-2],[2,0]]
        second.weight.copy_(torch.tensor([[1.0, -3.0 / 7]]))  # N=3 codes [[7,-3]]
        second.bias.fill_(0.5)  # N=3 code [7]
    q = quantize_model(nn.Sequential(first, second), {"0": 2, "1": 3})
    # first: planes [[1,1],[1,0]] (||.|| = sqrt 3) and [[1,0],[0,0]] (1); weight N*numel = 2*4 = 8
    # second weight: 7 = 111, 3 = 011 -> planes [1,0], [1,1], [1,1] -> 1 + 2 sqrt 2; N*numel = 3*2 = 6
    # second bias: 7 = 111 -> three planes of norm 1; N*numel = 3*1 = 3
    expected = 8 * (1.7320508075688772 + 1.0) + 6 * (1.0 + 2 * 1.4142135623730951) + 3 * 3.0
    assert expected == pytest.approx(53.82696920902816)
    reg = bit_regularizer(q)
    assert float(reg.detach()) == pytest.approx(expected, rel=1e-6)
    assert quantized_param_count(q) == 4 + 2 + 1
    reg.backward()
    assert all(t.grad is not None for t in (q[0].weight_bits.planes, q[1].bias_bits.planes))


# ---------------------------------------------------------------------------------------------
# model conversion

RESNET20_QUANT = ["conv1"] + [f"layer{s}.{b}.conv{c}" for s in (1, 2, 3) for b in (0, 1, 2) for c in (1, 2)] + ["fc"]


def test_quantize_resnet20_layers() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20")
    assert list(quantizable_layers(model)) == RESNET20_QUANT
    assert sum(quantizable_layers(model).values()) == 268_346
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    types_before = {n: type(m) for n, m in model.named_modules()}

    bits = {name: 2 + i % 7 for i, name in enumerate(RESNET20_QUANT)}
    q = quantize_model(model, bits)

    layers = quant_layers(q)
    assert list(layers) == RESNET20_QUANT
    assert layer_bits(q) == bits
    assert isinstance(layers["fc"], QuantLinear)
    assert all(isinstance(layers[n], QuantConv2d) for n in RESNET20_QUANT[:-1])
    assert quantized_param_count(q) == 268_346
    for name in ("layer2.0.downsample.0", "layer3.0.downsample.0"):
        assert type(q.get_submodule(name)) is nn.Conv2d
        assert type(q.get_submodule(name[:-1] + "1")) is nn.BatchNorm2d
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in q.modules()) == 2
    bns = [m for m in q.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 21 and all(type(m) is nn.BatchNorm2d for m in bns)
    relus = [m for m in q.modules() if isinstance(m, QuantReLU)]
    assert len(relus) == 19 and all(r.bits == 4 for r in relus)
    assert not any(isinstance(m, nn.ReLU) for m in q.modules())

    # original untouched
    assert {n: type(m) for n, m in model.named_modules()} == types_before
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_before[key])
    # deep copy: no storage shared, changing the copy leaves the original alone
    original_ptrs = {t.data_ptr() for t in model.state_dict().values()}
    assert not original_ptrs & {t.data_ptr() for t in q.state_dict().values()}
    with torch.no_grad():
        q.bn1.weight.fill_(7.0)
        q.layer2[0].downsample[0].weight.zero_()
    assert torch.equal(model.bn1.weight, state_before["bn1.weight"])
    assert torch.equal(model.layer2[0].downsample[0].weight, state_before["layer2.0.downsample.0.weight"])

    # weights are the float weights rounded to each layer's grid
    for name in ("conv1", "layer3.2.conv2", "fc"):
        w = model.get_submodule(name).weight.detach()
        step = float(w.abs().max()) / top(bits[name])
        assert float((layers[name].weight_bits.dequantize() - w).abs().max()) <= step / 2 + 1e-6
    q.eval()
    assert q(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_quantize_model_rejects_wrong_assignment() -> None:
    model = build_model("resnet20")
    bits = {name: 4 for name in RESNET20_QUANT}
    with pytest.raises(ValueError):
        quantize_model(model, {k: v for k, v in bits.items() if k != "layer2.1.conv1"})
    with pytest.raises(ValueError):
        quantize_model(model, {**bits, "layer2.0.downsample.0": 4})
    with pytest.raises(ValueError):
        quantize_model(model, {**bits, "nonexistent": 4})
    with pytest.raises(ValueError):
        quantize_model(model, {**bits, "conv1": 0})
    with pytest.raises(ValueError):
        quantize_model(model, {**bits, "conv1": 9})


class _WithShortcut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential(nn.Conv2d(3, 4, 1))
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.relu(self.body(x)) + self.shortcut(x)).mean((2, 3)))


def test_shortcut_named_layers_stay_float() -> None:
    model = _WithShortcut()
    assert list(quantizable_layers(model)) == ["body", "head"]
    q = quantize_model(model, {"body": 3, "head": 4})
    assert type(q.shortcut[0]) is nn.Conv2d and isinstance(q.body, QuantConv2d) and isinstance(q.relu, QuantReLU)
    assert q(torch.randn(2, 3, 5, 5)).shape == (2, 2)


def test_quantize_tiny_cnn_and_sequential() -> None:
    torch.manual_seed(0)
    tiny = build_model("tiny_cnn")
    assert list(quantizable_layers(tiny)) == ["conv1", "conv2", "fc"]
    q = quantize_model(tiny, {"conv1": 3, "conv2": 5, "fc": 8}, act_bits=3)
    assert layer_bits(q) == {"conv1": 3, "conv2": 5, "fc": 8}
    assert [m.bits for m in q.modules() if isinstance(m, QuantReLU)] == [3, 3]
    assert q.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)

    seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    assert list(quantizable_layers(seq)) == ["0", "3"]
    assert quantizable_layers(seq) == {"0": 4 * 3 * 9 + 4, "3": 144 * 5 + 5}
    qs = quantize_model(seq, {"0": 4, "3": 6})
    assert [type(m) for m in qs] == [QuantConv2d, QuantReLU, nn.Flatten, QuantLinear]
    assert type(seq[1]) is nn.ReLU
    out = qs(torch.randn(3, 3, 8, 8))
    assert out.shape == (3, 5)
    out.sum().backward()
    assert qs[0].weight_bits.planes.grad is not None


# ---------------------------------------------------------------------------------------------
# activation quantizer


@pytest.mark.parametrize("bits", range(1, 9))
def test_quant_relu_levels_range_and_batch_invariance(bits: int) -> None:
    torch.manual_seed(bits)
    relu = QuantReLU(bits)
    x = torch.randn(6, 4, 9, 9) * 4
    x[2] *= 0.1  # a sample whose max is well below the clip
    y = relu(x)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 6.0
    for i in range(x.shape[0]):
        assert y[i].unique().numel() <= 2**bits
        assert torch.equal(relu(x[i : i + 1])[0], y[i])
        assert torch.equal(relu(x[[i, 0, 3]])[0], y[i])


def test_quant_relu_hand_values() -> None:
    relu = QuantReLU(2)
    # clipped [0, 0.9, 2.5, 4.1, 6] with step 6/3 = 2 -> codes [0, 0, 1, 2, 3]
    x = torch.tensor([[-1.0, 0.9, 2.5, 4.1, 7.0], [-1.0, 0.1, 0.2, 0.3, 0.6]])
    y = relu(x)
    assert torch.allclose(y[0], torch.tensor([0.0, 0.0, 2.0, 4.0, 6.0]), atol=1e-6)
    # second sample: max 0.6, step 0.2 -> [0, 0.2(0.5 ties to even -> 0), 0.2, 0.4, 0.6]
    assert torch.allclose(y[1, [0, 2, 4]], torch.tensor([0.0, 0.2, 0.6]), atol=1e-6)
    assert torch.allclose(y[1, 3], torch.tensor(0.4), atol=1e-6)


def test_quant_relu_straight_through_gradient() -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 200) * 5).requires_grad_()
    x.data[0, :5] = torch.tensor([0.0, 6.0, -0.0, 5.999, 1e-6])
    QuantReLU(4)(x).sum().backward()
    inside = ((x > 0) & (x < 6)).float()
    assert torch.equal(x.grad, inside)
    assert x.grad[0, :5].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert inside.sum() > 0 and (1 - inside).sum() > 0
    # same gradient as a float ReLU6
    ref = x.detach().clone().requires_grad_()
    torch.nn.functional.relu6(ref).sum().backward()
    assert torch.equal(x.grad, ref.grad)


# ---------------------------------------------------------------------------------------------
# upload format


def test_encode_decode_round_trip_tiny_cnn() -> None:
    torch.manual_seed(0)
    model = build_model("tiny_cnn")
    keys = communicated_keys(model)
    q = quantize_model(model, {"conv1": 3, "conv2": 6, "fc": 2})
    with torch.no_grad():
        q.bn1.running_mean.uniform_(-1, 1)
    # one training step so scales and codes are not those of the conversion
    opt = torch.optim.SGD(q.parameters(), lr=0.1, momentum=0.9)
    q.train()
    torch.nn.functional.cross_entropy(q(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    rebinarize_model(q, torch.Generator().manual_seed(0))
    prune_model(q, thre=2.0)
    bits = layer_bits(q)

    arrays = encode_update(q, keys)
    assert len(arrays) == len(keys) + 1
    decoded = decode_update(arrays, keys, bits)
    assert len(decoded) == len(keys)
    qstate = q.state_dict()
    quantized = {
        "conv1.weight": q.conv1.weight_bits,
        "conv2.weight": q.conv2.weight_bits,
        "fc.weight": q.fc.weight_bits,
        "fc.bias": q.fc.bias_bits,
    }
    scales = []
    for key, array, value in zip(keys, arrays, decoded):
        assert value.dtype == np.float32
        if key in quantized:
            t = quantized[key]
            assert array.dtype == np.int16
            np.testing.assert_allclose(value, t.dequantize().numpy(), rtol=1e-6, atol=0)
            # codes by hand from the planes
            by_hand = (t.sign.double() * hand_value(t.planes)).long().numpy()
            np.testing.assert_array_equal(array, by_hand)
            scales.append(float(t.scale.detach()))
        else:
            np.testing.assert_array_equal(value, qstate[key].numpy())
    np.testing.assert_allclose(arrays[-1], np.asarray(scales, dtype=np.float32))

    with pytest.raises(ValueError):
        decode_update(arrays[:-2] + arrays[-1:], keys, bits)
    with pytest.raises(ValueError):
        decode_update(arrays[:-1] + [np.ones(3, dtype=np.float32)], keys, bits)
    with pytest.raises(ValueError):
        upload_bits(arrays[1:], keys, bits)


def test_upload_bits_resnet20_analytic() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20")
    keys = communicated_keys(model)
    bits = {name: [1, 8, 3, 5, 2, 4, 7, 6][i % 8] for i, name in enumerate(RESNET20_QUANT)}
    q = quantize_model(model, bits)
    arrays = encode_update(q, keys)

    # independent counts from the float model
    quant_bits = 0
    non_quant_floats = 0
    n_scales = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            non_quant_floats += 4 * module.num_features  # weight, bias, running_mean, running_var
        elif isinstance(module, nn.Conv2d) and "downsample" in name:
            non_quant_floats += module.weight.numel()
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            quant_bits += module.weight.numel() * bits[name]
            n_scales += 1
            if module.bias is not None:
                quant_bits += module.bias.numel() * bits[name]
                n_scales += 1
    assert n_scales == 21
    assert non_quant_floats == 4 * (16 + 6 * 16 + 6 * 32 + 32 + 6 * 64 + 64) + 16 * 32 + 32 * 64 == 5696
    float_in_keys = sum(
        v.numel() for k, v in model.state_dict().items() if k in keys and ("bn" in k or "downsample" in k)
    )
    assert float_in_keys == non_quant_floats
    expected = quant_bits + 32 * (non_quant_floats + n_scales)
    assert upload_bits(arrays, keys, bits) == expected
    assert arrays[-1].size == 21


def test_layer_trains_after_first_use_under_inference_mode() -> None:
    """The cached plane values are built outside inference mode even when first asked for there
    (server evaluation before any training in the same process)."""
    plane_values.cache_clear()
    layer = QuantLinear(nn.Linear(4, 2), bits=3)
    with torch.inference_mode():
        layer(torch.randn(5, 4))
    layer(torch.randn(5, 4)).sum().backward()
    assert layer.weight_bits.planes.grad is not None and layer.weight_bits.planes.grad.abs().sum() > 0


def test_dequantized_state_is_what_the_upload_decodes_to() -> None:
    torch.manual_seed(0)
    model = build_model("resnet20")
    bits = {layer: 1 + index % 8 for index, layer in enumerate(quantizable_layers(model))}
    qmodel = quantize_model(model, bits)
    keys = communicated_keys(model)
    state = dequantized_state(qmodel, keys)
    assert list(state) == keys
    decoded = decode_update(encode_update(qmodel, keys), keys, bits)
    for key, array in zip(keys, decoded):
        np.testing.assert_allclose(state[key].numpy(), array, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# how the scale learns (scale_grad: plain, lsq, frozen)


def tiny_quantized(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A float tiny CNN and its quantized copy (a bias on fc: weight and bias tensors both covered)."""
    torch.manual_seed(seed)
    model = build_model("tiny_cnn")
    return model, quantize_model(model, {"conv1": 3, "conv2": 4, "fc": 5})


def bit_tensors_of(qmodel: nn.Module) -> dict[str, BitTensor]:
    return {name: m for name, m in qmodel.named_modules() if isinstance(m, BitTensor)}


def forward_backward(qmodel: nn.Module, seed: int) -> torch.Tensor:
    """Output of one forward in train mode and its backward with a fixed random upstream gradient."""
    torch.manual_seed(seed)
    x = torch.randn(4, 3, 32, 32)
    qmodel.train()
    out = qmodel(x)
    out.backward(torch.randn_like(out))
    return out.detach()


def test_plain_is_the_default_and_gets_the_hand_computed_scale_gradient() -> None:
    """w = S * q with q fixed by the planes, so dL/dS = sum(dL/dw * w) / S; plain S is a normal parameter."""
    _, q = tiny_quantized()
    assert {t.scale_grad for t in bit_tensors_of(q).values()} == {"plain"}
    assert all(t.scale.requires_grad for t in bit_tensors_of(q).values())
    torch.manual_seed(3)
    for t in bit_tensors_of(q).values():
        c = torch.randn(t.sign.shape, dtype=torch.float64)
        w = t()
        (c * w.double()).sum().backward()
        expected = float((c * w.detach().double()).sum() / t.scale.detach().double())
        assert float(t.scale.grad) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_lsq_changes_only_the_scale_gradient_by_the_stated_factor(bits: int) -> None:
    torch.manual_seed(bits)
    conv = nn.Conv2d(3, 5, kernel_size=3, padding=1)
    plain, lsq = QuantConv2d(conv, bits), QuantConv2d(conv, bits)
    for t in (lsq.weight_bits, lsq.bias_bits):
        t.set_scale_grad("lsq")
    x = torch.randn(2, 3, 6, 6)
    upstream = torch.randn(2, 5, 6, 6)
    out_plain, out_lsq = plain(x), lsq(x)
    assert torch.equal(out_plain, out_lsq), "lsq must not change the forward value"
    out_plain.backward(upstream)
    out_lsq.backward(upstream)
    for p, s in ((plain.weight_bits, lsq.weight_bits), (plain.bias_bits, lsq.bias_bits)):
        assert torch.equal(p.planes.grad, s.planes.grad), "lsq must not touch the planes' gradient"
        factor = 1.0 / math.sqrt(p.sign.numel() * (2**bits - 1))  # weight: 135 numbers, bias: 5
        assert float(p.scale.grad) != 0.0
        assert float(s.scale.grad) == pytest.approx(float(p.scale.grad) * factor, rel=1e-6)


def test_set_scale_grad_on_a_model_touches_only_the_scales() -> None:
    _, plain = tiny_quantized()
    lsq = set_scale_grad(copy.deepcopy(plain), "lsq")
    assert {t.scale_grad for t in bit_tensors_of(lsq).values()} == {"lsq"}
    out_plain, out_lsq = forward_backward(plain, 11), forward_backward(lsq, 11)
    assert torch.equal(out_plain, out_lsq)
    plain_params, lsq_params = dict(plain.named_parameters()), dict(lsq.named_parameters())
    tensors = bit_tensors_of(plain)
    for name, p in plain_params.items():
        owner, _, leaf = name.rpartition(".")
        if leaf == "scale":
            bits, numel = tensors[owner].bits, tensors[owner].sign.numel()
            expected = p.grad * (1.0 / math.sqrt(numel * (2**bits - 1)))
            torch.testing.assert_close(lsq_params[name].grad, expected, rtol=1e-6, atol=0.0)
        else:  # planes, BatchNorm-free tiny CNN: every other parameter's gradient is identical
            assert torch.equal(p.grad, lsq_params[name].grad), name
    # back to plain: the same gradients as a model that never changed
    set_scale_grad(lsq, "plain")
    lsq.zero_grad(set_to_none=True)
    plain.zero_grad(set_to_none=True)
    forward_backward(plain, 12), forward_backward(lsq, 12)
    for name, p in plain.named_parameters():
        assert torch.equal(p.grad, dict(lsq.named_parameters())[name].grad), name


def test_frozen_scale_gets_no_gradient_and_stays_at_max_abs() -> None:
    model, q = tiny_quantized()
    set_scale_grad(q, "frozen")
    float_state = model.state_dict()
    tensors = bit_tensors_of(q)
    for t in tensors.values():
        assert t.scale_grad == "frozen" and not t.scale.requires_grad
    optimizer = torch.optim.SGD(q.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)
    generator = torch.Generator().manual_seed(0)
    before = {name: t.dequantize().clone() for name, t in tensors.items()}
    for step in range(3):
        optimizer.zero_grad(set_to_none=True)
        forward_backward(q, 20 + step)
        for t in tensors.values():
            assert t.scale.grad is None
            assert t.planes.grad is not None and t.planes.grad.abs().sum() > 0
        optimizer.step()
        rebinarize_model(q, generator)
    for name, t in tensors.items():
        layer, kind = name.rsplit(".", 1)
        key = f"{layer}.{'weight' if kind == 'weight_bits' else 'bias'}"
        assert float(t.scale) == float(float_state[key].abs().max()), name
        assert not torch.equal(t.dequantize(), before[name]), f"{name}: the planes must still train"


def test_scale_grad_survives_deepcopy_and_pruning() -> None:
    """The mode is kept by deepcopy; after pruning, frozen stays frozen and lsq's factor uses the new bit-width."""
    torch.manual_seed(5)
    lsq = QuantLinear(nn.Linear(10, 12, bias=False), 4).weight_bits
    lsq.set_scale_grad("lsq")
    frozen = copy.deepcopy(lsq)
    frozen.set_scale_grad("frozen")
    copied = copy.deepcopy(frozen)
    assert copied.scale_grad == "frozen" and not copied.scale.requires_grad
    assert copy.deepcopy(lsq).scale_grad == "lsq"

    for t in (lsq, frozen):
        codes, scale = t.signed_codes().clone(), float(t.scale.detach())
        t.drop_planes(0, 1)  # 4 -> 3 bits, S rescaled: each value loses its least significant bit only
        assert t.bits == 3
        truncated = codes.sign() * (codes.abs() // 2 * 2)
        torch.testing.assert_close(t.dequantize(), scale * truncated.float() / 15)
    assert not frozen.scale.requires_grad
    frozen().sum().backward()
    assert frozen.scale.grad is None and frozen.planes.grad is not None

    reference = copy.deepcopy(lsq)
    reference.set_scale_grad("plain")
    c = torch.randn(12, 10)
    (c * lsq()).sum().backward()
    (c * reference()).sum().backward()
    factor = 1.0 / math.sqrt(120 * (2**3 - 1))
    assert float(lsq.scale.grad) == pytest.approx(float(reference.scale.grad) * factor, rel=1e-6)
    assert torch.equal(lsq.planes.grad, reference.planes.grad)


def test_unknown_scale_grad_mode_is_rejected() -> None:
    assert SCALE_GRAD_MODES == ("plain", "lsq", "frozen")
    _, q = tiny_quantized()
    message = "scale_grad mode 'LSQ' is unknown; expected one of plain, lsq, frozen"
    with pytest.raises(ValueError, match=message):
        set_scale_grad(q, "LSQ")
    with pytest.raises(ValueError, match="scale_grad mode 'fixed' is unknown"):
        BitTensor(torch.ones(3), 4, scale_grad="fixed")
    assert {t.scale_grad for t in bit_tensors_of(q).values()} == {"plain"}, "a rejected mode changes nothing"
