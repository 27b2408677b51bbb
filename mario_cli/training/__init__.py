"""Training utilities: checkpoints, learning-rate schedules, device and RNG handling."""
