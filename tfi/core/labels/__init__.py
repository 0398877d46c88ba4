"""Labels without look-ahead: future imbalance, class thresholds, periods and folds."""
