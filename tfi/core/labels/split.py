"""Leak-free periods and walk-forward folds.

Every row gets one period:

- ``test``: on or after the split date, label defined;
- ``purged``: before the split date, but its label window reaches the test period (or the
  embargo before it): its label is made of test-period flow, so it is kept out of training;
- ``train``: before the split date with its whole label window before the test period;
- ``unlabelled``: the label is undefined (end of data, a gap in the minute grid, no volume).

Walk-forward folds split the training rows into ``n_splits + 1`` consecutive blocks; fold ``i``
validates on block ``i+1`` and trains on everything before it, minus the rows whose label window
ends at or after the validation block's first minute (minus an optional embargo). Training rows
are a prefix, so a fold is three integers, and its arrays are views, not copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from tfi.core.errors import SplitError

TRAIN, TEST, PURGED, UNLABELLED = "train", "test", "purged", "unlabelled"
PERIODS = (TRAIN, TEST, PURGED, UNLABELLED)
NO_GAP = pd.Timedelta(0)


def assign_periods(
    timestamps: pd.DatetimeIndex,
    window_end: np.ndarray,
    test_start: pd.Timestamp,
    embargo: pd.Timedelta = NO_GAP,
) -> np.ndarray:
    """Period name of every row (see the module docstring)."""
    first, last = timestamps[0], timestamps[-1]
    if test_start <= first or test_start > last:
        raise SplitError(
            f"split date {test_start} is outside the data ({first} .. {last}): "
            "there must be rows on both sides of it"
        )
    stamps = timestamps.to_numpy()
    defined = ~np.isnat(window_end)
    boundary = np.datetime64(test_start - embargo, "ns")
    periods = np.full(len(stamps), UNLABELLED, dtype=object)
    in_test = stamps >= np.datetime64(test_start, "ns")
    periods[defined & in_test] = TEST
    before = defined & ~in_test
    reaches = np.zeros(len(stamps), dtype=bool)
    reaches[before] = window_end[before] >= boundary
    periods[before & reaches] = PURGED
    periods[before & ~reaches] = TRAIN
    for period, name in ((TRAIN, "training"), (TEST, "test")):
        if not np.any(periods == period):
            raise SplitError(
                f"no {name} row has a defined label with the split at {test_start} "
                f"(data {first} .. {last})"
            )
    return periods


@dataclass(frozen=True)
class Fold:
    """Training rows ``[0, train_stop)``; validation rows ``[valid_start, valid_stop)``."""

    train_stop: int
    valid_start: int
    valid_stop: int

    @property
    def purged(self) -> int:
        return self.valid_start - self.train_stop


def walk_forward_folds(
    timestamps: np.ndarray,
    window_end: np.ndarray,
    n_splits: int,
    embargo: pd.Timedelta = NO_GAP,
    min_train_rows: int = 1,
) -> list[Fold]:
    """Purged expanding-window folds over training rows sorted by time."""
    n = len(timestamps)
    if n < n_splits + 1:
        raise SplitError(
            f"{n} training rows cannot make {n_splits} walk-forward folds "
            f"(need at least {n_splits + 1}; lower cv.n_splits or add data)"
        )
    block_starts = [n * i // (n_splits + 1) for i in range(1, n_splits + 1)]
    folds = []
    for i, start in enumerate(block_starts):
        stop = block_starts[i + 1] if i + 1 < n_splits else n
        boundary = timestamps[start] - np.timedelta64(embargo.value, "ns")
        # window_end is non-decreasing, so the rows to keep are a prefix.
        train_stop = int(np.searchsorted(window_end[:start], boundary, side="left"))
        if train_stop < min_train_rows:
            raise SplitError(
                f"fold {i} keeps {train_stop} training rows after purging the label horizon "
                f"(cv.min_train_rows={min_train_rows}); {n} training rows are too few for "
                f"{n_splits} folds: lower cv.n_splits or add data"
            )
        folds.append(Fold(train_stop, start, stop))
    return folds


def require_classes(target: np.ndarray, where: str, classes: tuple[int, ...]) -> None:
    """Fail with a clear message when a class has no row in ``target``."""
    present = set(np.unique(target[np.isfinite(target)]).astype(int).tolist())
    missing = [c for c in classes if c not in present]
    if missing:
        raise SplitError(
            f"class {missing} has no row in {where}: the thresholds or the split leave "
            "too few distinct imbalances; use more data or another split date"
        )
