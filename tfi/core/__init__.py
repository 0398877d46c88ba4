"""The pure core: config, data, labels, folds, feature selection, LightGBM fits, metrics.

Arrays and DataFrames in, results out. Must not import MLflow, Optuna, or any tfi package
above it (``search``, ``tracking``, ``stages``, ``bench``, ``pipeline``, ``cli``).
"""
