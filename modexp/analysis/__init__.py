"""Analysis stage: a results folder read into tables (results.py), isoFLOP fits and their
bootstrap intervals (isoflop.py, bootstrap.py), the verdict (verdict.py), terminal tables
(tables.py) and figures (plot.py, plot_isoflop.py, plot_style.py).

Imports nothing eagerly: `modexp plan` prints through tables.py and must stay torch-free (and
free of matplotlib until a figure is drawn).
"""
