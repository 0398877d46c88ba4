"""The prepare stage's pure core: labels, periods and thresholds for validated market data.

Reads a :class:`~tfi.core.data.market.MarketData`, returns :class:`LabelledData`. The label table it
produces (``labels.parquet`` in MLflow) is what every later stage trains and evaluates on, and
it can be read back with :meth:`LabelledData.from_table`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tfi.core.classes import LABELS, NAME_OF
from tfi.core.config.experiment import CVConfig, ExperimentConfig
from tfi.core.data.sources import MarketData
from tfi.core.errors import SplitError
from tfi.core.labels.imbalance import (
    RowThresholds,
    Thresholds,
    classify,
    fit_thresholds,
    future_imbalance,
    rolling_thresholds,
)
from tfi.core.labels.split import (
    PERIODS,
    TEST,
    TRAIN,
    UNLABELLED,
    Fold,
    assign_periods,
    require_classes,
    walk_forward_folds,
)


@dataclass(frozen=True)
class LabelledData:
    timestamps: pd.DatetimeIndex
    future_imbalance: np.ndarray
    window_end: np.ndarray
    target: np.ndarray  # -1/0/1 as float, NaN where undefined
    period: np.ndarray  # one of split.PERIODS per row
    thresholds: Thresholds  # the training period's quantiles (what 'fixed' applies everywhere)
    row_thresholds: RowThresholds  # the thresholds each row's class was made with
    rolling: bool = False
    zero_volume_windows: int = 0

    def rows(self, period: str) -> np.ndarray:
        """Positions of the rows of one period, in time order."""
        return np.flatnonzero(self.period == period)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "timestamp": self.timestamps,
                "future_imbalance": self.future_imbalance,
                "window_end": self.window_end,
                "target": pd.array(self.target, dtype="Float64").astype("Int8"),
                "period": pd.Categorical(self.period, categories=PERIODS),
                "threshold_low": self.row_thresholds.low,
                "threshold_high": self.row_thresholds.high,
            }
        )

    @classmethod
    def from_table(
        cls, table: pd.DataFrame, thresholds: Mapping[str, Any], zero_volume_windows: int = 0
    ) -> LabelledData:
        target = table["target"].astype("Float64").to_numpy(dtype=np.float64, na_value=np.nan)
        fitted = {key: thresholds[key] for key in ("low", "high", "low_quantile", "high_quantile")}
        return cls(
            pd.DatetimeIndex(table["timestamp"]).as_unit("ns"),
            table["future_imbalance"].to_numpy(dtype=np.float64),
            table["window_end"].to_numpy(dtype="datetime64[ns]"),
            target,
            table["period"].astype(str).to_numpy(dtype=object),
            Thresholds(**fitted),
            RowThresholds(
                table["threshold_low"].to_numpy(dtype=np.float64),
                table["threshold_high"].to_numpy(dtype=np.float64),
            ),
            thresholds.get("method") == "rolling",
            zero_volume_windows,
        )

    def thresholds_record(self) -> dict[str, Any]:
        """``thresholds.json``: the method and the training period's quantiles."""
        return {"method": "rolling" if self.rolling else "fixed", **self.thresholds.as_dict()}

    def missing_test_classes(self) -> list[str]:
        """The classes no test row has (empty when all three occur)."""
        present = set(
            np.unique(self.target[self.period == TEST][~np.isnan(self.target[self.period == TEST])])
        )
        return [NAME_OF[value] for value in LABELS if value not in present]

    def summary(self) -> dict[str, float]:
        """Row counts per period and class shares per labelled period (flat, for metrics)."""
        out: dict[str, float] = {"rows_total": float(len(self.period))}
        for period in PERIODS:
            out[f"rows_{period}"] = float(np.count_nonzero(self.period == period))
        for period in (TRAIN, TEST, "purged"):
            target = self.target[self.period == period]
            for cls_value in LABELS:
                share = float(np.mean(target == cls_value)) if target.size else 0.0
                out[f"{period}_share_{NAME_OF[cls_value]}"] = share
        out["zero_volume_windows"] = float(self.zero_volume_windows)
        return out


