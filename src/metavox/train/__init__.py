"""Training loop, checkpoints, evaluation and reports."""
