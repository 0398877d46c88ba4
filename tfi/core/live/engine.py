"""Scoring bars as they arrive: the model's features, probabilities and decided class for each
new bar, the realised class of earlier bars once their label window has passed, and the
persistence reference on the same bars.

State kept between steps, all bounded: the trailing bars the features and the labels' rolling
thresholds look back over (:meth:`LiveEngine.keep`), each model's decision window (its last
``decision.window`` probabilities, :class:`LiveModel`), and the bars waiting for their label.

One model everywhere: a model's decision starts at the first bar after its last training row
(``trained_until``) and takes every bar after it in order, so the bars after its training are
decided exactly as its test period was in ``train``. A model that starts later (a restart,
``--from``, a new champion) first scores the bars before its first minute that its decision
window needs, never one from its training rows; a bar whose class could still depend on where
that started is marked ``warm_up`` (:meth:`~tfi.core.model.decision.Decision.unsettled`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from tfi.core.classes import PROBABILITY_COLUMNS
from tfi.core.config.experiment import LabelConfig
from tfi.core.data import bars as bar_data
from tfi.core.evaluation.references import carried_class
from tfi.core.labels.imbalance import (
    FutureImbalance,
    RowThresholds,
    Thresholds,
    classify,
    future_imbalance,
    rolling_thresholds,
    trailing_imbalance,
    window_offsets,
)
from tfi.core.live.features import flow_of, model_features
from tfi.core.model.class_shares import BLOCK_NS, clock_blocks
from tfi.core.model.decision import Decision, DecisionHistory

CHAMPION, CHALLENGER = "champion", "challenger"
EXTRA_ROWS = 120  # rows kept beyond the decision window: the current hour's


class Predictor(Protocol):
    """A loaded model: its feature columns in, its class probabilities out."""

    features: list[str]

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame: ...


@dataclass
class LiveModel:
    """One registered version as ``live`` runs it, with its decision window."""

    version: str
    predictor: Predictor
    decision: Decision
    trained_until: pd.Timestamp | None = None  # its last training row's bar
    stamps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    proba: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    short: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @property
    def features(self) -> list[str]:
        return list(self.predictor.features)

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        frame = pd.DataFrame(features.astype(np.float64), columns=self.features, copy=False)
        return self.predictor.predict(frame)[list(PROBABILITY_COLUMNS)].to_numpy(np.float64)

    def begin(self, stamps: pd.DatetimeIndex, proba: np.ndarray, short: np.ndarray) -> None:
        """The decision window before the first bar scored: these bars (scored after its
        training rows)."""
        self.stamps = stamps.as_unit("ns").asi8
        self.proba = np.asarray(proba, dtype=np.float64).reshape(-1, 3)
        self.short = np.asarray(short, dtype=bool)
        self._trim()

    def decide(
        self, stamps: pd.DatetimeIndex, proba: np.ndarray, short: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Class index (0/1/2) and warm_up of new bars, in time order after every bar so far."""
        if self.decision.rule != "shares":
            classes, warm = self.decision.classes(proba), np.asarray(short, dtype=bool)
        else:
            # The hour of the first new bar may have begun in an earlier step: its earlier
            # bars are decided again with it (their classes cannot change), and the window
            # is what came before that hour, as the decision takes it in one pass.
            hour = int(clock_blocks(stamps.as_unit("ns").asi8[:1])[0]) * BLOCK_NS
            cut = int(np.searchsorted(self.stamps, hour, side="left"))
            held = len(self.stamps) - cut
            joined = pd.DatetimeIndex(
                np.concatenate([self.stamps[cut:], stamps.as_unit("ns").asi8])
            ).as_unit("ns")
            history = DecisionHistory(
                pd.DatetimeIndex(self.stamps[:cut]).as_unit("ns"), self.proba[:cut]
            )
            classes = self.decision.classes(
                np.concatenate([self.proba[cut:], proba]), joined, history
            )[held:]
            # Every bar since training is held until the window is full: a thin window is
            # then the same in every run, not a sign of a late start.
            warm = self.decision.unsettled(
                joined, np.concatenate([self.short[cut:], short]), self.short[:cut], True
            )[held:]
        self.stamps = np.concatenate([self.stamps, stamps.as_unit("ns").asi8])
        self.proba = np.concatenate([self.proba, proba])
        self.short = np.concatenate([self.short, np.asarray(short, dtype=bool)])
        self._trim()
        return classes, warm

    def _trim(self) -> None:
        keep = self.decision.window + EXTRA_ROWS
        self.stamps, self.proba, self.short = (
            self.stamps[-keep:],
            self.proba[-keep:],
            self.short[-keep:],
        )


