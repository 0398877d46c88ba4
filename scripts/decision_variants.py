"""Other class decisions on a panel run's saved test probabilities (docs/panel.md, stop 26).

    python scripts/decision_variants.py PANEL_OUTPUT

Reads ``panel.json`` (each case's prior weights) and ``cases/*.parquet`` (labels, persistence,
tfi's probabilities) written by ``scripts/panel.py`` and decides each case's test rows, in
order, with each variant: the weights alone (``prior``), one score held at its trailing
quantiles, the sell and buy log-odds each at its own trailing quantile, and
:mod:`tfi.core.model.class_shares` over several windows. Prints tfi − persistence pooled over the
cases with its 95% interval and the cases won, as ``panel.py`` reports them.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from tfi.core.classes import PROBABILITY_COLUMNS
from tfi.core.evaluation import intervals
from tfi.core.evaluation.metrics import score
from tfi.core.model.class_shares import decide_log_odds, log_odds, trailing_share_classes

Variant = Callable[[np.ndarray, tuple[float, float, float]], np.ndarray]
DAY = 1440


def _trailing_quantile(values: np.ndarray, window: int, q: float) -> np.ndarray:
    """The ``q`` quantile of the ``window`` values before each row (NaN for the first hour)."""
    before = pd.Series(values).shift(1).rolling(window, min_periods=60)
    return before.quantile(q).to_numpy()


def _prior(proba: np.ndarray, weights: tuple[float, float, float]) -> np.ndarray:
    return np.argmax(proba * np.asarray(weights), axis=1)


def _shares(weights: tuple[float, float, float]) -> np.ndarray:
    inverse = 1 / np.asarray(weights)
    return inverse / inverse.sum()


def _one_score(window: int) -> Variant:
    def decide(proba, weights):
        target = _shares(weights)
        buy_over_sell = np.log(proba[:, 2]) - np.log(proba[:, 0])
        low = _trailing_quantile(buy_over_sell, window, target[0])
        high = _trailing_quantile(buy_over_sell, window, 1 - target[2])
        held = np.where(buy_over_sell <= low, 0, np.where(buy_over_sell >= high, 2, 1))
        return np.where(np.isnan(low), _prior(proba, weights), held)

    return decide


def _each_odds(window: int) -> Variant:
    def decide(proba, weights):
        target = _shares(weights)
        sell, buy = log_odds(proba)
        sell_level = _trailing_quantile(sell, window, 1 - target[0])
        buy_level = _trailing_quantile(buy, window, 1 - target[2])
        held = decide_log_odds(sell - sell_level, buy - buy_level)
        return np.where(np.isnan(sell_level), _prior(proba, weights), held)

    return decide


def _matched(window: int, min_rows: int, block: int = 60) -> Variant:
    return lambda proba, weights: trailing_share_classes(proba, weights, window, min_rows, block)


VARIANTS: dict[str, Variant] = {
    "prior": _prior,
    "log(p_buy / p_sell) at its trailing quantiles, 1 day": _one_score(DAY),
    "sell and buy log-odds, each at its trailing quantile, 2 days": _each_odds(2 * DAY),
    "shares matched, 1 day, first 6 h prior": _matched(DAY, 360),
    "shares matched, 2 days, first 12 h prior": _matched(2 * DAY, 720),
    "shares matched, 3 days, first 12 h prior": _matched(3 * DAY, 720),
    "shares matched, 7 days, first day prior (shipped)": _matched(7 * DAY, DAY),
    "shares matched, 7 days, first 2 h prior": _matched(7 * DAY, 120),
    "shares matched, 7 days, first day prior, every 4 h": _matched(7 * DAY, DAY, 240),
}


def main(folder: Path) -> int:
    rows = json.loads((folder / "panel.json").read_text())["rows"]
    cases = []
    for row in rows:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", row["case"])  # as panel.py names the file
        frame = pd.read_parquet(folder / "cases" / f"{slug}.parquet")
        cases.append((frame, tuple(row["decision_weights"])))
    for name, variant in VARIANTS.items():
        strata, won = [], 0
        for frame, weights in cases:
            y, persistence = frame["y"].to_numpy(), frame["persistence"].to_numpy()
            decided = variant(frame[list(PROBABILITY_COLUMNS)].to_numpy(), weights)
            won += score(y, decided) > score(y, persistence)
            blocks = intervals.calendar_blocks(frame["timestamp"])
            strata.append(intervals.Scored(y, decided, persistence, blocks))
        pooled = intervals.paired_difference(strata)
        print(f"| {name} | {pooled.text()} | {won} / {len(cases)} |")  # noqa: T201 - a report
    return 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1])))
