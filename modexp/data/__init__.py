"""Data stage: token sources (corpus.py), `modexp prepare` (prepare.py, documents.py), text
<-> token ids (codec.py) and the trainer's token windows (tokens.py).

Imports nothing eagerly: `modexp plan` reaches corpus.py through this package and must stay
torch-free.
"""
