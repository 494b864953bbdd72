"""What every benchmark prints: each headline figure as the median of its runs, with the spread.

A figure is ``{"median": m, "min": lo, "max": hi, "spread_percent": 100 * (hi - lo) / m, "runs": n}``;
``spread_percent`` says how far apart the fastest and the slowest run were, relative to the median.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Iterable

__all__ = ["figure", "runs_parser"]

MIN_RUNS = 3


def figure(samples: Iterable[float], digits: int = 3) -> dict[str, float]:
    values = sorted(samples)
    if not values:
        raise ValueError("a figure needs at least one run")
    median = statistics.median(values)
    return {
        "median": round(median, digits),
        "min": round(values[0], digits),
        "max": round(values[-1], digits),
        "spread_percent": round(100 * (values[-1] - values[0]) / median, 1) if median else 0.0,
        "runs": len(values),
    }


def runs_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark takes: ``--runs`` (at least 3 for a headline figure)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--runs", type=int, default=MIN_RUNS, help=f"runs per figure (default {MIN_RUNS}; fewer only to try it)"
    )
    return parser
