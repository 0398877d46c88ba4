"""The live stage: follow a source of bars, score each bar with the champion as it arrives,
judge the champion on realised labels, alarm, retrain and switch.

Reads top to bottom: the model a run serves (:func:`_live_model`, refused when live cannot
compute its features or its labels differ), where the run starts (resumed from the output
folder, ``--from``, or the first bar after the model's training rows), the loop
(:class:`LiveLoop`: bars in, one output row per bar, metrics and alarms every ``live.log_every``
bars, the champion alias checked at each step), and retraining (:class:`Retrainer`).

The output folder holds one parquet file per day (``predictions-YYYY-MM-DD.parquet``), each
written atomically after every step, so a kill at any moment leaves whole files, and a restart
carries on after the last bar they hold: no bar scored twice, none skipped, and the same
output as an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tfi.core import keys
from tfi.core.config.experiment import ExperimentConfig
from tfi.core.errors import DataError, StageError
from tfi.core.evaluation import figures
from tfi.core.labels.imbalance import Thresholds
from tfi.core.live import record as live_record
from tfi.core.live.engine import (
    CHALLENGER,
    CHAMPION,
    EXTRA_ROWS,
    PREDICTION_COLUMNS,
    LiveEngine,
    LiveModel,
)
from tfi.core.live.features import missing_features
from tfi.core.live.record import Alarms, LiveRecord
from tfi.core.live.source import KLINE_COLUMNS, KLINES, BarSource, source_kind
from tfi.runtime.interrupts import critical
from tfi.runtime.uris import mask_text
from tfi.stages.score import write
from tfi.stages.train_report import label_settings
from tfi.tracking import live_runs, store
from tfi.tracking.live_runs import Outbox
from tfi.tracking.runs import StageRun, Tracker

log = logging.getLogger(__name__)

DAY_FILE = "predictions-{day}.parquet"
JUDGED_COLUMNS = ("realised", "correct", "persistence_correct", "challenger_correct")
OUTPUT_COLUMNS = (*PREDICTION_COLUMNS, *JUDGED_COLUMNS)
RETRAIN_FOLDER = "retrain"
RECORD_FIGURE = "live_record.png"
_MAX_POINTS = 24 * 120  # the figure shows the last 120 days of hourly points


# --- the model a run serves ----------------------------------------------------------------


def _live_model(cfg: ExperimentConfig, kind: str, version: str, columns: list[str]) -> LiveModel:
    """A registered version as live runs it; refused (StageError) when live cannot compute
    its features from these bars (raw ``columns``) or its label settings differ from the
    config's."""
    name = cfg.registry.model_name
    tags = live_runs.version_tags(name, version)
    served = live_runs.load_version(name, version)
    trained_kind = tags.get(keys.DATA_KIND)
    if trained_kind is not None and (trained_kind == KLINES) != (kind == KLINES):
        raise StageError(
            f"{name} v{version} was trained on {trained_kind} bars: its features cannot be "
            f"computed from {kind} bars"
        )
    missing = missing_features(kind, served.features, columns)
    if missing:
        raise StageError(f"{name} v{version} needs features live cannot compute: {missing}")
    labels = tags.get(keys.LABELS)
    if labels is not None and json.loads(labels) != json.loads(label_settings(cfg)):
        raise StageError(
            f"{name} v{version} was trained with other label settings ({labels}) than the "
            f"config's ({label_settings(cfg)}): its record would be judged on other classes"
        )
    if keys.TRAINED_UNTIL in tags:
        trained_until = pd.Timestamp(tags[keys.TRAINED_UNTIL])
    elif keys.TEST_START in tags:  # a version from before tfi recorded it: up to the split
        trained_until = pd.Timestamp(tags[keys.TEST_START]) - pd.Timedelta(1, "ns")
    else:
        trained_until = None
    return LiveModel(version, served, served.decision, trained_until)


