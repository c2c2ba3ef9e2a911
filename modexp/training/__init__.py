"""Training stage: the trainer (train.py), its optimiser (optim.py), MoD threshold calibration
(calibrate.py), its checkpoints (checkpoint.py) and throughput against peak (mfu.py, peak.py).

Imports nothing eagerly: torch loads only with the module that needs it.
"""
