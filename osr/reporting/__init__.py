"""A run's results: metrics.json figures, report.md, plots, run info."""
