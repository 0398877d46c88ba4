"""A class decision that keeps the predicted class shares at the training shares, causally.

When activity changes, a model's probabilities drift with it, and fixed class weights then
predict one class far more often than it occurs (on the real-data panel: 7% neutral where the
week had 35%). The ``shares`` decision re-chooses the weights every :data:`BLOCK_ROWS` rows so
that, over the trailing ``window`` rows *before* the block, the decided classes take the target
shares (the training period's). It needs no labels: only the model's own probabilities on rows
already scored. Until ``min_rows`` rows have been scored, the given weights apply unchanged.

The class of row ``t`` depends on row ``t``'s probabilities and on rows before ``t``'s block
only, so it never changes when later rows do. Rows are taken in the order given (one per bar).

Self-contained on purpose (NumPy only): the logged model carries this file, so the served
model, ``score`` and the training report decide with the same code.
"""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 60  # weights are re-chosen once per this many rows (an hour of minute bars)
SWEEPS = 2  # alternating sell/buy updates per block (panel: 4 sweeps decide the same)


def log_odds(proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Log-odds of sell and of buy against neutral, per row."""
    log_proba = np.log(np.clip(np.asarray(proba, dtype=np.float64), 1e-12, None))
    return log_proba[:, 0] - log_proba[:, 1], log_proba[:, 2] - log_proba[:, 1]


def decide_log_odds(sell: np.ndarray, buy: np.ndarray) -> np.ndarray:
    """argmax over (sell, 0, buy) with ties to the first: 0 sell, 1 neutral, 2 buy."""
    return np.where((sell >= 0) & (sell >= buy), 0, np.where(buy <= 0, 1, 2))


def share_weights(
    sell_odds: np.ndarray,
    buy_odds: np.ndarray,
    target: tuple[float, float, float],
    start: tuple[float, float],
    sweeps: int = SWEEPS,
) -> tuple[float, float]:
    """Log-weights of sell and buy (neutral's is 0) under which these rows are decided in the
    target shares.

    For a fixed buy weight, a row is decided "sell" exactly when the sell weight reaches
    ``max(0, buy_odds + buy weight) - sell_odds``, so the sell weight that decides a share ``p``
    of the rows "sell" is that quantity's ``p`` quantile; likewise for buy. Alternating the two
    exact updates converges in a few sweeps; from the previous block's weights, two suffice.
    """
    log_sell, log_buy = start
    for _ in range(sweeps):
        log_sell = float(np.quantile(np.maximum(0.0, buy_odds + log_buy) - sell_odds, target[0]))
        log_buy = float(np.quantile(np.maximum(0.0, sell_odds + log_sell) - buy_odds, target[2]))
    return log_sell, log_buy


def trailing_share_classes(
    proba: np.ndarray,
    weights: tuple[float, float, float],
    window: int,
    min_rows: int,
    block: int = BLOCK_ROWS,
) -> np.ndarray:
    """Class index per row (0 sell, 1 neutral, 2 buy), the shares held at those that
    ``weights`` imply (one over each class's training share, so the shares are their inverses,
    normalised)."""
    sell_odds, buy_odds = log_odds(proba)
    n = len(sell_odds)
    weights_array = np.asarray(weights, dtype=np.float64)
    sell_share, neutral_share, buy_share = (1.0 / weights_array) / (1.0 / weights_array).sum()
    target = (float(sell_share), float(neutral_share), float(buy_share))
    base = (
        float(np.log(weights_array[0] / weights_array[1])),
        float(np.log(weights_array[2] / weights_array[1])),
    )
    log_weights = np.empty((n, 2))
    current = base
    for start in range(0, n, block):
        if start >= max(min_rows, 1):
            first = max(0, start - window)
            current = share_weights(sell_odds[first:start], buy_odds[first:start], target, current)
        log_weights[start : start + block] = current
    return decide_log_odds(sell_odds + log_weights[:, 0], buy_odds + log_weights[:, 1])