@dataclass(frozen=True)
class Step:
    """What one step produced."""

    predictions: pd.DataFrame  # one row per new bar (see :data:`PREDICTION_COLUMNS`)
    judged: pd.DataFrame  # earlier bars whose label is now known: timestamp, realised, ...


PREDICTION_COLUMNS = (
    "timestamp",
    "model_version",
    "prediction",
    *PROBABILITY_COLUMNS,
    "warm_up",
    "persistence",
    "challenger_version",
    "challenger_prediction",
)


class LiveEngine:
    """Bars in, predictions and realised classes out; see the module docstring."""

    def __init__(
        self,
        kind: str,
        labels: LabelConfig,
        bar: pd.Timedelta,
        thresholds: Thresholds | None,
        origin: pd.Timestamp,
    ):
        self.kind = kind
        self.labels = labels
        self.bar = bar
        self.thresholds = thresholds  # labels.thresholds "fixed": the training period's
        self.origin = origin  # the source's first bar: features before origin + window are short
        self.bars = pd.DataFrame()
        self.models: dict[str, LiveModel] = {}
        self.pending = pd.DataFrame(
            {
                "prediction": pd.Series(dtype="Int8"),
                "persistence": pd.Series(dtype="Int8"),
                "challenger_prediction": pd.Series(dtype="Int8"),
            },
            index=pd.DatetimeIndex([], dtype="datetime64[ns]", name="timestamp"),
        )

    # --- what is held --------------------------------------------------------------------

    def needed(self) -> pd.Timedelta:
        """How far back the models' features look."""
        features = [name for model in self.models.values() for name in model.features]
        return bar_data.history_needed(features)

    @property
    def label_lag(self) -> int:
        """Bars after a bar until its label is known (the label window's last offset)."""
        return window_offsets(self.labels.horizon, self.labels.window)[1]

    def keep(self) -> pd.Timedelta:
        """Bars held behind the newest: the features' windows, the labels' rolling thresholds
        (their days of labels, and the label window), and an hour's margin."""
        days = self.labels.rolling_days if self.rolling else 0.0
        label_span = pd.Timedelta(days=days) + (self.label_lag + 1) * self.bar
        return max(self.needed(), label_span) + pd.Timedelta(hours=1)

    @property
    def rolling(self) -> bool:
        return self.labels.thresholds == "rolling"

    def start(self, bars: pd.DataFrame) -> None:
        """The bars before the first one to score (history only)."""
        self.bars = bars

    def set_model(self, role: str, model: LiveModel) -> None:
        """Serve ``model`` from the next bar: its decision window starts with its
        probabilities on the held bars after its training rows."""
        self.models[role] = model
        stamps = pd.DatetimeIndex(self.bars.index)
        rows = np.arange(len(stamps))
        if model.trained_until is not None:  # never a training row: in-sample probabilities
            rows = rows[stamps > model.trained_until]
        # Only the shares decision looks back; the others decide each bar on its own.
        rows = rows[-(model.decision.window + EXTRA_ROWS) :]
        if model.decision.rule != "shares":
            rows = rows[:0]
        if len(rows):
            features = model_features(self.kind, self.bars, model.features, len(stamps) - rows[0])
            proba = model.probabilities(features[rows - rows[0]])
            short = self._short(model.features)[rows]
            model.begin(stamps[rows], proba, short)
        else:
            model.begin(stamps[:0], np.zeros((0, 3)), np.zeros(0, dtype=bool))

    def drop_model(self, role: str) -> None:
        self.models.pop(role, None)

    # --- a step ----------------------------------------------------------------------------

    def step(self, new: pd.DataFrame) -> Step:
        """Score the new bars (after every bar held, in time order) and judge earlier ones."""
        self.bars = pd.concat([self.bars, new]) if len(self.bars) else new
        n = len(new)
        stamps = pd.DatetimeIndex(new.index).as_unit("ns")
        out: dict[str, object] = {"timestamp": stamps}
        flow = flow_of(self.kind, self.bars)
        future = self._future(flow)
        row_thresholds = self._row_thresholds(future)
        # The bar features over the held bars once for both models (the step's main cost).
        names = list(dict.fromkeys(name for m in self.models.values() for name in m.features))
        matrix = model_features(self.kind, self.bars, names, n)
        column = {name: j for j, name in enumerate(names)}
        for role in (CHAMPION, CHALLENGER):
            model = self.models.get(role)
            if model is None:
                continue
            proba = model.probabilities(matrix[:, [column[name] for name in model.features]])
            short = self._short(model.features)[-n:]
            classes, warm = model.decide(stamps, proba, short)
            if role == CHAMPION:
                out |= {
                    "model_version": np.full(n, model.version, dtype=object),
                    "prediction": (classes - 1).astype(np.int8),
                    **dict(zip(PROBABILITY_COLUMNS, proba.T, strict=True)),
                    "warm_up": warm,
                }
            else:
                out |= {
                    "challenger_version": np.full(n, model.version, dtype=object),
                    "challenger_prediction": pd.array(classes - 1, dtype="Int8"),
                }
        if CHALLENGER not in self.models:
            out |= {
                "challenger_version": np.full(n, None, dtype=object),
                "challenger_prediction": pd.array([pd.NA] * n, dtype="Int8"),
            }
        out["persistence"] = self._persistence(flow, row_thresholds)[-n:].astype(np.int8)
        predictions = pd.DataFrame(out)[list(PREDICTION_COLUMNS)]
        self.pending = pd.concat(
            [
                self.pending,
                predictions.set_index("timestamp")[
                    ["prediction", "persistence", "challenger_prediction"]
                ].astype("Int8"),
            ]
        )
        judged = self._judge(future, row_thresholds)
        self._trim()
        return Step(predictions, judged)

    def restore_pending(self, rows: pd.DataFrame) -> None:
        """Bars scored before a restart whose label was not known yet (from the output)."""
        if len(rows):
            restored = rows.set_index("timestamp")[list(self.pending.columns)].astype("Int8")
            self.pending = pd.concat([restored, self.pending]).sort_index()

    # --- labels ----------------------------------------------------------------------------

    def _row_thresholds(self, future: FutureImbalance) -> RowThresholds:
        stamps = pd.DatetimeIndex(self.bars.index).as_unit("ns")
        if not self.rolling:
            if self.thresholds is None:
                raise ValueError("labels.thresholds 'fixed' needs the training thresholds")
            return RowThresholds.constant(self.thresholds, len(stamps))
        return rolling_thresholds(
            stamps,
            future.values,
            future.window_end,
            self.labels.low_quantile,
            self.labels.high_quantile,
            self.labels.rolling_days,
            self.labels.rolling_min_labels,
        )

    def _future(self, flow: dict[str, np.ndarray]) -> FutureImbalance:
        return future_imbalance(
            pd.DatetimeIndex(self.bars.index).as_unit("ns"),
            flow["buy_qty"],
            flow["sell_qty"],
            flow["volume"],
            self.labels.horizon,
            self.labels.window,
            self.bar,
        )

    def _persistence(self, flow: dict[str, np.ndarray], thresholds: RowThresholds) -> np.ndarray:
        """Persistence's class (-1/0/1): the last k minutes' imbalance class carried forward."""
        trailing = trailing_imbalance(
            flow["buy_qty"], flow["sell_qty"], flow["volume"], self.labels.horizon
        )
        return carried_class(trailing, thresholds) - 1

    def _judge(self, future: FutureImbalance, thresholds: RowThresholds) -> pd.DataFrame:
        """Pending bars whose label window has passed: their realised class (NA where the
        label is undefined: a gap, no volume, no threshold yet), and they stop waiting."""
        empty = self.pending.iloc[:0].assign(realised=pd.Series(dtype="Int8"))
        if not len(self.pending):
            return empty.reset_index()
        stamps = pd.DatetimeIndex(self.bars.index).as_unit("ns")
        passed = self.pending.index <= stamps[-1] - self.label_lag * self.bar
        if not passed.any():
            return empty.reset_index()
        realised = classify(future.values, thresholds)
        position = stamps.get_indexer(self.pending.index[passed])
        values = np.full(len(position), np.nan)
        held = position >= 0
        values[held] = realised[position[held]]
        classes = pd.array(values, dtype="Float64").astype("Int8")
        judged = self.pending[passed].assign(realised=classes)
        self.pending = self.pending[~passed]
        return judged.reset_index()

    def _short(self, features: Sequence[str]) -> np.ndarray:
        stamps = pd.DatetimeIndex(self.bars.index).as_unit("ns")
        return bar_data.short_history(
            stamps, bar_data.history_needed(features), self.bar, self.origin
        )

    def _trim(self) -> None:
        if len(self.bars):
            newest = self.bars.index[-1]
            self.bars = self.bars[self.bars.index > newest - self.keep()]
