"""A class decision that keeps the predicted class shares at the training shares, causally.

When activity changes, a model's probabilities drift with it, and fixed class weights then
predict one class far more often than it occurs (on the real-data panel: 7% neutral where the
week had 35%). The ``shares`` decision re-chooses the weights once per block of rows (an hour of
the clock when the rows' timestamps are given, else :data:`BLOCK_ROWS` rows) so that, over the
trailing ``window`` rows *before* the block, the decided classes take the target shares (the
training period's). It needs no labels: only the model's own probabilities on rows already
scored, which may begin with a ``history`` of rows scored earlier (``live`` decides a few rows at
a time). Until ``min_rows`` rows are behind a block, the given weights apply.

A block's weights are a function of its trailing window alone (solved from the prior weights
each time, not from the previous block's), so two runs that start at different rows decide
every row alike once its window is made of rows both have scored. The class of row ``t``
depends on row ``t``'s probabilities and on rows before ``t``'s block only, so it never changes
when later rows do. Rows are taken in the order given (one per bar).

Self-contained on purpose (NumPy only): the logged model carries this file, so the served
model, ``score``, ``live`` and the training report decide with the same code.
"""

from __future__ import annotations

import numpy as np

BLOCK_ROWS = 60  # rows per block when no timestamps are given (an hour of minute bars)
BLOCK_NS = 3_600 * 10**9  # a block of the clock: the weights are re-chosen every hour
TOLERANCE = 1e-5  # log-weights that move less in a sweep have converged (on the panel's
# windows: the same classes as the exact fixed point, in 6-10 sweeps instead of 10-30)
MAX_SWEEPS = 40


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
    sweeps: int = MAX_SWEEPS,
) -> tuple[float, float]:
    """Log-weights of sell and buy (neutral's is 0) under which these rows are decided in the
    target shares.

    For a fixed buy weight, a row is decided "sell" exactly when the sell weight reaches
    ``max(0, buy_odds + buy weight) - sell_odds``, so the sell weight that decides a share ``p``
    of the rows "sell" is that quantity's ``p`` quantile; likewise for buy. The two exact
    updates alternate until a sweep moves neither by more than :data:`TOLERANCE`, at most
    ``sweeps`` times: the result depends on the rows and ``start`` alone.
    """
    log_sell, log_buy = start
    for _ in range(sweeps):
        new_sell = _quantile(np.maximum(0.0, buy_odds + log_buy) - sell_odds, target[0])
        new_buy = _quantile(np.maximum(0.0, sell_odds + new_sell) - buy_odds, target[2])
        moved = max(abs(new_sell - log_sell), abs(new_buy - log_buy))
        log_sell, log_buy = new_sell, new_buy
        if moved <= TOLERANCE:
            break
    return log_sell, log_buy


def _quantile(values: np.ndarray, q: float) -> float:
    """``np.quantile(values, q)`` (its linear method), partially sorting ``values`` in place:
    the two order statistics it interpolates, with numpy's own interpolation, in half the time
    (without np.quantile's generality; the decision solves thousands of windows per fold)."""
    position = (len(values) - 1) * q
    lower = int(np.floor(position))
    upper = min(lower + 1, len(values) - 1)
    values.partition((lower, upper))
    below, above = float(values[lower]), float(values[upper])
    fraction = position - lower
    if fraction >= 0.5:
        return above - (above - below) * (1 - fraction)
    return below + (above - below) * fraction


def clock_blocks(timestamps_ns: np.ndarray) -> np.ndarray:
    """The block of each row: the hour of the clock its timestamp (ns since the epoch) is in."""
    return np.asarray(timestamps_ns, dtype=np.int64) // BLOCK_NS


def trailing_share_classes(
    proba: np.ndarray,
    weights: tuple[float, float, float],
    window: int,
    min_rows: int,
    block: int = BLOCK_ROWS,
    blocks: np.ndarray | None = None,
    history: np.ndarray | None = None,
) -> np.ndarray:
    """Class index per row (0 sell, 1 neutral, 2 buy), the shares held at those that
    ``weights`` imply (one over each class's training share, so the shares are their inverses,
    normalised).

    ``blocks``: a non-decreasing block key per row (:func:`clock_blocks`); by default rows are
    cut into blocks of ``block``. ``history``: probabilities of the rows before these, in time
    order, all before the first row's block: they fill the first blocks' trailing windows.
    """
    earlier = np.empty((0, 3)) if history is None else np.asarray(history, dtype=np.float64)
    sell_odds, buy_odds = log_odds(np.concatenate([earlier, np.asarray(proba, np.float64)]))
    offset, n = len(earlier), len(sell_odds) - len(earlier)
    keys = np.arange(n) // block if blocks is None else np.asarray(blocks)
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]])) if n else []
    weights_array = np.asarray(weights, dtype=np.float64)
    sell_share, neutral_share, buy_share = (1.0 / weights_array) / (1.0 / weights_array).sum()
    target = (float(sell_share), float(neutral_share), float(buy_share))
    base = (
        float(np.log(weights_array[0] / weights_array[1])),
        float(np.log(weights_array[2] / weights_array[1])),
    )
    log_weights = np.empty((n, 2))
    for i, start in enumerate(starts):
        stop = starts[i + 1] if i + 1 < len(starts) else n
        behind = offset + start  # rows, history included, before the block
        current = base
        if behind >= max(min_rows, 1):
            first = max(0, behind - window)
            current = share_weights(sell_odds[first:behind], buy_odds[first:behind], target, base)
        log_weights[start:stop] = current
    return decide_log_odds(
        sell_odds[offset:] + log_weights[:, 0], buy_odds[offset:] + log_weights[:, 1]
    )
