"""Engine pieces shared by recipes: optimizer/schedule, metric loggers, plots, progress display."""
