"""Benchmark of the live path: a month replayed, memory over it, and the time one bar takes.

    python scripts/live_benchmark.py --case klines [--output live-bench] [--bars 1000]
    python scripts/live_benchmark.py --case drw [--features 780] [--output live-bench]

Each case makes its own MLflow store in ``--output``, trains a champion with one trial (the
shipped ``binance.yaml`` on the shipped NEAR months, whose test period is October 2023; or
``drw.yaml`` on generated DRW-shaped bars with 785 columns, a month of them after the training
rows), then

1. replays the month after the training rows through ``live`` (steps of
   ``live.replay_bars``), sampling the process's resident memory after every step: the first
   and last day's memory say whether it grows with the days run;
2. replays ``--bars`` bars one at a time (``live.replay_bars: 1``): each is a whole step as in
   live mode, from the bar read to its prediction written (features over the held bars,
   probabilities, decision, labels of earlier bars, the day file written atomically); p50 and
   p99 of those are the latency of a bar, beside the poll interval;
3. appends one line to a growing kline file and times the source's read of it.

Writes ``live_benchmark_<case>.json`` into ``--output``. A benchmark, not a test: rerun it on
the machine you deploy to.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("live-benchmark")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _train(config: str, data: str, folder: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "tfi", "main", "--config", config, "--data", data,
               "--n-trials", "1"]  # fmt: skip
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"training failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def _replay(config_path: str, data: str, output: Path, overrides: dict, bars: int | None):
    from tfi.core.config.experiment import load_config
    from tfi.stages import live
    from tfi.tracking.runs import Tracker

    cfg = load_config(config_path, **overrides)
    output.mkdir(parents=True, exist_ok=True)
    samples: list[tuple[pd.Timestamp, float]] = []

    class Sampled(live.LiveLoop):
        def _step(self, chunk, outbox, started_alarms):  # type: ignore[no-untyped-def]
            super()._step(chunk, outbox, started_alarms)
            samples.append((chunk.index[-1], _rss_mb()))

    loop = Sampled(cfg, data, output, config_path, True, None, None)
    if bars is not None:
        loop.queue = loop.queue.iloc[:bars]
    started = time.perf_counter()
    loop.run(Tracker(cfg.mlflow_experiment), None)
    return time.perf_counter() - started, loop, samples


def _source_read_seconds(folder: Path) -> float:
    """One kline line appended to a growing file, read by the live source."""
    from tfi.core.live.source import KLINES, BarSource

    growing = folder / "growing"
    growing.mkdir(exist_ok=True)
    path = growing / "NEARUSDT-1m-2030-01.csv"
    line = "{t},1.0,1.1,0.9,1.05,10.0,{e},10.5,7,4.0,4.2,0\n"
    start = 1_893_456_000_000  # 2030-01-01
    path.write_text("".join(line.format(t=start + 60_000 * m, e=0) for m in range(1440)))
    source = BarSource(str(growing), KLINES)
    source.read()
    times = []
    for minute in range(1440, 1540):
        with path.open("a") as handle:
            handle.write(line.format(t=start + 60_000 * minute, e=0))
        began = time.perf_counter()
        assert len(source.read().bars) == 1
        times.append(time.perf_counter() - began)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=("klines", "drw"), required=True)
    parser.add_argument("--output", default="live-bench")
    parser.add_argument("--bars", type=int, default=1000, help="bars timed one at a time")
    parser.add_argument("--features", type=int, default=780, help="drw: X columns")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("tfi").setLevel(logging.WARNING)
    folder = Path(args.output).resolve() / args.case
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    os.chdir(folder)

    if args.case == "klines":
        config, data = str(ROOT / "experiments" / "binance.yaml"), str(ROOT / "data" / "binance")
    else:
        from tfi.core.config.experiment import SyntheticSpec
        from tfi.core.data import synthetic

        # Two months of training rows and the month after them, DRW's 785 columns.
        spec = SyntheticSpec(rows=92 * 1440, features=args.features, start="2024-01-01")
        (folder / "bars").mkdir()
        synthetic.write_parquet(spec, folder / "bars" / "bars.parquet")
        config_text = (ROOT / "experiments" / "drw.yaml").read_text()
        (folder / "drw.yaml").write_text(
            config_text.replace('test_start: "2024-01-01"', 'test_start: "2024-03-02"')
        )
        config, data = str(folder / "drw.yaml"), str(folder / "bars")
    log.info("training a champion (%s, 1 trial)", Path(config).name)
    train_seconds = _train(config, data if args.case == "klines" else f"{data}/bars.parquet",
                           folder, env)  # fmt: skip

    log.info("replaying the month after the training rows")
    seconds, loop, samples = _replay(config, data, folder / "month", {}, None)
    days = pd.Series([mb for _, mb in samples], index=[t for t, _ in samples])
    day = max(len(days) // 30, 1)
    first_day, last_day = days.iloc[:day], days.iloc[-day:]
    log.info("timing %d bars one at a time", args.bars)
    _, single, _ = _replay(config, data, folder / "single", {"live.replay_bars": 1}, args.bars)
    per_bar = np.asarray(single.step_seconds)
    result = {
        "case": args.case,
        "columns": len(loop.columns),
        "model_features": len(loop.engine.models["champion"].features),
        "train_seconds_one_trial": round(train_seconds, 1),
        "month_bars": loop.bars_done,
        "month_replay_seconds": round(seconds, 1),
        "rss_mb_first_day": round(float(first_day.max()), 1),
        "rss_mb_last_day": round(float(last_day.max()), 1),
        "rss_mb_max": round(float(days.max()), 1),
        "bar_ms_p50": round(1000 * float(np.percentile(per_bar, 50)), 1),
        "bar_ms_p99": round(1000 * float(np.percentile(per_bar, 99)), 1),
        "bars_timed": len(per_bar),
        "source_read_ms_one_kline_line": round(1000 * _source_read_seconds(folder), 2),
        "cores": os.cpu_count(),
    }
    (folder.parent / f"live_benchmark_{args.case}.json").write_text(json.dumps(result, indent=2))
    log.info("%s", json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
