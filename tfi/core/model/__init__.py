"""LightGBM on the folds and on every training row, and the class decision."""
