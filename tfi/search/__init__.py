"""Hyper-parameter search with Optuna: the objective, pruning, shared studies, trial workers.

Uses Optuna's public API only. Imports ``tfi.core``; must not import MLflow or ``tracking``,
``stages``, ``bench``, ``pipeline`` or ``cli``.
"""
