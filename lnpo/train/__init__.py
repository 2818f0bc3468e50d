"""Training: pure steps (steps.py), the reference cache, checkpoints, the loop, stage wiring (trainer.py, run.py)."""
