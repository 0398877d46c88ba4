"""The data contract: load minute bars from parquet (or the embedded generator) and validate them.

Contract:

- a ``timestamp`` column or a DatetimeIndex (stored by pandas as the parquet index); time-zone
  aware stamps are converted to UTC; stamps must be present, parseable, unique and increasing;
- ``buy_qty``, ``sell_qty``, ``volume``: numeric, finite, non-negative, no NaN, and
  ``|buy_qty + sell_qty - volume| <= volume_rtol * volume``;
- every other numeric column (except ``data.exclude``, by default the competition's ``label``)
  is a feature: inf is an error, NaN is allowed and counted, an all-NaN column is dropped and
  reported; non-numeric columns are not features and are reported.

Only the needed columns are read, batch by batch, straight into one float32 array, so memory
stays at the size of the data itself. Every violation raises :class:`~tfi.core.errors.DataError`
with a message that names the file, the column and the first offending rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from tfi.core.config.experiment import SYNTHETIC, DataConfig, SyntheticSpec, keyed
from tfi.core.data import aggregates, bars, klines, synthetic
from tfi.core.data.market import (
    FLOW,
    MarketData,
    assemble_arrays,
    check_timestamps,
    choose,
    derived_features,
    with_aggregates,
)
from tfi.core.data.parquet import load_parquet
from tfi.core.errors import DataError

__all__ = [
    "FLOW",
    "MarketData",
    "data_kind",
    "describe_source",
    "load",
    "source_digest",
    "source_files",
]


def source_digest(config: DataConfig) -> str:
    """Content digest of the configured data: the files' bytes, or the generator's spec."""
    hasher = hashlib.blake2b(digest_size=12)
    if config.source == SYNTHETIC:
        spec = keyed(config.synthetic.model_dump(mode="json"), "data.synthetic")
        hasher.update(json.dumps([synthetic.GENERATOR_VERSION, spec], sort_keys=True).encode())
        return hasher.hexdigest()
    if klines.kline_files(config.source) is not None:  # features computed from them count too
        hasher.update(f"klines|{bars.FEATURES_VERSION}".encode())
    for path in source_files(config):
        try:
            with _existing_file(str(path)).open("rb") as handle:
                while chunk := handle.read(1 << 23):
                    hasher.update(chunk)
        except OSError as exc:
            raise DataError(f"data file {path} cannot be read: {exc.strerror}") from None
    return hasher.hexdigest()


def source_files(config: DataConfig) -> list[Path]:
    """The files the configured data is read from (none for the generator)."""
    if config.source == SYNTHETIC:
        return []
    return klines.kline_files(config.source) or [Path(config.source)]


def data_kind(config: DataConfig) -> str:
    """What the bars are and the features computed from: klines, parquet or synthetic."""
    if config.source == SYNTHETIC:
        return SYNTHETIC
    return "klines" if klines.kline_files(config.source) is not None else "parquet"


def describe_source(config: DataConfig) -> str:
    if config.source == SYNTHETIC:
        spec = config.synthetic
        return f"synthetic(rows={spec.rows}, features={spec.features}, seed={spec.seed})"
    return str(config.source)


def load(
    config: DataConfig,
    features: Sequence[str] | None = None,
    digest: str | None = None,
) -> MarketData:
    """Load and validate the configured data; ``features`` limits the feature columns read
    (aggregates among them are computed from their columns, :mod:`tfi.core.data.aggregates`)."""
    digest = digest or source_digest(config)
    if features is not None and any(aggregates.parse(name) for name in features):
        return with_aggregates(load(config, aggregates.sources(features), digest), features)
    if config.source == SYNTHETIC:
        return _load_synthetic(config, config.synthetic, features, digest)
    files = klines.kline_files(config.source)
    if files is not None:
        return _load_klines(config, files, features, digest)
    return load_parquet(config, _existing_file(config.source), features, digest)


def _existing_file(source: str) -> Path:
    path = Path(source)
    if not path.is_file():
        raise DataError(f"data file {source} does not exist (or is not a file)")
    return path


# --- Binance klines ------------------------------------------------------------------------


def _load_klines(
    config: DataConfig, files: list[Path], wanted: Sequence[str] | None, digest: str
) -> MarketData:
    name = config.source
    stamps, columns = klines.read(files, config.epoch_unit)
    check_timestamps(stamps, name)  # the rolling features need time order
    flow = klines.flow(columns, name)
    features = bars.bar_features(stamps, {**columns, **flow})
    raw = {
        col: "raw kline column: its causal features (tfi.core.data.bars) are used"
        for col in columns
    }
    usable = [col for col in features if col not in config.exclude]
    feature_names, dropped = choose(name, features, usable, wanted, raw)
    return assemble_arrays(
        config, name, digest, stamps, {**flow, **features}, feature_names, dropped, wanted
    )


# --- synthetic -----------------------------------------------------------------------------


def _load_synthetic(
    config: DataConfig, spec: SyntheticSpec, wanted: Sequence[str] | None, digest: str
) -> MarketData:
    name = describe_source(config)
    columns = synthetic.layout(spec).columns
    requested = wanted
    wanted, derived = derived_features(config, name, columns, wanted)
    excluded = {col: "excluded by data.exclude" for col in columns if col in config.exclude}
    usable = [col for col in columns if col not in excluded]
    feature_names, dropped = choose(name, columns, usable, wanted, excluded)
    stamps, data = synthetic.generate(spec, dict.fromkeys([*FLOW, *feature_names]))
    return assemble_arrays(
        config, name, digest, stamps, data, feature_names, dropped, requested, derived
    )
