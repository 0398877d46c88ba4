"""What each stage hands to the next: prepared labels, selected features, the tuned trial,
the trained champion. Plain frozen dataclasses, so they pickle into worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from optuna.trial import FrozenTrial

from tfi.core.data.sources import MarketData
from tfi.core.errors import StageError
from tfi.core.labels.labelled import LabelledData
from tfi.tracking.registry import Promotion


@dataclass(frozen=True)
class Prepared:
    run_id: str
    labelled: LabelledData


@dataclass(frozen=True)
class Selected:
    run_id: str
    features: tuple[str, ...]  # the champion's: chosen on every training row
    # Each CV fold's own: chosen on that fold's training rows only.
    fold_features: tuple[tuple[str, ...], ...]

    @property
    def tuning_features(self) -> tuple[str, ...]:
        """Every feature some CV fold uses, in order of first use."""
        return tuple(dict.fromkeys(name for own in self.fold_features for name in own))


@dataclass(frozen=True)
class Tuned:
    run_id: str
    study_name: str
    best: FrozenTrial
    # Persistence and majority class CV scores on the tuning folds; the best trial's
    # out-of-fold predictions when this process ran it. None: the train stage recomputes them.
    baselines: dict[str, float] | None = None
    out_of_fold: list[tuple[np.ndarray, np.ndarray]] | None = None
    # LightGBM's defaults as a candidate (their CV fold scores), when the study recorded them.
    defaults: FrozenTrial | None = None


@dataclass(frozen=True)
class Trained:
    run_id: str
    model_uri: str
    promotion: Promotion
    metrics: dict[str, float]
    fit_seconds: float
    references: str = ""  # the test references table, markdown


def check_alignment(data: MarketData, labelled: LabelledData) -> None:
    if data.n_rows != len(labelled.timestamps) or not data.timestamps.equals(labelled.timestamps):
        raise StageError(
            f"{data.source} does not have the timestamps of the prepared labels: "
            "the data changed since the prepare run"
        )
