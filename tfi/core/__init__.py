"""The pure core: config, data, labels and folds, feature selection, LightGBM fits, evaluation.

Arrays and DataFrames in, results out. Must not import MLflow, Optuna, or any tfi package
above it (``search``, ``tracking``, ``stages``, ``bench``, ``pipeline``, ``cli``).
"""
