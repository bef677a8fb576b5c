"""FedMPQ bit allocation: hand-computed expectations for averaging, priorities and the greedy fit."""

import pytest

from fedmpq_flwr.quant.allocation import (
    ClientBits,
    allocate,
    average_bits,
    average_bitwidth,
    fit_to_budget,
    initial_bits,
    layer_priorities,
)


def zeros(sizes: dict[str, int]) -> dict[str, float]:
    return {layer: 0.0 for layer in sizes}


def test_average_bits_weights_by_examples_times_budget():
    # weights 100*2 = 200 and 300*6 = 1800 (0.1 and 0.9); weighting by examples alone would give 0.25/0.75
    reports = [
        ClientBits(num_examples=100, budget=2.0, bits={"x": 2, "y": 4}, reductions={"x": 1, "y": 0}),
        ClientBits(num_examples=300, budget=6.0, bits={"x": 6, "y": 8}, reductions={"x": 0, "y": 2}),
    ]
    bits, reductions = average_bits(reports)
    assert bits == pytest.approx({"x": 5.6, "y": 7.6})
    assert reductions == pytest.approx({"x": 0.1, "y": 1.8})
    assert list(bits) == ["x", "y"] and list(reductions) == ["x", "y"]


def test_layer_priorities_is_parameter_share_times_reduction():
    # shares 0.1, 0.3, 0.6
    priorities = layer_priorities({"a": 100, "b": 300, "c": 600}, {"a": 2.0, "b": 1.0, "c": 0.5})
    assert priorities == pytest.approx({"a": 0.2, "b": 0.3, "c": 0.3})


def test_average_bitwidth_is_parameter_weighted():
    assert average_bitwidth({"a": 2, "b": 8}, {"a": 30, "b": 10}) == pytest.approx(3.5)


def test_pruning_drains_top_priority_layer_to_one_bit_before_the_next():
    # budget 2 on 120 params: at most 240 bits, start 960. a (top priority) 8 -> 1 leaves 260,
    # then b (next priority) 8 -> 6 reaches 240; c (lowest) is never touched.
    sizes = {"a": 100, "b": 10, "c": 10}
    bits = fit_to_budget({"a": 8, "b": 8, "c": 8}, {"a": 1.0, "b": 0.5, "c": 0.1}, sizes, 2.0)
    assert bits == {"a": 1, "b": 6, "c": 8}


def test_growing_fills_lowest_priority_first_and_skips_layers_that_do_not_fit():
    # budget 3.2 on 60 params: at most 192 bits, start 60. b (lowest) grows to 7 (180; 8 would be 200),
    # c (next) cannot take +30, a (highest) takes +10 -> 190, after which nothing fits.
    sizes = {"a": 10, "b": 20, "c": 30}
    bits = fit_to_budget({"a": 1, "b": 1, "c": 1}, {"a": 0.3, "b": 0.1, "c": 0.2}, sizes, 3.2)
    assert bits == {"a": 2, "b": 7, "c": 1}


def test_pruning_ties_go_to_larger_layer_then_earlier_layer():
    # equal priorities, 110 bits, at most 1.8 * 50 = 90: b and c are both largest, b comes first,
    # and one bit from b reaches 90 (cutting the small layer a would need two bits instead)
    sizes = {"a": 10, "b": 20, "c": 20}
    bits = fit_to_budget({"a": 3, "b": 2, "c": 2}, {"a": 0.5, "b": 0.5, "c": 0.5}, sizes, 1.8)
    assert bits == {"a": 3, "b": 1, "c": 2}


def test_growing_ties_go_to_smaller_layer_then_earlier_layer():
    # equal priorities, 40 bits, at most 1.5 * 40 = 60: b and c are both smallest, b comes first and
    # stays first (still tied on size, earlier), so b takes both bits; a (+20) would also have fit
    sizes = {"a": 20, "b": 10, "c": 10}
    assert fit_to_budget({"a": 1, "b": 1, "c": 1}, zeros(sizes), sizes, 1.5) == {"a": 1, "b": 3, "c": 1}


@pytest.mark.parametrize("budget", [1.0, 1.3, 2.5, 3.07, 4.75, 6.2, 8.0])
def test_result_stays_within_budget_and_no_layer_could_still_grow(budget):
    sizes = {"a": 100, "b": 37, "c": 5, "d": 260}
    start = {"a": 7.2, "b": 1.0, "c": 4.6, "d": 3.5}
    bits = fit_to_budget(start, {"a": 0.4, "b": 0.0, "c": 0.9, "d": 0.4}, sizes, budget)
    total, params = sum(sizes[layer] * bits[layer] for layer in sizes), sum(sizes.values())
    assert list(bits) == list(sizes)
    assert all(1 <= b <= 8 for b in bits.values())
    assert total <= budget * params + 1e-6
    assert all(bits[layer] == 8 or total + sizes[layer] > budget * params + 1e-6 for layer in sizes)


