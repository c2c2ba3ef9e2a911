"""Sweep stage: running a plan's runs (runner.py) in their folders (rundirs.py, fingerprint.py),
what each run writes (metrics.py, checkpoint.py, failures.py), where it runs (device.py), how
it reports (loggers.py, progress.py) and `modexp status` (status.py).

Imports nothing eagerly: `modexp status` and the analysis read these files without torch.
"""
