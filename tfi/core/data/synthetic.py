"""Embedded, deterministic DRW-shaped minute data with a planted order-flow signal.

A persistent latent buy/sell pressure (a fast and a slow AR(1) process; with ``process:
switching`` the fast part is instead a level held for minutes that jumps between four values)
drives the taker buy share of each minute's volume; volume follows an intraday and weekly
cycle. Trades follow the pressure with a delay of a few minutes, while the order-book depth and
the informative features see it at once. Activity comes in regimes lasting days, as in real
markets: each regime has its own volume level, and the busier the regime, the less the flow
imbalance of a minute disperses (many traders' orders average out), so imbalance quantiles
fitted on one regime do not fit the next. The anonymised columns ``X1..Xn`` are of three kinds:
noisy, lagged views of the latent pressure (the *informative* ones, some non-linear), near-
collinear copies of those, and heavy-tailed noise. The ``label`` column imitates the
competition's target: it is built from the *future* latent and must never be used as a feature
(the default data contract excludes it).

Every column is generated from its own seeded random stream, so any subset of columns can be
produced without the others and the same spec always gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.linalg import solve_discrete_are
from scipy.signal import lfilter

from tfi.core.config.experiment import SyntheticSpec

GENERATOR_VERSION = 2
FLOW_COLUMNS = ("bid_qty", "ask_qty", "buy_qty", "sell_qty", "volume")
LABEL_COLUMN = "label"
_BURN_IN = 2_000
_NAN_COLUMNS = 2  # noise columns given a few NaNs, as real feature files have
FLOW_DELAY = 3  # minutes between a change of the latent pressure and the trades it causes
# The latent pressure's parts: their weights and lag-1 autocorrelations (the switching fast
# part, redrawn with probability 1/20 a minute, has the AR part's autocorrelation too).
_FAST_WEIGHT, _SLOW_WEIGHT = 0.9, 0.35
_FAST_PERSISTENCE, _SLOW_PERSISTENCE = 0.95, 0.998


@dataclass(frozen=True)
class Layout:
    """Which X column is what; fixed by the spec's seed."""

    names: tuple[str, ...]
    informative: dict[str, tuple[int, float, float]]  # name -> (lag, noise sd, sign)
    collinear: dict[str, str]  # name -> informative column it copies
    with_nans: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return (*FLOW_COLUMNS, *self.names, LABEL_COLUMN)


def layout(spec: SyntheticSpec) -> Layout:
    rng = np.random.default_rng([spec.seed, 1])
    names = tuple(f"X{i}" for i in range(1, spec.features + 1))
    order = rng.permutation(spec.features)
    informative_idx = order[: spec.informative]
    collinear_idx = order[spec.informative : spec.informative + spec.collinear]
    noise_idx = order[spec.informative + spec.collinear :]
    informative = {
        names[i]: (int(rng.choice([0, 1, 2, 3, 5])), float(rng.uniform(0.8, 2.5)), float(sign))
        for i, sign in zip(
            informative_idx, rng.choice([-1.0, 1.0], len(informative_idx)), strict=True
        )
    }
    sources = list(informative)
    collinear = {names[i]: sources[k % len(sources)] for k, i in enumerate(collinear_idx)}
    with_nans = tuple(names[i] for i in noise_idx[:_NAN_COLUMNS])
    return Layout(names, informative, collinear, with_nans)


def informative_features(spec: SyntheticSpec) -> list[str]:
    """Columns that carry the planted signal: the informative views and their copies."""
    lay = layout(spec)
    return [*lay.informative, *lay.collinear]


def timestamps(spec: SyntheticSpec) -> pd.DatetimeIndex:
    return pd.date_range(spec.start, periods=spec.rows, freq="min", name="timestamp")


def generate(
    spec: SyntheticSpec, columns: Iterable[str] | None = None
) -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    """Timestamps and the requested columns (all by default) as float32 arrays."""
    lay = layout(spec)
    wanted = list(lay.columns if columns is None else columns)
    unknown = sorted(set(wanted) - set(lay.columns))
    if unknown:
        raise KeyError(f"synthetic data has no columns {unknown}")
    latent = _latent(spec)
    flow = _flow(spec, latent)
    out: dict[str, np.ndarray] = {}
    for name in wanted:
        if name in flow:
            out[name] = flow[name]
        elif name == LABEL_COLUMN:
            out[name] = _future_label(spec, latent)
        else:
            out[name] = _feature(spec, lay, latent, name)
    return timestamps(spec), out


def frame(spec: SyntheticSpec, columns: Iterable[str] | None = None) -> pd.DataFrame:
    index, data = generate(spec, columns)
    return pd.DataFrame(data, index=index)


