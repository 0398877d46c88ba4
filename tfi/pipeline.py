"""Stage order and reuse: ``prepare -> select -> tune -> train``, and ``main`` around them.

A stage that needs an upstream result first looks for a finished run of that stage with the
same inputs digest (data digest + the config sections the stage depends on) and reuses its
logged artifacts; only if there is none does it run the stage, in the manner of MLflow's
multistep-workflow example (:func:`upstream`). ``main`` runs every stage as a child run.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from tfi.core import keys
from tfi.core.data import sources as data_io
from tfi.stages import backtest, prepare, select, train, tune
from tfi.stages.outputs import Prepared, Selected, Trained, Tuned
from tfi.stages.session import Session
from tfi.tracking import runs as tracking

log = logging.getLogger(__name__)


def upstream(session: Session, parent_id: str | None = None) -> tuple[Prepared, Selected]:
    """Prepared labels and selected features, reused or computed; then the full matrix is freed.

    Only the selected columns are needed downstream: on the full data the full matrix is most of
    the process's memory.
    """
    prepared = prepare.reuse(session) or prepare.run(session, parent_id)
    selected = select.reuse(session) or select.run(session, prepared, parent_id)
    session.release()
    return prepared, selected


def run_prepare(session: Session, run_id: str | None) -> Prepared:
    return prepare.run(session, run_id=run_id)


def run_select(session: Session, run_id: str | None) -> Selected:
    prepared = prepare.reuse(session) or prepare.run(session)
    return select.run(session, prepared, run_id=run_id)


def run_tune(session: Session, run_id: str | None) -> Tuned:
    session.storage()  # fail on a bad storage before any compute
    prepared, selected = upstream(session)
    return tune.run(session, prepared, selected, run_id=run_id)


def run_train(session: Session, run_id: str | None) -> Trained:
    session.storage()
    prepared, selected = upstream(session)
    tuned = tune.finished(session) or tune.run(session, prepared, selected)
    return train.run(session, prepared, selected, tuned, run_id=run_id)


def run_backtest(session: Session, run_id: str | None) -> backtest.BacktestResult:
    if session.config.backtest.retune == "never":
        session.storage()
    return backtest.run(session, run_id)


def run_main(session: Session, run_id: str | None) -> Trained:
    """The whole pipeline as child runs of one ``main`` run."""
    session.storage()
    with session.tracker.run(
        "main", run_id=run_id, tags={tracking.DATA_DIGEST: session.digest}
    ) as run:
        run.log_params(
            {
                "config": session.config.name,
                "data_source": data_io.describe_source(session.config.data),
            }
        )
        prepared, selected = upstream(session, run.id)
        tuned = tune.run(session, prepared, selected, parent_id=run.id)
        trained = train.run(session, prepared, selected, tuned, parent_id=run.id)
        stages = {
            "prepare": prepared.run_id,
            "select": selected.run_id,
            "tune": tuned.run_id,
            "train": trained.run_id,
        }
        run.set_tags(
            {
                **{keys.stage_run(stage): run_id for stage, run_id in stages.items()},
                keys.MODEL_VERSION: trained.promotion.version,
                keys.PROMOTION: trained.promotion.alias,
            }
        )
        run.log_metrics(
            {**trained.metrics, f"best_cv_{session.config.tuning.metric}": tuned.best.value}
        )
        run.describe(_main_run_name(session), _main_run_note(session, trained, stages))
    return trained


def _main_run_name(session: Session) -> str:
    source = data_io.describe_source(session.config.data)
    short = source if source.startswith("synthetic") else Path(source).name
    return f"{session.config.name} {short} {time.strftime('%Y-%m-%d %H:%M')}"


def _main_run_note(session: Session, trained: Trained, stages: dict[str, str]) -> str:
    links = " · ".join(
        f"[{stage}]({session.tracker.stage_run(run_id).link()})" for stage, run_id in stages.items()
    )
    promotion = trained.promotion
    return (
        f"**{session.config.name}** on {data_io.describe_source(session.config.data)}: "
        f"`{session.config.registry.model_name}` v{promotion.version} is "
        f"**{promotion.alias}** ({promotion.reason}).\n\n"
        f"Test period, against the references:\n\n{trained.references}\n\n"
        f"Stage runs: {links}"
    )