def prepare_labels(data: MarketData, config: ExperimentConfig) -> LabelledData:
    """Future imbalance, periods, training-only thresholds and classes for every row."""
    labels = config.labels
    _require_bar_spacing(data, config.data.bar_minutes)
    imbalance = future_imbalance(
        data.timestamps,
        data.flow["buy_qty"],
        data.flow["sell_qty"],
        data.flow["volume"],
        labels.horizon,
        labels.window,
        pd.Timedelta(minutes=config.data.bar_minutes),
    )
    if np.all(np.isnan(imbalance.values)):
        raise SplitError(
            f"{data.source}: no row has a defined label (needs {labels.horizon}+ consecutive "
            "minutes with volume after it)"
        )
    period = assign_periods(
        data.timestamps,
        imbalance.window_end,
        pd.Timestamp(config.split.test_start),
        pd.Timedelta(minutes=config.split.embargo_minutes),
    )
    rolling = None
    if labels.thresholds == "rolling":
        rolling = rolling_thresholds(
            data.timestamps,
            imbalance.values,
            imbalance.window_end,
            labels.low_quantile,
            labels.high_quantile,
            labels.rolling_days,
            labels.rolling_min_labels,
        )
        # Rows whose thresholds are still warming up have no class: not trained or scored on.
        period[np.isnan(rolling.low) & (period != UNLABELLED)] = UNLABELLED
        _require_period_rows(period, data.timestamps, labels.rolling_min_labels)
    train = period == TRAIN
    # Recorded in both modes; with fixed thresholds, also every row's.
    thresholds = fit_thresholds(imbalance.values[train], labels.low_quantile, labels.high_quantile)
    row_thresholds = (
        rolling if rolling is not None else RowThresholds.constant(thresholds, len(period))
    )
    target = classify(imbalance.values, row_thresholds)
    target[period == UNLABELLED] = np.nan
    require_classes(target[train], "the training period", LABELS)
    return LabelledData(
        data.timestamps,
        imbalance.values,
        imbalance.window_end,
        target,
        period,
        thresholds,
        row_thresholds,
        rolling is not None,
        imbalance.zero_volume,
    )


def _require_bar_spacing(data: MarketData, bar_minutes: int) -> None:
    """Label windows count bars ``data.bar_minutes`` apart: data spaced otherwise has none."""
    steps = np.diff(data.timestamps.as_unit("ns").asi8)
    if not len(steps):
        return
    usual = pd.Timedelta(int(np.median(steps)), unit="ns")
    if usual != pd.Timedelta(minutes=bar_minutes):
        raise SplitError(
            f"{data.source}: data.bar_minutes is {bar_minutes} but the bars are usually "
            f"{usual} apart: set data.bar_minutes to the data's spacing"
        )


def _require_period_rows(period: np.ndarray, stamps: pd.DatetimeIndex, min_labels: int) -> None:
    for name, where in ((TRAIN, "training"), (TEST, "test")):
        if not np.any(period == name):
            raise SplitError(
                f"no {where} row has a rolling class threshold: the first "
                f"{min_labels} labels (labels.rolling_min_labels) after {stamps[0]} only warm "
                "them up; use more data, a later split date or a smaller rolling_min_labels"
            )


def training_folds(
    labelled: LabelledData, config: CVConfig, first_rows: int | None = None
) -> list[Fold]:
    """Purged walk-forward folds over the training rows (indices into those rows).

    ``first_rows`` limits them to the first training rows: the folds inside a fold's training
    rows, for choices that must not see that fold's validation block.
    """
    rows = labelled.rows(TRAIN)[:first_rows]
    try:
        return walk_forward_folds(
            labelled.timestamps.to_numpy()[rows],
            labelled.window_end[rows],
            config.n_splits,
            pd.Timedelta(minutes=config.embargo_minutes),
            config.min_train_rows,
        )
    except SplitError as error:
        if first_rows is None:
            raise
        raise SplitError(f"inside the first fold's {len(rows)} training rows: {error}") from None


@dataclass(frozen=True)
class FoldLabels:
    """A fold's classes for training rows ``[0, valid_stop)``, from its own thresholds.

    ``thresholds`` is None with rolling thresholds: each row's are already fitted on labels
    known before it, so the classes need no refit per fold.
    """

    thresholds: Thresholds | None
    target: np.ndarray  # -1/0/1 as float, one per training row up to the fold's valid_stop

    def record(self, fold: int) -> dict[str, Any]:
        if self.thresholds is None:
            return {"fold": fold, "method": "rolling"}
        return {"fold": fold, "method": "fixed", **self.thresholds.as_dict()}


def fold_labels(labelled: LabelledData, folds: Sequence[Fold]) -> list[FoldLabels]:
    """Classes of each fold's rows with thresholds fitted on that fold's training rows only.

    The training period's thresholds are quantiles over every training row, so they know the
    imbalance of each fold's validation block and of the blocks after it. Inside CV, the
    validation block is the future: a fold's classes (training and validation rows alike) come
    from the quantiles of its own purged training rows, as the champion's come from the whole
    training period before the test.
    """
    rows = labelled.rows(TRAIN)
    if labelled.rolling:
        # Each row's thresholds come from labels known before it: no fold sees its future.
        target = labelled.target[rows]
        for i, fold in enumerate(folds):
            require_classes(target[: fold.train_stop], f"the training rows of fold {i}", LABELS)
        return [FoldLabels(None, target[: fold.valid_stop]) for fold in folds]
    imbalance = labelled.future_imbalance[rows]
    quantiles = labelled.thresholds.low_quantile, labelled.thresholds.high_quantile
    labels = []
    for i, fold in enumerate(folds):
        try:
            thresholds = fit_thresholds(imbalance[: fold.train_stop], *quantiles)
        except SplitError as error:
            raise SplitError(f"fold {i}: {error}") from None
        target = classify(imbalance[: fold.valid_stop], thresholds)
        require_classes(target[: fold.train_stop], f"the training rows of fold {i}", LABELS)
        labels.append(FoldLabels(thresholds, target))
    return labels
