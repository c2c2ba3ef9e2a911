"""Sweep stage: running a plan's runs (runner.py) in their folders (rundirs.py, fingerprint.py),
what each run writes (metrics.py, failures.py; its checkpoints: training/checkpoint.py), how it
reports (loggers.py, progress.py), `modexp status` (status.py) and `modexp sample` on a run
folder's checkpoint (sample.py).

Imports nothing eagerly: `modexp status` and the analysis read these files without torch.
"""
