"""scripts/panel.py: bad arguments are one clear line; a comparison refuses other labels and
never costs this run its own table."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pandas as pd
import pytest

from .helpers import ROOT, SMOKE

SCRIPT = ROOT / "scripts" / "panel.py"


def _panel():
    spec = importlib.util.spec_from_file_location("panel", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["panel"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, capsys, monkeypatch, *options: str) -> tuple[int, str]:
    """The script's main in this process (from the project folder, as a user runs it): its
    exit status and what it wrote to stderr."""
    monkeypatch.chdir(ROOT)
    try:
        status = _panel().main(["--output", str(tmp_path / "out"), *options])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    return status, capsys.readouterr().err


@pytest.fixture
def folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("no klines here")
    return {"missing": tmp_path / "missing", "empty": empty, "other": other}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--data", "{missing}"], "is not a folder"),
        (["--data", "{empty}"], "holds no kline files named SYMBOL-1m-YYYY-MM.csv(.gz)"),
        (["--data", "{other}"], "holds no kline files"),
        (["--data", "data/binance", "--cases", "DOGE"], "--cases 'DOGE' matches none of the"),
        (["--data", "data/binance", "--compare", "{missing}"], "no predictions of cases"),
        (["--data", "data/binance", "--set", "nosuch.key=1"], "nosuch: unknown section"),
        (["--data", "data/binance", "--config", str(SMOKE), "--set", "tuning.n_trails=1"],
         "tuning.n_trails: unknown key"),
    ],
)  # fmt: skip
def test_a_panel_that_cannot_run_says_why_in_one_line(
    tmp_path, folders, capsys, monkeypatch, options, message
):
    status, err = _run(tmp_path, capsys, monkeypatch, *(o.format(**folders) for o in options))
    assert status == 2, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "panel.md").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--jobs", "0"], "--jobs: must be 1 or more"), (["--jobs", "-1"], "--jobs: must be 1"),
     (["--n-trials", "0"], "--n-trials: must be 1 or more")],
)  # fmt: skip
def test_bad_counts_are_refused_by_the_parser(tmp_path, capsys, monkeypatch, options, message):
    status, err = _run(tmp_path, capsys, monkeypatch, "--data", "data/binance", *options)
    assert status == 2 and message in err and "Traceback" not in err


def _case_file(folder, name, y, tfi, seed):
    rng = np.random.default_rng(seed)
    stamps = pd.date_range("2024-01-01", periods=len(y), freq="min")
    (folder / "cases").mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"timestamp": stamps, "y": y, "tfi": tfi})
    for model in ("lightgbm_defaults", "persistence", "best_persistence", "majority_class"):
        frame[model] = rng.integers(0, 3, len(y))
    frame.to_parquet(folder / "cases" / f"{name}.parquet")


def test_a_comparison_with_other_labels_is_refused(tmp_path):
    """Issue 37/38: a run with other label quantiles was scored against this run's labels and
    reported "+0.0253, better in 1 of 1"."""
    panel = _panel()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 3 * 1440)
    here, there = tmp_path / "here", tmp_path / "there"
    _case_file(here, "NEAR_2024-01", y, np.where(rng.random(len(y)) < 0.5, y, 1), 1)
    relabelled = np.where(rng.random(len(y)) < 0.2, (y + 1) % 3, y)
    _case_file(there, "NEAR_2024-01", relabelled, relabelled, 2)
    with pytest.raises(panel.PanelError, match="other labels on"):
        panel.compare(["NEAR 2024-01"], here, there)
    # The same labels compare, and say how the two tfi columns differ.
    _case_file(there, "NEAR_2024-01", y, y, 3)
    text, summary = panel.compare(["NEAR 2024-01"], here, there)
    assert summary["difference"] < 0 and "better in 0 of 1" in text


def test_own_table_is_written_before_the_comparison(tmp_path, monkeypatch):
    """Issue 38: a refused --compare left no panel.md or panel.json of this run."""
    panel = _panel()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2 * 1440)
    output, other = tmp_path / "out", tmp_path / "other"
    _case_file(output, "NEAR_2024-01", y, y, 1)
    _case_file(other, "NEAR_2024-01", (y + 1) % 3, y, 2)
    row = {"case": "NEAR 2024-01", "test_rows": len(y), "candidate": "defaults",
           **{m: 0.5 for m in panel.MODELS}}  # fmt: skip
    case = panel.Case("NEAR 2024-01", (), pd.Timestamp("2024-01-01"))
    monkeypatch.setattr(panel, "select_cases", lambda *_: [case])
    monkeypatch.setattr(panel, "ProcessPoolExecutor", _InProcess)
    monkeypatch.setattr(panel, "run_case", lambda case, config, output: row)
    status = panel.main(["--data", str(tmp_path), "--config", str(SMOKE), "--output",
                         str(output), "--compare", str(other)])  # fmt: skip
    assert status == 2
    assert "| NEAR 2024-01 |" in (output / "panel.md").read_text()
    assert "between cases: a new market" in (output / "panel.md").read_text()
    assert json.loads((output / "panel.json").read_text())["cases"] == 1


class _InProcess:
    """The panel's pool, in this process (the cases themselves are stubbed above)."""

    def __init__(self, jobs):
        self.jobs = jobs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, function, *iterables):
        return map(function, *iterables)