def _thresholds(cfg: ExperimentConfig, tags: dict[str, str]) -> Thresholds | None:
    if cfg.labels.thresholds == "rolling":
        return None
    if keys.THRESHOLDS not in tags:
        raise StageError(
            "labels.thresholds is 'fixed' but the champion carries no training thresholds "
            f"(tag {keys.THRESHOLDS}): train it again with this version of tfi"
        )
    fitted = json.loads(tags[keys.THRESHOLDS])
    return Thresholds(
        fitted["low"], fitted["high"], fitted["low_quantile"], fitted["high_quantile"]
    )


def _train_shares(tags: dict[str, str]) -> tuple[float, float, float]:
    sell, neutral, buy = json.loads(tags.get(keys.TRAIN_SHARES, "[0.3, 0.4, 0.3]"))
    return float(sell), float(neutral), float(buy)


# --- the output folder ---------------------------------------------------------------------


class DailyOutput:
    """One parquet file per day of bars; the days still changing are held in memory."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.days: dict[str, pd.DataFrame] = {}
        self.dirty: set[str] = set()

    def path(self, day: str) -> Path:
        return self.folder / DAY_FILE.format(day=day)

    def files(self) -> list[Path]:
        return sorted(self.folder.glob(DAY_FILE.format(day="*")))

    def last_scored(self) -> pd.Timestamp | None:
        files = self.files()
        if not files:
            return None
        return pd.Timestamp(pd.read_parquet(files[-1], columns=["timestamp"])["timestamp"].max())

    def since(self, moment: pd.Timestamp) -> pd.DataFrame:
        """Rows from ``moment`` on, from the files."""
        first = moment.strftime("%Y-%m-%d")
        frames = [pd.read_parquet(path) for path in self.files() if path.stem[-10:] >= first]
        if not frames:
            return _empty_output()
        rows = pd.concat(frames, ignore_index=True)
        return rows[rows["timestamp"] >= moment].reset_index(drop=True)

    def _day(self, day: str) -> pd.DataFrame:
        if day not in self.days:
            path = self.path(day)
            self.days[day] = pd.read_parquet(path) if path.exists() else _empty_output()
        return self.days[day]

    def add(self, predictions: pd.DataFrame) -> None:
        frame = predictions.assign(
            realised=pd.array([pd.NA] * len(predictions), dtype="Int8"),
            **{col: pd.array([pd.NA] * len(predictions), dtype="boolean")
               for col in JUDGED_COLUMNS[1:]},
        )  # fmt: skip
        for day, rows in frame.groupby(frame["timestamp"].dt.strftime("%Y-%m-%d")):
            held = self._day(str(day))
            self.days[str(day)] = rows if not len(held) else pd.concat([held, rows])
            self.dirty.add(str(day))

    def realise(self, judged: pd.DataFrame) -> None:
        if not len(judged):
            return
        for day, rows in judged.groupby(judged["timestamp"].dt.strftime("%Y-%m-%d")):
            held = self._day(str(day)).set_index("timestamp")
            realised = rows.set_index("timestamp")["realised"]
            known = realised.index.intersection(held.index)
            held.loc[known, "realised"] = realised.loc[known]
            truth = held.loc[known, "realised"]
            for column, judged_column in (
                ("prediction", "correct"),
                ("persistence", "persistence_correct"),
                ("challenger_prediction", "challenger_correct"),
            ):
                predicted = held.loc[known, column].astype("Int8")
                held.loc[known, judged_column] = (predicted == truth).astype("boolean")
            self.days[str(day)] = held.reset_index()
            self.dirty.add(str(day))

    def flush(self) -> None:
        """Write the changed days (oldest first), each atomically; forget all but the last
        two days (a label comes k minutes after its bar)."""
        for day in sorted(self.dirty):
            rows = self.days[day].sort_values("timestamp", kind="stable")
            write(_typed(rows.reset_index(drop=True)), self.path(day))
        self.dirty.clear()
        for day in sorted(self.days)[:-2]:
            del self.days[day]


def _empty_output() -> pd.DataFrame:
    return _typed(pd.DataFrame({col: [] for col in OUTPUT_COLUMNS}))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(
        {
            "timestamp": "datetime64[ns]",
            "model_version": object,
            "prediction": np.int8,
            **dict.fromkeys(("p_sell", "p_neutral", "p_buy"), np.float64),
            "warm_up": bool,
            "persistence": np.int8,
            "challenger_version": object,
            "challenger_prediction": "Int8",
            "realised": "Int8",
            **dict.fromkeys(JUDGED_COLUMNS[1:], "boolean"),
        }
    )[list(OUTPUT_COLUMNS)]


# --- retraining ----------------------------------------------------------------------------


@dataclass
class Retrainer:
    """Starts ``python -m tfi main`` on the last ``live.train_days`` of collected bars, in its
    own process, so that no bar waits for it; the registry's evidence rules decide whether its
    version becomes the champion."""

    cfg: ExperimentConfig
    config_path: str
    source: str
    kind: str
    folder: Path
    process: subprocess.Popen[bytes] | None = None
    last_started: pd.Timestamp | None = None  # bar time
    started: int = 0

    def due(self, newest: pd.Timestamp, alarm_started: bool) -> bool:
        mode = self.cfg.live.retrain
        if mode == "off" or self.running:
            return False
        if alarm_started and mode in ("alarm", "both"):
            return True
        if mode in ("schedule", "both"):
            every = pd.Timedelta(days=self.cfg.live.retrain_every_days)
            if self.last_started is None:
                self.last_started = newest
            return newest - self.last_started >= every
        return False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, newest: pd.Timestamp) -> None:
        live = self.cfg.live
        first = newest - pd.Timedelta(days=live.train_days)
        split = newest - pd.Timedelta(days=live.test_days)
        folder = self.folder / RETRAIN_FOLDER / newest.strftime("%Y%m%dT%H%M")
        folder.mkdir(parents=True, exist_ok=True)
        bars = BarSource(self.source, self.kind, columns=None).read().bars
        bars = bars[(bars.index > first) & (bars.index <= newest)]
        data = _write_bars(bars, self.kind, folder)
        command = [
            sys.executable, "-m", "tfi", "main", "--config", self.config_path,
            "--data", str(data), "--split-date", split.isoformat(),
        ]  # fmt: skip
        with (folder / "main.log").open("wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        self.last_started = newest
        self.started += 1
        log.info(
            "live: retraining on %d bars (%s .. %s, test from %s) in process %d; log %s",
            len(bars), bars.index[0], newest, split, self.process.pid, folder / "main.log",
        )  # fmt: skip

    def wait(self) -> None:
        if self.process is not None:
            code = self.process.wait()
            if code:
                log.warning("live: the retraining exited with status %d (see its main.log)", code)


def _write_bars(bars: pd.DataFrame, kind: str, folder: Path) -> Path:
    """The collected bars in the source's own layout, for ``tfi main``."""
    if kind == KLINES:
        path = folder / "bars.csv"
        table = bars[list(KLINE_COLUMNS)].copy()
        table.insert(0, "open_time", bars.index.as_unit("ms").asi8)
        table.to_csv(path, index=False)
        return path
    path = folder / "bars.parquet"
    bars.rename_axis("timestamp").reset_index().to_parquet(path, index=False)
    return path