def test_start_is_clamped_to_min_and_max_bits():
    # 0.2 -> 0 -> 1 and 12 -> 8: average (10 + 80) / 20 = 4.5 = budget; unclamped (0, 12) would be pruned
    sizes = {"a": 10, "b": 10}
    assert fit_to_budget({"a": 0.2, "b": 12.0}, zeros(sizes), sizes, 4.5) == {"a": 1, "b": 8}


def test_start_rounds_half_up():
    # 3.5 -> 4, 2.4 -> 2, 2.5 -> 3 (not banker's 2): average 9 / 3 = 3 = budget, nothing moves
    sizes = {"a": 10, "b": 10, "c": 10}
    assert fit_to_budget({"a": 3.5, "b": 2.4, "c": 2.5}, zeros(sizes), sizes, 3.0) == {"a": 4, "b": 2, "c": 3}


def test_allocate_end_to_end():
    sizes = {"conv": 100, "fc1": 300, "fc2": 100}
    reports = [  # weights 200, 400, 1400 -> 0.1, 0.2, 0.7
        ClientBits(100, 2.0, {"conv": 2, "fc1": 2, "fc2": 2}, {"conv": 0, "fc1": 1, "fc2": 0}),
        ClientBits(100, 4.0, {"conv": 4, "fc1": 3, "fc2": 5}, {"conv": 1, "fc1": 2, "fc2": 0}),
        ClientBits(200, 7.0, {"conv": 7, "fc1": 6, "fc2": 8}, {"conv": 1, "fc1": 2, "fc2": 0}),
    ]
    # average bits 5.9 / 5.0 / 6.8 -> start 6 / 5 / 7 (2800 bits); reductions 0.9 / 1.9 / 0
    # priorities 0.2*0.9 = 0.18, 0.6*1.9 = 1.14, 0.
    # id 4, budget 2 (1000 bits): fc1 5 -> 1 (1600), conv 6 -> 1 (1100), fc2 7 -> 6 (1000).
    # id 0, budget 4 (2000 bits): fc1 5 -> 2 (1900), then fc2 (lowest) +1 -> 2000.
    # id 9, budget 7 (3500 bits): grow fc2 -> 8 (2900), conv -> 8 (3100), fc1 -> 6 (3400); +300 won't fit.
    result = allocate(sizes, reports, {9: 7.0, 4: 2.0, 0: 4.0})
    assert result == {
        0: {"conv": 6, "fc1": 2, "fc2": 8},
        4: {"conv": 1, "fc1": 1, "fc2": 6},
        9: {"conv": 8, "fc1": 6, "fc2": 8},
    }
    assert list(result) == [0, 4, 9]
    for cid, budget in {0: 4.0, 4: 2.0, 9: 7.0}.items():
        assert average_bitwidth(result[cid], sizes) <= budget


@pytest.mark.parametrize("budget", [1, 2, 3, 4, 5, 6, 7, 8])
def test_initial_bits_integer_budget_is_uniform(budget):
    sizes = {"a": 10, "b": 250, "c": 3}
    assert initial_bits(sizes, budget) == {"a": budget, "b": budget, "c": budget}


def test_initial_bits_fractional_budget():
    # 2.5 rounds up to 3 everywhere (average 3); equal sizes and priorities, so a (earlier) loses one bit
    assert initial_bits({"a": 10, "b": 10}, 2.5) == {"a": 2, "b": 3}


@pytest.mark.parametrize("budget", [0, 0.99, 8.01, 9])
def test_budget_out_of_range_raises(budget):
    sizes = {"a": 10}
    with pytest.raises(ValueError):
        fit_to_budget({"a": 4}, {"a": 0.0}, sizes, budget)
    with pytest.raises(ValueError):
        initial_bits(sizes, budget)


def test_bad_layers_raise():
    with pytest.raises(ValueError):
        initial_bits({}, 4)
    with pytest.raises(ValueError):
        fit_to_budget({"a": 4}, {"a": 0.0, "b": 0.0}, {"a": 10, "b": 10}, 4)
    with pytest.raises(ValueError):
        fit_to_budget({"a": 4, "b": 4}, {"a": 0.0}, {"a": 10, "b": 10}, 4)


def test_allocate_without_usable_reports_raises():
    sizes = {"a": 10}
    with pytest.raises(ValueError):
        allocate(sizes, [], {0: 4.0})
    with pytest.raises(ValueError):
        allocate(sizes, [ClientBits(0, 4.0, {"a": 4}, {"a": 0})], {0: 4.0})
