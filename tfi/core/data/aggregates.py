"""Causal time aggregates of feature columns: exponentially weighted means over earlier bars.

Where what drives the flow persists over minutes, each minute's columns show it with fresh
noise, and a model that sees one minute cannot average that noise away. The aggregate
``<column>_ewm<span>`` is the column's exponentially weighted mean over the bars at or before
``t`` (``pandas.Series.ewm(span=span, adjust=False)``; a NaN bar adds nothing), so it is known
when bar ``t`` closes. The selection stage adds them for the source columns it keeps
(``selection.aggregate_spans``); they are computed by name wherever features are: training and
CV (:func:`tfi.core.data.sources.load`), scoring, and ``live`` (over the bars it holds).

A bar's aggregate depends on every earlier bar, with weights that fall by ``1 - 2 / (span + 1)``
per bar: after :data:`HISTORY_SPANS` spans the bars before weigh less than 0.04%, which is the
history a bar needs (:func:`history`) before its aggregates are what training computed. After
:data:`EXACT_SPANS` spans they weigh under 1e-17, below float64's resolution: ``live`` computes
a bar's aggregates over that many spans of the bars it holds, not all of them, and gets training's
values to the bit.

Pure: arrays in, float32 arrays out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

HISTORY_SPANS = 4
EXACT_SPANS = 20
_NAME = re.compile(r"(?P<column>.+)_ewm(?P<span>[1-9]\d*)")


def parse(name: str) -> tuple[str, int] | None:
    """The column and span of an aggregate's name; None for any other feature."""
    match = _NAME.fullmatch(name)
    return None if match is None else (match["column"], int(match["span"]))


def names(columns: Iterable[str], spans: Sequence[int]) -> list[str]:
    """The aggregates of ``columns``, span by span within each column."""
    return [f"{column}_ewm{span}" for column in columns for span in spans]


def sources(features: Iterable[str]) -> list[str]:
    """The columns ``features`` are computed from: themselves, an aggregate's column instead
    of the aggregate (in order of first use)."""
    return list(dict.fromkeys(_column(name) for name in features))


def history(name: str) -> pd.Timedelta:
    """The history (in minutes of bars) an aggregate needs; zero for other features."""
    parsed = parse(name)
    return pd.Timedelta(minutes=HISTORY_SPANS * parsed[1]) if parsed else pd.Timedelta(0)


def ewm(values: np.ndarray, span: int) -> np.ndarray:
    """The aggregate of one column, or of each column of a (rows, columns) array."""
    smoothed = pd.DataFrame(values, dtype=np.float64).ewm(span=span, adjust=False).mean()
    return smoothed.to_numpy(np.float32).reshape(values.shape)


def compute(
    columns: Mapping[str, np.ndarray], features: Sequence[str], last: int | None = None
) -> dict[str, np.ndarray]:
    """The aggregates among ``features``, from ``columns`` (their source columns, rows in
    time order); with ``last``, those of the last ``last`` rows only, each from its
    :data:`EXACT_SPANS` spans of rows before them (the same values, at a fraction of the cost
    when many rows are held)."""
    by_span: dict[int, list[tuple[str, str]]] = {}
    for name in features:
        parsed = parse(name)
        if parsed is not None:
            by_span.setdefault(parsed[1], []).append((name, parsed[0]))
    out = {}
    for span, named in by_span.items():
        if last is None:  # a column at a time: at full size a span's columns take 0.2 GB
            out |= {name: ewm(columns[column], span) for name, column in named}
        else:  # a span's columns in one call: pandas' own cost dwarfs a few hundred rows'
            rows = slice(-(last + EXACT_SPANS * span), None)
            tail = ewm(np.column_stack([columns[column][rows] for _, column in named]), span)
            out |= {name: tail[-last:, j] for j, (name, _) in enumerate(named)}
    return out


def _column(name: str) -> str:
    parsed = parse(name)
    return name if parsed is None else parsed[0]
