"""The live record: how the champion does on realised labels, and when to raise the alarm.

Over the trailing ``live.window`` of judged bars: macro-F1 of the champion, of persistence
(and of a challenger scored in shadow) over the last hour, day and week; the paired difference
champion - persistence with its interval (:func:`tfi.core.evaluation.intervals.paired_difference`
over ``live.block`` blocks, which allows for errors that cluster in time); and the decided class
shares against the training shares. Bounded: rows older than the window are dropped.

:class:`Alarms` turns conditions into episodes: a transition is reported once when a condition
starts and once when it has ended (clear at several checks in a row), never once per minute.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from tfi.core.classes import NAME_OF
from tfi.core.config.experiment import LiveConfig
from tfi.core.evaluation.intervals import Interval, Scored, calendar_blocks, paired_difference
from tfi.core.evaluation.metrics import score

SPANS = {"1h": pd.Timedelta(hours=1), "1d": pd.Timedelta(days=1), "7d": pd.Timedelta(days=7)}
BEHIND_PERSISTENCE, CLASS_SHARES, STALLED, MODEL_REFUSED = (
    "behind_persistence",
    "class_shares",
    "stalled",
    "model_refused",
)
_FULL = 0.9  # the share of live.window judged bars must span before the difference alarms
_JUDGED = ["timestamp", "realised", "prediction", "persistence", "challenger_prediction"]


@dataclass
class LiveRecord:
    config: LiveConfig
    train_shares: tuple[float, float, float]  # sell, neutral, buy
    judged: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=_JUDGED))
    decided: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["timestamp", "prediction"])
    )

    @property
    def window(self) -> pd.Timedelta:
        return pd.Timedelta(self.config.window)

    def add(self, predictions: pd.DataFrame, judged: pd.DataFrame) -> None:
        if len(predictions):
            self.decided = _joined(self.decided, predictions[["timestamp", "prediction"]])
        labelled = judged[judged["realised"].notna()] if len(judged) else judged
        if len(labelled):
            self.judged = _joined(self.judged, labelled[_JUDGED])
        newest = self.decided["timestamp"].iloc[-1] if len(self.decided) else None
        if newest is not None:
            self.decided = self.decided[self.decided["timestamp"] > newest - self.window]
            self.judged = self.judged[self.judged["timestamp"] > newest - self.window]

    def full(self, rows: pd.DataFrame | None = None) -> bool:
        """Whether the judged (or given) bars span nearly the whole window: before that, a
        wide interval or one day's shares say the evidence is young, not that anything
        changed."""
        rows = self.judged if rows is None else rows
        if not len(rows):
            return False
        stamps = rows["timestamp"]
        return stamps.iloc[-1] - stamps.iloc[0] >= _FULL * self.window

    def difference(self) -> Interval | None:
        """Champion - persistence (macro-F1) over the window, with its interval."""
        rows = self.judged
        if not len(rows):
            return None
        y = rows["realised"].to_numpy(np.int64) + 1
        return paired_difference(
            [
                Scored(
                    y,
                    rows["prediction"].to_numpy(np.int64) + 1,
                    rows["persistence"].to_numpy(np.int64) + 1,
                    calendar_blocks(pd.DatetimeIndex(rows["timestamp"]), self.config.block),
                )
            ],
            "f1_macro",
            self.config.confidence,
        )

    def shares(self) -> dict[str, float]:
        """Decided class shares over the window."""
        counts = np.bincount(self.decided["prediction"].to_numpy(np.int64) + 1, minlength=3).astype(
            float
        )
        total = max(counts.sum(), 1.0)
        return {name: counts[label + 1] / total for label, name in NAME_OF.items()}

    def share_gap(self) -> float:
        """The largest distance of a decided class share from its training share (NaN until
        the decided bars fill the window: the decision holds the shares over its own trailing
        window, not over every day)."""
        if not self.full(self.decided):
            return float("nan")
        shares = self.shares()
        return max(abs(shares[NAME_OF[label]] - self.train_shares[label + 1]) for label in NAME_OF)

    def metrics(self) -> dict[str, float]:
        """The numbers a live run logs at one point in time."""
        out: dict[str, float] = {"rows_judged": float(len(self.judged))}
        if len(self.judged):
            newest = self.decided["timestamp"].iloc[-1]
            for span, length in SPANS.items():
                recent = self.judged[self.judged["timestamp"] > newest - length]
                if not len(recent):
                    continue
                y = recent["realised"].to_numpy(np.int64) + 1
                for name, column in (
                    ("champion", "prediction"),
                    ("persistence", "persistence"),
                    ("challenger", "challenger_prediction"),
                ):
                    values = recent[column]
                    if values.isna().any():
                        continue
                    out[f"f1_{name}_{span}"] = score(y, values.to_numpy(np.int64) + 1)
        interval = self.difference()
        if interval is not None:
            out |= {
                "vs_persistence": interval.difference,
                "vs_persistence_low": interval.low,
                "vs_persistence_high": interval.high,
            }
        for name, share in self.shares().items():
            out[f"share_{name}"] = share
        for label, name in NAME_OF.items():
            out[f"train_share_{name}"] = self.train_shares[label + 1]
        out["share_gap"] = self.share_gap()
        return out

    def conditions(self) -> dict[str, tuple[bool, str]]:
        """The alarm conditions now: kind -> (on, why)."""
        interval = self.difference()
        behind = interval is not None and interval.available and interval.low < 0 and self.full()
        why = "" if interval is None else f"champion - persistence {interval.text()}"
        gap = self.share_gap()
        shares = ", ".join(f"{k} {v:.1%}" for k, v in self.shares().items())
        return {
            BEHIND_PERSISTENCE: (behind, why),
            CLASS_SHARES: (
                bool(np.isfinite(gap) and gap > self.config.share_margin),
                f"decided shares {shares}; a share is {gap:.1%} from its training share",
            ),
        }


def _joined(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    return new.reset_index(drop=True) if not len(old) else pd.concat([old, new], ignore_index=True)


@dataclass(frozen=True)
class Transition:
    kind: str
    on: bool
    why: str


@dataclass
class Alarms:
    """Which alarms are on; :meth:`update` reports only changes. An alarm on the record goes
    off only after its condition has been clear at ``clear_after`` checks in a row, so a bound
    that hovers about zero makes one episode, not one per check; a stall or a refused model
    ends at once."""

    clear_after: int = 12
    active: dict[str, str] = field(default_factory=dict)  # kind -> why it went on
    clear: dict[str, int] = field(default_factory=dict)  # kind -> checks clear in a row

    def update(self, conditions: Mapping[str, tuple[bool, str]]) -> list[Transition]:
        changes = []
        for kind, (on, why) in conditions.items():
            if on:
                self.clear[kind] = 0
                if kind not in self.active:
                    self.active[kind] = why
                    changes.append(Transition(kind, True, why))
            elif kind in self.active:
                self.clear[kind] = self.clear.get(kind, 0) + 1
                needed = self.clear_after if kind in (BEHIND_PERSISTENCE, CLASS_SHARES) else 1
                if self.clear[kind] >= needed:
                    del self.active[kind]
                    changes.append(Transition(kind, False, why))
        return changes

    def describe(self) -> str:
        return ",".join(sorted(self.active)) or "none"
