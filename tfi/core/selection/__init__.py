"""Feature selection: LASSO paths over purged walk-forward folds."""
