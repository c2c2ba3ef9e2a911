"""Shared test helpers: tiny specs written to disk."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TINY = {
    "name": "tiny",
    "seeds": [0],
    "data": {"source": "builtin:pystdlib", "seq_len": 32},
    "budgets": [2e9],
    "models": [{"name": "xs", "n_layers": 2, "d_model": 32, "n_heads": 2}],
    "variants": {"vanilla": {"kind": "vanilla"},
                 "mod": {"kind": "mod", "capacity": 0.25, "route_every": 2, "causal": "predictor"}},
    "train": {"batch_size": 4, "lr": 3e-3, "eval_points": 2, "eval_batches": 1, "log_every": 2,
              "checkpoint_every": 5},
}


@pytest.fixture
def write_spec(tmp_path: Path):
    """Write a spec dict (TINY, updated by keyword sections) to a YAML file; return its path."""

    def _write(spec: dict | None = None, name: str = "spec.yaml", **sections) -> Path:
        data = dict(TINY if spec is None else spec)
        data.update(sections)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    return _write


class StopAt:
    """A progress UI that simulates a kill (Ctrl-C) at a given step."""

    def __init__(self, step):
        self.at = step

    def __getattr__(self, name):
        return lambda *a, **k: None

    def step(self, step, loss):
        if step == self.at:
            raise KeyboardInterrupt
@pytest.fixture(autouse=True)
def _own_peak_cache(tmp_path_factory, monkeypatch):
    """Tests never read or write the user's cached matmul peak (~/.cache/modexp/peak.json)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
