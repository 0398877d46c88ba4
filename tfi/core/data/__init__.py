"""Market data: sources (parquet, kline CSVs, synthetic), validation, causal bar features."""