def write_parquet(spec: SyntheticSpec, path: str | Path, row_group_size: int = 65_536) -> Path:
    """Write the data as DRW's train.parquet is laid out: float32 columns, DatetimeIndex."""
    table = pa.Table.from_pandas(frame(spec), preserve_index=True)
    path = Path(path)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def _ar1(rng: np.random.Generator, n: int, phi: float) -> np.ndarray:
    """Stationary AR(1) with unit variance."""
    shocks = rng.standard_normal(n + _BURN_IN)
    return lfilter([np.sqrt(1 - phi**2)], [1.0, -phi], shocks)[_BURN_IN:]


def hidden_state(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """What drives each minute and no column shows exactly: the latent pressure's fast and slow
    parts and the activity regime (for a model that sees them: :mod:`tfi.bench.ceiling`)."""
    fast, slow = _latent_parts(spec)
    return {"latent_fast": fast, "latent_slow": slow, "activity_regime": activity_regimes(spec)}


def _latent_parts(spec: SyntheticSpec) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([spec.seed, 2])
    if spec.process == "switching":
        fast = _switching(np.random.default_rng([spec.seed, 7]), spec.rows)
    else:
        fast = _ar1(rng, spec.rows, _FAST_PERSISTENCE)  # half-life ~14 minutes
    slow = _ar1(rng, spec.rows, _SLOW_PERSISTENCE)  # half-life ~6 hours
    return fast, slow


def _switching(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-variance levels held for 20 minutes on average, then drawn again from four."""
    levels = np.array([-1.5, -0.5, 0.5, 1.5]) / np.sqrt(1.25)
    spell = np.cumsum(rng.random(n) < 1 / 20)
    return levels[rng.integers(0, len(levels), spell[-1] + 1)][spell]


def _latent(spec: SyntheticSpec) -> np.ndarray:
    fast, slow = _latent_parts(spec)
    return _FAST_WEIGHT * fast + _SLOW_WEIGHT * slow


def _flow(spec: SyntheticSpec, latent: np.ndarray) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([spec.seed, 3])
    n = spec.rows
    minute = np.arange(n)
    minute_of_day = minute % 1440
    day_of_week = (pd.Timestamp(spec.start).day_of_week + minute // 1440) % 7
    intraday = np.exp(0.5 * np.cos(2 * np.pi * (minute_of_day - 14 * 60) / 1440))
    weekly = np.where(day_of_week >= 5, 0.7, 1.0)
    activity = np.exp(0.4 * _ar1(rng, n, 0.995))
    regime = activity_regimes(spec)
    volume = 40.0 * regime * intraday * weekly * activity * rng.lognormal(0.0, 0.6, n)
    volume *= 1.0 + 0.3 * np.abs(latent)
    dispersion = 1.2 / regime
    # Trades react to the pressure a few minutes late; the depth (and informative features)
    # see it at once, so they carry signal that the past flow alone (persistence) lacks.
    reacting = _lagged(latent, FLOW_DELAY)
    buy_share = 1.0 / (
        1.0 + np.exp(-(0.5 * spec.signal * reacting + dispersion * rng.standard_normal(n)))
    )
    buy = volume * buy_share
    depth = 20.0 * np.sqrt(intraday)
    bid = depth * np.exp(0.2 * latent + 0.5 * rng.standard_normal(n))
    ask = depth * np.exp(-0.2 * latent + 0.5 * rng.standard_normal(n))
    columns = {"bid_qty": bid, "ask_qty": ask, "buy_qty": buy, "sell_qty": volume - buy}
    columns["volume"] = volume
    return {name: values.astype(np.float32) for name, values in columns.items()}


def activity_regimes(spec: SyntheticSpec) -> np.ndarray:
    """Each minute's regime level: constant for 2 to 8 days at a time, between 1/3 and 3."""
    rng = np.random.default_rng([spec.seed, 6])
    levels = np.empty(spec.rows)
    start = 0
    while start < spec.rows:
        length = int(rng.integers(2 * 1440, 8 * 1440))
        levels[start : start + length] = np.exp(rng.uniform(np.log(1 / 3), np.log(3.0)))
        start += length
    return levels


def _column_rng(spec: SyntheticSpec, name: str) -> np.random.Generator:
    return np.random.default_rng([spec.seed, 4, int(name.removeprefix("X"))])


def _linear_view(
    spec: SyntheticSpec, lay: Layout, latent: np.ndarray, name: str
) -> tuple[np.ndarray, float, float]:
    """An informative column before its skew, scale and offset (its lagged, signed latent with
    noise), and that scale and offset, in the order its stream draws them."""
    lag, noise_sd, sign = lay.informative[name]
    rng = _column_rng(spec, name)
    view = sign * _lagged(latent, lag) + noise_sd * rng.standard_normal(spec.rows)
    return view, float(rng.uniform(0.5, 3.0)), float(rng.normal(0.0, 2.0))


def _lagged(values: np.ndarray, lag: int) -> np.ndarray:
    """``values`` ``lag`` rows later, the first value held over the rows before it."""
    return np.concatenate([np.full(lag, values[0]), values[: len(values) - lag]])


def latent_estimates(spec: SyntheticSpec) -> dict[str, np.ndarray]:
    """What the X columns allow at best: the latent pressure at ``t - m`` for each ``m`` up to
    the trades' delay, and its fast and slow parts at ``t``, estimated from every informative
    column's views up to ``t`` by the steady-state Kalman filter of the generator's own model
    (the parts' persistence and weights, each column's lag and noise, the views as if undone of
    their scale, offset and skew): the best linear estimate there is. This needs the layout,
    which no model is given: a bound for :mod:`tfi.bench.ceiling`, not a feature."""
    lay = layout(spec)
    views = list(lay.informative.items())
    depth = max([FLOW_DELAY, *(lag for _, (lag, _, _) in views)]) + 1
    # The state: the fast part at t, t-1, .. t-depth+1, then the slow part at the same minutes.
    transition, shocks = np.zeros((2 * depth, 2 * depth)), np.zeros((2 * depth, 2 * depth))
    for first, persistence in ((0, _FAST_PERSISTENCE), (depth, _SLOW_PERSISTENCE)):
        transition[first, first] = persistence
        shocks[first, first] = 1 - persistence**2  # unit-variance parts
        for i in range(first + 1, first + depth):
            transition[i, i - 1] = 1.0
    latent = _latent(spec)
    observed = np.zeros((len(views), 2 * depth))
    noise = np.zeros((len(views), len(views)))
    seen = np.empty((spec.rows, len(views)))
    for j, (name, (lag, noise_sd, sign)) in enumerate(views):
        observed[j, [lag, depth + lag]] = _FAST_WEIGHT, _SLOW_WEIGHT
        noise[j, j] = noise_sd**2
        seen[:, j] = sign * _linear_view(spec, lay, latent, name)[0]
    predicted = solve_discrete_are(transition.T, observed.T, shocks, noise)
    gain = predicted @ observed.T @ np.linalg.inv(observed @ predicted @ observed.T + noise)
    carried = (np.eye(2 * depth) - gain @ observed) @ transition
    state, states = np.zeros(2 * depth), np.empty((spec.rows, 2 * depth))
    for t, news in enumerate(seen @ gain.T):
        state = carried @ state + news
        states[t] = state
    out = {
        f"latent_estimate_lag{m}": _FAST_WEIGHT * states[:, m] + _SLOW_WEIGHT * states[:, depth + m]
        for m in range(FLOW_DELAY + 1)
    }
    return out | {"latent_estimate_fast": states[:, 0], "latent_estimate_slow": states[:, depth]}


def _feature(spec: SyntheticSpec, lay: Layout, latent: np.ndarray, name: str) -> np.ndarray:
    if name in lay.collinear:
        source = _feature(spec, lay, latent, lay.collinear[name])
        rng = _column_rng(spec, name)
        scale, offset = rng.uniform(0.5, 2.0), rng.normal(0.0, 1.0)
        jitter = 0.05 * np.nanstd(source) * rng.standard_normal(spec.rows)
        return (scale * source + offset + jitter).astype(np.float32)
    if name in lay.informative:
        view, scale, offset = _linear_view(spec, lay, latent, name)
        if int(name.removeprefix("X")) % 3 == 0:
            view = np.exp(0.6 * view)  # skewed, non-linear view: trees see it, LASSO less so
        return (scale * view + offset).astype(np.float32)
    rng = _column_rng(spec, name)
    values = rng.standard_t(3.0, spec.rows) * rng.uniform(0.2, 5.0) + rng.normal(0.0, 1.0)
    if name in lay.with_nans:
        values[rng.random(spec.rows) < 0.005] = np.nan
    return values.astype(np.float32)


def _future_label(spec: SyntheticSpec, latent: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng([spec.seed, 5])
    horizon = 30
    padded = np.concatenate([latent, np.full(horizon, latent[-1])])
    future_mean = np.convolve(padded, np.ones(horizon) / horizon, mode="valid")[1 : spec.rows + 1]
    return (0.5 * future_mean + rng.standard_normal(spec.rows)).astype(np.float32)
