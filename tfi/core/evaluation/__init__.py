"""Metrics, reports, block-bootstrap intervals and the backtest's windows."""
