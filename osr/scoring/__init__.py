"""Running a model over whole splits: scores, detector fitting, thresholds, test sets."""
