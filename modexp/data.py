"""Token data: a held-out tail for validation and seeded random training windows.

The training batch of step s is a pure function of (seed, s): resuming needs no data
position beyond the step, and a DDP rank takes its slice of the same global batch, so 1 and
N processes see exactly the same data.
"""

from __future__ import annotations

import numpy as np
import torch

from modexp.corpus import Source, resolve_source
from modexp.plan import val_tokens


def load_tokens(source: Source) -> np.ndarray:
    """The whole source as a 1-D array: a read-only memory map for a single uint16 .bin (so N
    DDP ranks share the page cache instead of holding N copies), bytes for text."""
    if source.token_bytes == 2:
        maps = [np.memmap(f, dtype=np.uint16, mode="r") for f in source.files]
        return maps[0] if len(maps) == 1 else np.concatenate(maps)
    return np.frombuffer(source.read_bytes(), dtype=np.uint8)


SEED_LIMIT = 2**32  # seeds and steps each below this: one 32-bit entropy word apiece


def batch_seed(seed: int, step: int) -> np.random.SeedSequence:
    """The random stream of (seed, step)'s training batch: distinct pairs, distinct streams.

    The entropy is the pair itself, one 32-bit word each (range-checked), which SeedSequence
    hashes into PCG64's 128-bit state. Not an integer seed for torch: its CPU generator keeps
    only the low 32 bits of a seed, so any seed*K + step scheme collides there (the old
    seed * 1_000_003 + step already did beyond ~1M steps, before reaching 32 bits).
    """
    if not (0 <= seed < SEED_LIMIT and 0 <= step < SEED_LIMIT):
        raise ValueError(f"seed ({seed}) and step ({step}) must lie in 0..{SEED_LIMIT - 1}")
    return np.random.SeedSequence([seed, step])


class TokenData:
    """Train/validation windows over one source (the tail val_fraction is held out)."""

    def __init__(self, source_name: str, seq_len: int, val_fraction: float):
        self.source = resolve_source(source_name)
        tokens = load_tokens(self.source)
        n_val = val_tokens(len(tokens), val_fraction)
        self.train, self.val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val:]
        self.seq_len = seq_len
        for split, t in (("training", self.train), ("validation", self.val)):
            if len(t) < seq_len + 1:
                raise ValueError(f"data.source {source_name}: the {split} split has {len(t)} "
                                 f"tokens, fewer than seq_len + 1 = {seq_len + 1}")

    def _windows(self, tokens: np.ndarray, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = starts.numpy()[:, None] + np.arange(self.seq_len + 1)  # (B, T+1)
        chunk = torch.from_numpy(tokens[idx].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:]  # inputs, next-token targets

    def train_batch(self, seed: int, step: int, batch_size: int,
                    rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows `rows` of step `step`'s global batch of random windows (seeded by seed, step)."""
        rng = np.random.Generator(np.random.PCG64(batch_seed(seed, step)))
        starts = torch.from_numpy(rng.integers(0, len(self.train) - self.seq_len, batch_size))
        return self._windows(self.train, starts[rows])

    def val_batches(self, n_batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed, evenly spaced validation windows: the same for every run of an experiment."""
        n = n_batches * batch_size
        last = len(self.val) - self.seq_len - 1
        starts = torch.linspace(0, last, n).long()
        return [self._windows(self.val, starts[i * batch_size:(i + 1) * batch_size])
                for i in range(n_batches)]
