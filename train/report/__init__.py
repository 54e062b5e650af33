"""twinturbo.train.report: reporting (λ chosen on validation, the statistics, the tables, the figures, the baselines)."""
