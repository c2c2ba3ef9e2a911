"""Data stage: token sources (corpus.py), what the planner asks about a spec's data (facts.py),
a token folder checked against its own records (verify.py), `modexp prepare` (prepare.py,
documents.py, encoders.py, tempdir.py), text <-> token ids for a trained run (codec.py) and
the trainer's token windows (tokens.py). See docs/data.md.

Imports nothing eagerly: `modexp plan` reaches corpus.py and facts.py through this package and
must stay torch-free. Nothing here imports the planner, models, training, runs, analysis or the
CLI (tests/test_data.py).
"""
