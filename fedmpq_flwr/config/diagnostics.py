"""The `diagnostics` section: measurements a run can add that change nothing it trains or sends.

`landscape`: loss-landscape snapshots of the global model (Li et al., NeurIPS 2018) after the rounds
of `landscape_rounds` (`[]`: the last round), on a `landscape_points` x `landscape_points` grid over
[-1, 1]^2 along two filter-normalized random directions, evaluated on `landscape_images` class-balanced
test images (the server's part: `fedmpq_flwr/server/diagnostics.py`). Pure Python, no torch.
"""

from __future__ import annotations

from typing import Any

from fedmpq_flwr.config.fields import ConfigError, Field, Section, flag, number

ROUNDS_ALLOWED = "a list of whole round numbers in 1..train.num_rounds ([] = the last round)"


def _parse_rounds(key: str, value: Any) -> list[int]:
    """Rounds as a YAML list or a comma-separated string ("10,50", how Flower's run config carries a
    list); "" means none. Sorted, each once."""
    items = [v for v in value.split(",") if v.strip()] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f"key '{key}': value {value!r} is not a list; expected {ROUNDS_ALLOWED}")
    rounds = []
    for item in items:
        text = item.strip() if isinstance(item, str) else None
        if isinstance(item, int) and not isinstance(item, bool):
            rounds.append(item)
        elif text is not None and text.isdigit():
            rounds.append(int(text))
        else:
            raise ConfigError(f"key '{key}': value {value!r} has entry {item!r}; expected {ROUNDS_ALLOWED}")
    return sorted(set(rounds))


DIAGNOSTICS: Section = {
    "landscape": flag(False),
    "landscape_rounds": Field(list, [], parse=_parse_rounds),  # [] = the last round
    # grid points per axis over [-1, 1] (odd, so that the grid's centre is the model itself)
    "landscape_points": Field(int, 11, lambda v: v >= 3 and v % 2 == 1, "an odd int >= 3"),
    "landscape_images": number(int, 1000, 1),  # class-balanced test images (more than the test set: all)
}


def check_landscape_rounds(rounds: list[int], num_rounds: int) -> None:
    """Every listed round is one the run has: a one-line ConfigError otherwise."""
    outside = [r for r in rounds if not 1 <= r <= num_rounds]
    if outside:
        raise ConfigError(
            f"key 'diagnostics.landscape_rounds': value {rounds} has entry {outside[0]} outside "
            f"1..train.num_rounds = {num_rounds}; expected {ROUNDS_ALLOWED}"
        )


def landscape_rounds(config: dict[str, Any]) -> list[int]:
    """The rounds after which a run with `diagnostics.landscape` takes a snapshot (nested config)."""
    return config["diagnostics"]["landscape_rounds"] or [config["train"]["num_rounds"]]
