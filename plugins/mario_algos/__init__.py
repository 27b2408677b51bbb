"""Built-in learning algorithms and their return estimators."""
