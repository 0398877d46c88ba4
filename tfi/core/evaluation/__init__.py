"""Metrics, reports, intervals over blocks of days and the backtest's windows."""
