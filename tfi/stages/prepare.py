"""The prepare stage: load and validate the data, label it, split it; log labels and thresholds.

Reusable: a finished prepare run with the same inputs (data digest, ``data``/``labels``/``split``
config) is found by :func:`reuse` and its ``labels.parquet`` read back instead of recomputed.
"""

from __future__ import annotations

import logging

from tfi.core.labels.labelled import LabelledData, prepare_labels
from tfi.stages.outputs import Prepared
from tfi.stages.session import Session
from tfi.tracking import runs as tracking

log = logging.getLogger(__name__)


def run(session: Session, parent_id: str | None = None, run_id: str | None = None) -> Prepared:
    """Load, validate, label and split; log the labels and thresholds."""
    data = session.data()
    labelled = prepare_labels(data, session.config)
    cfg = session.config
    missing = labelled.missing_test_classes()
    if missing:
        log.warning(
            "prepare: the test period holds no %s row: its macro-F1 cannot reach 1 (with one "
            "class, 1/3); compare models on it with care, or move the split date",
            " or ".join(missing),
        )
    with session.tracker.run(
        "prepare",
        session.prepare_key,
        parent_id,
        run_id,
        {tracking.DATA_DIGEST: session.digest},
    ) as run:
        run.log_dataset(data, context="prepare")
        run.log_params(
            {
                "data_source": data.source,
                "horizon": cfg.labels.horizon,
                "window": cfg.labels.window,
                "low_quantile": cfg.labels.low_quantile,
                "high_quantile": cfg.labels.high_quantile,
                "test_start": cfg.split.test_start.isoformat(),
                "split_embargo_minutes": cfg.split.embargo_minutes,
                "n_features": len(data.feature_names),
            }
        )
        summary = labelled.summary()
        run.log_metrics(summary)
        run.log_dict(labelled.thresholds_record(), "thresholds.json")
        run.log_dict(
            {
                "rows": {k: int(v) for k, v in summary.items() if k.startswith("rows_")},
                "class_balance": {k: v for k, v in summary.items() if "_share_" in k},
                "dropped_rows": {
                    "purged": int(summary["rows_purged"]),
                    "unlabelled": int(summary["rows_unlabelled"]),
                    "zero_volume_windows": labelled.zero_volume_windows,
                },
            },
            "class_balance.json",
        )
        run.log_dict(
            {"nan_counts": dict(data.nan_counts), "not_features": dict(data.dropped)},
            "data_report.json",
        )
        run.log_table(labelled.table(), "labels.parquet")
    log.info(
        "prepare: %d train, %d test, %d purged, %d unlabelled rows; %s thresholds "
        "(training period %.4f / %.4f)",
        summary["rows_train"],
        summary["rows_test"],
        summary["rows_purged"],
        summary["rows_unlabelled"],
        "rolling" if labelled.rolling else "fixed",
        labelled.thresholds.low,
        labelled.thresholds.high,
    )
    return Prepared(run.id, labelled)


def reuse(session: Session) -> Prepared | None:
    """The labels of a finished prepare run with the same inputs, or None."""
    found = session.tracker.find_finished("prepare", session.prepare_key)
    if found is None:
        return None
    run_id = found.info.run_id
    log.info("prepare: reusing run %s (same data and label config)", run_id)
    tracker = session.tracker
    table = tracker.load_parquet(run_id, "labels.parquet")
    thresholds = tracker.load_json(run_id, "thresholds.json")
    zero_volume = int(found.data.metrics.get("zero_volume_windows", 0))
    return Prepared(run_id, LabelledData.from_table(table, thresholds, zero_volume))