# --- the loop ------------------------------------------------------------------------------


@dataclass
class LiveSummary:
    run_id: str
    first: pd.Timestamp | None
    last: pd.Timestamp | None
    bars: int
    versions: list[str]
    alarms: list[str] = field(default_factory=list)  # every alarm that went on
    retrainings: int = 0


class LiveLoop:
    """One invocation of ``live``: see the module docstring."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        source: str,
        output: Path,
        config_path: str,
        replay: bool,
        start: pd.Timestamp | None,
        until: pd.Timestamp | None,
    ):
        self.cfg = cfg
        self.output = DailyOutput(output)
        self.replay = replay
        self.until = until
        self.bar = pd.Timedelta(minutes=cfg.data.bar_minutes)
        self.kind = source_kind(source)
        self.name, self.alias = cfg.registry.model_name, cfg.registry.champion_alias
        version = live_runs.alias_version(self.name, self.alias)
        if version is None:
            raise StageError(
                f"no version of {self.name} has the alias '{self.alias}': train one first "
                f"(`python -m tfi main --config ...`)"
            )
        self.tags = live_runs.version_tags(self.name, version)
        self.refused: set[str] = set()
        # Every raw column (parquet): a later champion may use others than this one.
        self.source = BarSource(source, self.kind, None, cfg.data.epoch_unit)
        everything = self._first_read()
        self.columns = list(everything.columns)
        champion = _live_model(cfg, self.kind, version, self.columns)
        resumed = self.output.last_scored()
        self.first = self._first_bar(everything, champion, start, resumed)
        self.engine = LiveEngine(
            self.kind, cfg.labels, self.bar, _thresholds(cfg, self.tags), everything.index[0]
        )
        self.engine.models[CHAMPION] = champion  # for the span of bars it needs
        history = everything[everything.index < self.first]
        self.engine.start(history[history.index >= self._history_start(history, champion)])
        self.engine.set_model(CHAMPION, champion)
        self._set_challenger()
        self.queue = everything[everything.index >= self.first]
        self.record = LiveRecord(cfg.live, _train_shares(self.tags))
        self._restore(resumed)
        self.alarms = Alarms()
        self.retrainer = Retrainer(cfg, config_path, source, self.kind, output)
        self.versions = [version]
        self.bars_done = 0
        self.missing = 0
        self.last_bar: pd.Timestamp | None = None
        self.last_arrival = time.monotonic()
        self.since_point = 0
        self.step_seconds: list[float] = []
        self.points: list[dict[str, float]] = []  # the metric points, for live_record.png

    # --- where it starts -------------------------------------------------------------------

    def _first_read(self) -> pd.DataFrame:
        arrivals = self.source.read()
        bars = arrivals.bars
        if not len(bars):
            raise DataError(f"live source {self.source.path} holds no valid bars yet")
        return bars

    def _first_bar(
        self,
        bars: pd.DataFrame,
        champion: LiveModel,
        start: pd.Timestamp | None,
        resumed: pd.Timestamp | None,
    ) -> pd.Timestamp:
        """The first bar to score: after the output's last one (a restart), at ``--from``, or
        after the champion's training rows."""
        if resumed is not None and start is not None:
            log.warning("live: %s holds predictions until %s: resuming there, not at "
                        "--from %s", self.output.folder, resumed, start)  # fmt: skip
        end = champion.trained_until
        if resumed is not None:
            after = resumed
        elif start is not None:
            after = start - pd.Timedelta(1, "ns")
        else:
            after = end
        if after is None:
            return bars.index[0]
        if resumed is None and start is not None and end is not None and start <= end:
            log.warning("live: --from %s is inside %s v%s's training rows (until %s): their "
                        "probabilities are in-sample", start, self.name, champion.version,
                        end)  # fmt: skip
        later = bars.index[bars.index > after]
        return later[0] if len(later) else after + self.bar

    def _history_start(self, history: pd.DataFrame, model: LiveModel) -> pd.Timestamp:
        """The oldest bar the first steps need: the features' windows behind the bars whose
        probabilities fill the decision window, and the labels' span before the first bar."""
        scored = history.index[-(model.decision.window + EXTRA_ROWS) :]
        oldest_scored = scored[0] if len(scored) else self.first
        return min(oldest_scored - self.engine.needed(), self.first - self.engine.keep())

    def _restore(self, resumed: pd.Timestamp | None) -> None:
        """After a restart: the bars still waiting for their label, and the record's window."""
        if resumed is None:
            return
        rows = self.output.since(resumed - pd.Timedelta(self.cfg.live.window))
        recent = rows["timestamp"] > resumed - (self.engine.label_lag + 1) * self.bar
        waiting = rows[rows["realised"].isna() & recent]
        self.engine.restore_pending(waiting)
        self.record.add(rows, rows[rows["realised"].notna()])
        log.info("live: resuming after %s (%d bars wait for their label)", resumed, len(waiting))

    # --- the models ------------------------------------------------------------------------

    def _set_challenger(self) -> None:
        version = live_runs.alias_version(self.name, self.cfg.registry.challenger_alias)
        current = self.engine.models.get(CHALLENGER)
        if version is None or version == self.engine.models[CHAMPION].version:
            self.engine.drop_model(CHALLENGER)
            return
        if current is not None and current.version == version:
            return
        try:
            challenger = _live_model(self.cfg, self.kind, version, self.columns)
            self.engine.set_model(CHALLENGER, challenger)
            log.info("live: challenger v%s scored in shadow", version)
        except StageError as why:
            log.warning("live: challenger v%s not scored: %s", version, why)

    def _follow_alias(self, outbox: Outbox) -> None:
        """Serve a new champion from the next bar; refuse one live cannot run. Not while the
        store is unreachable (a lookup would hold the bars back): the alias waits too."""
        if outbox.down_since is not None:
            return
        try:
            version = live_runs.alias_version(self.name, self.alias)
            self._set_challenger()
        except Exception:  # the store is down: keep serving (and shadowing) as before
            return
        current = self.engine.models[CHAMPION].version
        if version is None:
            self._alarm(outbox, {live_record.MODEL_REFUSED: (
                True, f"the alias '{self.alias}' names no live version: v{current} serves on"
            )})  # fmt: skip
            return
        if version == current or version in self.refused:
            return
        try:
            model = _live_model(self.cfg, self.kind, version, self.columns)
        except StageError as why:
            self.refused.add(version)
            self._alarm(outbox, {live_record.MODEL_REFUSED: (
                True, f"champion v{version} refused, v{current} serves on: {why}"
            )})  # fmt: skip
            return
        self.engine.set_model(CHAMPION, model)
        self.versions.append(version)
        self._alarm(outbox, {live_record.MODEL_REFUSED: (False, "")})
        log.info("live: champion v%s serves from the bar after %s (was v%s)",
                 version, self.last_bar, current)  # fmt: skip
        outbox.tag({keys.MODEL_VERSION: version})
        self._set_challenger()  # the old champion may now be the challenger

    # --- the run ---------------------------------------------------------------------------

    def _alarm(self, outbox: Outbox, conditions: dict[str, tuple[bool, str]]) -> list[str]:
        started = []
        for change in self.alarms.update(conditions):
            if change.on:
                log.warning("live: ALARM %s: %s", change.kind, change.why)
                started.append(change.kind)
            else:
                log.info("live: alarm %s is over", change.kind)
            outbox.add_point(
                {f"alarm_{change.kind}": float(change.on)}, self._step_number(), self._ms()
            )
        outbox.tag({keys.LIVE_ALARM: self.alarms.describe()})
        return started

    def _step_number(self) -> int:
        if self.last_bar is None:
            return 0
        return int((self.last_bar - self.first) / pd.Timedelta(minutes=1))

    def _ms(self) -> int:
        return int((self.last_bar or self.first).value // 10**6)

    def _chunks(self) -> Iterator[pd.DataFrame]:
        """New bars, step by step, until --until (or the end of a replay)."""
        step_rows = self.cfg.live.replay_bars
        while True:
            if self.until is not None:
                self.queue = self.queue[self.queue.index <= self.until]
            if len(self.queue):
                take = step_rows if self.replay else len(self.queue)
                chunk, self.queue = self.queue.iloc[:take], self.queue.iloc[take:]
                self.last_arrival = time.monotonic()
                yield chunk
                continue
            if self.replay or (self.until is not None and self.last_bar is not None
                               and self.last_bar >= self.until):  # fmt: skip
                return
            yield self.queue.iloc[:0]  # nothing new: a chance to check for a stall
            time.sleep(self.cfg.live.poll_seconds)
            arrived = self.source.read().bars
            self.queue = arrived[arrived.index >= self.first]

    def run(self, tracker: Tracker, run_id: str | None) -> LiveSummary:
        champion = self.engine.models[CHAMPION]
        run = tracker.open(
            "live",
            run_id=run_id,
            tags={keys.MODEL_NAME: self.name, keys.MODEL_VERSION: champion.version,
                  keys.LAUNCHER: store.this_process()},
        )  # fmt: skip
        run.log_params(
            {"source": str(self.source.path), "output": str(self.output.folder),
             "replay": self.replay, "first": str(self.first), "until": str(self.until),
             "window": self.cfg.live.window, "retrain": self.cfg.live.retrain}
        )  # fmt: skip
        outbox = Outbox(run.id, self.name)
        outbox.tag_version(champion.version, {keys.LIVE_RUN: run.id})
        started_alarms: list[str] = []
        status = "FINISHED"
        try:
            for chunk in self._chunks():
                # A stop lands between steps (while live waits for bars or reads them), never
                # inside one: the step's files, a registry read and the outbox stay whole.
                with critical():
                    if len(chunk):
                        self._step(chunk, outbox, started_alarms)
                    elif not self.replay:
                        stalled = time.monotonic() - self.last_arrival
                        started_alarms += self._alarm(outbox, {live_record.STALLED: (
                            stalled > 60 * self.cfg.live.stall_minutes,
                            f"no new bar for {stalled:.0f} s (last {self.last_bar})",
                        )})  # fmt: skip
                        self._follow_alias(outbox)
                        outbox.kick()
        except KeyboardInterrupt:
            log.info("live: stopped after %s; a restart resumes there", self.last_bar)
        except BaseException as exc:
            status = "FAILED"
            outbox.tag({keys.ERROR: mask_text(f"{type(exc).__name__}: {exc}")[:5000]})
            raise
        finally:
            if self.replay:
                self.retrainer.wait()
            self._point(outbox)
            if not outbox.close():
                log.warning("live: %d metric points and tags could not be sent to MLflow",
                            outbox.waiting)  # fmt: skip
            self._log_figure(run)
            try:
                tracker.end(run.id, status)
            except Exception as exc:  # the store is down at the very end
                log.warning("live: could not end the run in MLflow: %s", exc)
        return LiveSummary(
            run.id, self.first, self.last_bar, self.bars_done, self.versions,
            started_alarms, self.retrainer.started,
        )  # fmt: skip

    def _step(self, chunk: pd.DataFrame, outbox: Outbox, started_alarms: list[str]) -> None:
        began = time.perf_counter()
        if self.last_bar is not None:
            steps = np.diff(np.concatenate([[self.last_bar.value], chunk.index.asi8]))
        else:
            steps = np.diff(chunk.index.asi8)
        self.missing += int(np.maximum(steps // self.bar.value - 1, 0).sum())
        step = self.engine.step(chunk)
        self.output.add(step.predictions)
        self.output.realise(step.judged)
        self.output.flush()
        seconds = time.perf_counter() - began
        self.step_seconds = [*self.step_seconds[-999:], seconds / len(chunk)]
        close = chunk.index[-1] + self.bar
        lag = (pd.Timestamp.now(tz="UTC").tz_localize(None) - close).total_seconds()
        # The record and the alarms move log_every bars at a time, also within a long step.
        every = self.cfg.live.log_every
        known_at = (step.judged["timestamp"] + self.engine.label_lag * self.bar).to_numpy()
        starts = list(range(0, len(chunk), every))
        part_ends = step.predictions["timestamp"].to_numpy()[
            [min(start + every, len(chunk)) - 1 for start in starts]
        ]
        # A judged bar counts from the part in which its label window ended.
        part_of = np.minimum(np.searchsorted(part_ends, known_at), len(starts) - 1)
        for i, start in enumerate(starts):
            part = step.predictions.iloc[start : start + every]
            self.record.add(part, step.judged[part_of == i])
            self.last_bar = part["timestamp"].iloc[-1]
            self.bars_done += len(part)
            self.since_point += len(part)
            if self.since_point < every:
                continue
            started = self._point(outbox, None if self.replay else lag)
            started_alarms += started
            if self.retrainer.due(self.last_bar, bool(started)):
                self.retrainer.start(self.last_bar)
                if self.replay:  # replay time is not the clock: wait, and switch at once
                    self.retrainer.wait()
                    self._follow_alias(outbox)
        self._follow_alias(outbox)
        outbox.kick()

    def _log_figure(self, run: StageRun) -> None:
        if not self.points:
            return
        points = pd.DataFrame(self.points).set_index("time")
        title = f"{self.name}: live record ({self.cfg.live.window} window)"
        try:
            run.log_figure(figures.live_figure(points, title), RECORD_FIGURE)
        except Exception as exc:  # the store is down at the very end
            log.warning("live: could not log %s: %s", RECORD_FIGURE, exc)

    def _point(self, outbox: Outbox, lag: float | None = None) -> list[str]:
        """One point of the live metrics, the alarms, the version's live record."""
        if self.last_bar is None:
            return []
        self.since_point = 0
        metrics = self.record.metrics()
        metrics |= {
            "bars_received": float(self.bars_done),
            "bars_missing": float(self.missing),
            "model_version": float(self.engine.models[CHAMPION].version),
            "seconds_per_bar": (
                float(np.mean(self.step_seconds[-50:])) if self.step_seconds else math.nan
            ),
        }
        if lag is not None:
            metrics["lag_seconds"] = lag
        outbox.add_point(metrics, self._step_number(), self._ms())
        started = self._alarm(outbox, self.record.conditions())
        behind = float(live_record.BEHIND_PERSISTENCE in self.alarms.active)
        point = {"time": self.last_bar, **metrics, "alarm_behind_persistence": behind}
        self.points = [*self.points[-(_MAX_POINTS - 1) :], point]
        interval = self.record.difference()
        version = self.engine.models[CHAMPION].version
        outbox.tag_version(version, {
            keys.LIVE_ROWS: str(len(self.record.judged)),
            keys.LIVE_F1: f"{metrics.get('f1_champion_7d', math.nan):.6f}",
            keys.LIVE_VS_PERSISTENCE: "" if interval is None else interval.text(),
        })  # fmt: skip
        return started


def run(
    config: ExperimentConfig,
    source: str,
    output: str,
    config_path: str,
    replay: bool = False,
    start: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
    run_id: str | None = None,
) -> LiveSummary:
    """Follow ``source`` (a folder of kline CSVs or parquet files) with the champion."""
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise StageError(f"live output {folder} is a file: give a folder")
    folder.mkdir(parents=True, exist_ok=True)
    store.check_tracking()
    loop = LiveLoop(config, source, folder, config_path, replay, start, until)
    tracker = Tracker(config.mlflow_experiment, run_id)
    summary = loop.run(tracker, run_id)
    log.info(
        "live: %d bars %s .. %s scored by %s into %s; alarms raised: %s",
        summary.bars, summary.first, summary.last,
        ", ".join(f"v{v}" for v in summary.versions), folder, summary.alarms or "none",
    )  # fmt: skip
    return summary
