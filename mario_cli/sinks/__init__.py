"""Event sinks: where the trainer's events go (files, TensorBoard, the console)."""
