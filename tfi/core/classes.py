"""The one class table: sell, neutral and buy pressure as labels, LightGBM indices and names.

Labels are -1/0/1 (the sign of the coming order-flow imbalance); LightGBM and the metrics use
the indices 0/1/2 (label + 1); every table, metric and output column uses the names in index
order. The serving model (:mod:`tfi.tracking.serving_model`) restates this table on purpose: it
loads without tfi installed.
"""

from __future__ import annotations

import numpy as np

SELL, NEUTRAL, BUY = -1, 0, 1
LABELS = (SELL, NEUTRAL, BUY)  # in LightGBM index order
INDICES = [0, 1, 2]  # LightGBM's classes: label + 1
NAMES = ("sell", "neutral", "buy")
NAME_OF = dict(zip(LABELS, NAMES, strict=True))
DISPLAY = tuple(f"{name} ({label})" for name, label in zip(NAMES, LABELS, strict=True))
PROBABILITY_COLUMNS = tuple(f"p_{name}" for name in NAMES)
COLORS = ("tab:red", "tab:gray", "tab:green")


def lightgbm_classes(target: np.ndarray) -> np.ndarray:
    """-1/0/1 labels as LightGBM's 0/1/2 class indices."""
    return (target + 1).astype(np.int32)


def labels_of(indices: np.ndarray) -> np.ndarray:
    """0/1/2 class indices as -1/0/1 labels."""
    return (indices - 1).astype(np.int8)
