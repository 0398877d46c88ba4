"""From class probabilities to a class: decisions fitted for the metric, never on test rows.

A LightGBM model's probabilities on order-flow data stay close to the class priors, so taking
the most probable class says "neutral" nearly always, which a macro-averaged metric punishes.
A :class:`Decision` multiplies the probabilities by one weight per class before the argmax; the
probabilities themselves are left as they are.

- ``argmax``: weights 1, 1, 1.
- ``prior``: one over each class's share of the training rows (no fitting).
- ``shares``: the ``prior`` weights, re-chosen every hour so that the trailing
  ``decision.window`` scored rows are decided in the training class shares
  (:mod:`tfi.core.model.class_shares`): causal, no labels, and it follows the probabilities' drift
  when activity changes. The first ``decision.min_rows`` rows get the prior weights, unless a
  history of rows scored earlier is given (:class:`DecisionHistory`, ``live``).
- ``fitted``: the weights that maximise the metric on out-of-fold predictions
  (:func:`fit_weights`, a coarse-to-fine grid search over the sell and buy weights relative to
  neutral). In CV, fold ``i`` is decided with weights fitted on the folds before it, so no fold is
  scored with weights that saw it; the first fold uses ``prior``.

Pure: arrays in, weights and classes out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from tfi.core.classes import INDICES
from tfi.core.config.experiment import DecisionConfig
from tfi.core.evaluation.metrics import score
from tfi.core.model.class_shares import (
    BLOCK_NS,
    BLOCK_ROWS,
    clock_blocks,
    decide_log_odds,
    log_odds,
    trailing_share_classes,
)

DecisionRule = Literal["fitted", "prior", "argmax", "shares"]
N_CLASSES = len(INDICES)
_FIT_ROWS = 200_000  # rows the grid search scores; more change the weights by little
_COARSE = np.linspace(-3.0, 3.0, 25)  # log-weights of sell and buy relative to neutral
_FINE_STEPS = 11


@dataclass(frozen=True)
class Decision:
    rule: str
    weights: tuple[float, float, float]  # sell, neutral, buy
    window: int = 0  # ``shares``: trailing rows whose decided shares are held
    min_rows: int = 0  # ``shares``: rows scored before the weights first move

    def classes(
        self,
        proba: np.ndarray,
        timestamps: pd.DatetimeIndex | None = None,
        history: DecisionHistory | None = None,
    ) -> np.ndarray:
        """Class index (0 sell, 1 neutral, 2 buy) of each row, rows in time order.

        ``shares`` re-chooses its weights each hour of ``timestamps`` (each 60 rows without
        them) from the ``window`` rows before the hour began: ``history`` rows, then these.
        History rows inside the first row's hour are not used: a block's window is what came
        before it, so rows of that hour belong with ``proba`` (as ``live`` passes them).
        """
        if self.rule != "shares":
            return np.argmax(proba * np.asarray(self.weights), axis=1)
        blocks, earlier = None, None
        if timestamps is not None and len(timestamps):
            blocks = clock_blocks(timestamps.as_unit("ns").asi8)
            if history is not None:
                block_start = pd.Timestamp(int(blocks[0]) * BLOCK_NS)
                earlier = history.before(block_start)[-(self.window + BLOCK_ROWS) :]
        return trailing_share_classes(
            proba, self.weights, self.window, self.min_rows, blocks=blocks, history=earlier
        )

    def unsettled(
        self,
        timestamps: pd.DatetimeIndex,
        short: np.ndarray,
        history_short: np.ndarray | None = None,
        from_start: bool = False,
    ) -> np.ndarray:
        """Rows whose class can still depend on where the input starts (``warm_up``).

        ``short`` flags rows whose own features lack history; ``history_short`` the history
        rows before the first row's hour (as :meth:`classes` takes them), in time order. Under
        ``shares`` a row is also unsettled while its hour's trailing window holds a row whose
        features lacked history, or is not yet ``window`` rows long, unless ``from_start``
        (the rows are every one scored since the decision started: the model's first bar
        after training, which any run starts from): its weights would differ had the input
        started earlier. A settled window decides alike however it began.
        """
        short = np.asarray(short, dtype=bool)
        if self.rule != "shares" or len(short) == 0:
            return short.copy()
        earlier = np.zeros(0, bool) if history_short is None else np.asarray(history_short, bool)
        flags = np.concatenate([earlier, short])
        unsettled_before = np.concatenate([[0], np.cumsum(flags)])
        blocks = clock_blocks(timestamps.as_unit("ns").asi8)
        new_block = np.concatenate([[True], blocks[1:] != blocks[:-1]])
        block_start = len(earlier) + np.maximum.accumulate(
            np.where(new_block, np.arange(len(short)), 0)
        )
        first = np.maximum(block_start - self.window, 0)
        thin = (block_start < self.window) & (not from_start)
        mixed = unsettled_before[block_start] - unsettled_before[first] > 0
        return short | thin | mixed

    @classmethod
    def from_dict(cls, described: Mapping[str, Any]) -> Decision:
        """The decision :meth:`as_dict` described (a logged model's config, ``decision.json``)."""
        sell, neutral, buy = (float(w) for w in described["weights"])
        return cls(
            str(described["rule"]),
            (sell, neutral, buy),
            int(described.get("window", 0)),
            int(described.get("min_rows", 0)),
        )

    def as_dict(self) -> dict[str, object]:
        described: dict[str, object] = {"rule": self.rule, "weights": list(self.weights)}
        if self.rule == "shares":
            described |= {"window": self.window, "min_rows": self.min_rows}
        return described


ARGMAX = Decision("argmax", (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class DecisionHistory:
    """Probabilities of rows scored before those to decide, in time order: the ``shares``
    decision's trailing window when rows come a few at a time (``live``)."""

    timestamps: pd.DatetimeIndex
    proba: np.ndarray  # (rows, 3)

    def before(self, moment: pd.Timestamp) -> np.ndarray:
        """The probabilities of the rows before ``moment``."""
        return self.proba[: int(self.timestamps.searchsorted(moment, side="left"))]


def prior_decision(y_train: np.ndarray) -> Decision:
    """Weights 1 / class share of the training rows (scaled so that neutral's is 1)."""
    counts = np.bincount(np.asarray(y_train, dtype=np.intp), minlength=N_CLASSES).astype(float)
    inverse = counts.sum() / np.maximum(counts, 1.0)
    return Decision("prior", _relative(inverse))


def decide(
    config: DecisionConfig,
    metric: str,
    y_train: np.ndarray,
    out_of_fold: Sequence[tuple[np.ndarray, np.ndarray]],
) -> Decision:
    """The decision (``decision.rule``) of a model trained on ``y_train`` and tuned for
    ``metric``, given earlier out-of-fold predictions.

    ``out_of_fold`` holds (true class, probabilities) pairs of models that did not train on
    those rows. ``fitted`` falls back to ``prior`` when there are none.
    """
    rule = config.rule
    if rule == "argmax":
        return ARGMAX
    prior = prior_decision(y_train)
    if rule == "shares":
        return Decision("shares", prior.weights, config.window, config.min_rows)
    if rule == "prior" or not out_of_fold:
        return prior
    y = np.concatenate([pair[0] for pair in out_of_fold])
    proba = np.concatenate([pair[1] for pair in out_of_fold])
    return Decision("fitted", fit_weights(y, proba, metric))


def fit_weights(y: np.ndarray, proba: np.ndarray, metric: str) -> tuple[float, float, float]:
    """Per-class weights that maximise the metric (macro-F1 unless it is macro precision)."""
    if len(y) > _FIT_ROWS:  # an even stride keeps every period represented
        keep = np.linspace(0, len(y) - 1, _FIT_ROWS).astype(np.intp)
        y, proba = y[keep], proba[keep]
    y = np.asarray(y, dtype=np.intp)
    # Log-odds against neutral: a log-weight pair shifts them, so a point costs a few compares
    # (argmax over three columns is several times slower).
    sell_odds, buy_odds = log_odds(proba)
    measured = "precision_macro" if metric == "precision_macro" else "f1_macro"

    def value(log_sell: float, log_buy: float) -> float:
        predicted = decide_log_odds(sell_odds + log_sell, buy_odds + log_buy)
        return score(y, predicted, measured)

    best = max(((s, b) for s in _COARSE for b in _COARSE), key=lambda point: value(*point))
    step = _COARSE[1] - _COARSE[0]
    fine = np.linspace(-step, step, _FINE_STEPS)
    best = max(((best[0] + s, best[1] + b) for s in fine for b in fine), key=lambda p: value(*p))
    return (float(np.exp(best[0])), 1.0, float(np.exp(best[1])))


def _relative(weights: np.ndarray) -> tuple[float, float, float]:
    sell, neutral, buy = (float(w) / float(weights[1]) for w in weights)
    return (sell, neutral, buy)
