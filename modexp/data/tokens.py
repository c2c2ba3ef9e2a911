"""Token data: a held-out tail for validation and seeded random training windows.

The training batch of step s is a pure function of (seed, s): resuming needs no data
position beyond the step, and a DDP rank takes its slice of the same global batch, so 1 and
N processes see exactly the same data.
"""

from __future__ import annotations

import numpy as np
import torch

from modexp.data.corpus import Source, check_token_ids, resolve_source, token_map, val_tokens


class Shards:
    """Token files read as one 1-D sequence: len, slices and integer-array indexing (what
    the windows need) without copying the files into memory."""

    def __init__(self, maps: list[np.ndarray]):
        self.maps = [m for m in maps if len(m)]
        self.starts = np.cumsum([0] + [len(m) for m in self.maps])

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, idx):
        if isinstance(idx, slice):  # contiguous, step 1: a Shards of the overlapped pieces
            lo, hi, _ = idx.indices(len(self))
            return Shards([m[max(lo - s, 0):max(hi - s, 0)] for m, s in zip(self.maps, self.starts)])
        idx = np.asarray(idx)
        shard = np.searchsorted(self.starts, idx, side="right") - 1
        out = np.empty(idx.shape, dtype=self.maps[0].dtype)
        for k in np.unique(shard):
            hit = shard == k
            out[hit] = self.maps[k][idx[hit] - self.starts[k]]
        return out


def load_tokens(source: Source, files=None):
    """The source's files (default: all) as one 1-D sequence: read-only memory maps for token
    files (so N DDP ranks share the page cache instead of holding N copies), bytes for text."""
    files = source.files if files is None else files
    if source.token_bytes == 1:
        return np.frombuffer(b"".join(f.read_bytes() for f in files), dtype=np.uint8)
    maps = [token_map(f, source.token_bytes) for f in files]
    return maps[0] if len(maps) == 1 else Shards(maps)


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
    """Train/validation windows over one source: its validation files, or else the held-out
    tail val_fraction. `vocab`: the model's vocabulary, which every token id must fit (checked
    here, before training, so a bad file is an input error rather than a crash mid-run)."""

    def __init__(self, source_name: str, seq_len: int, val_fraction: float, vocab: int | None = None):
        self.source = resolve_source(source_name, vocab)
        vocab = vocab or self.source.vocab
        if vocab is not None:
            check_token_ids(self.source, vocab)
        if self.source.val_files:
            self.train = load_tokens(self.source, self.source.train_files)
            self.val = load_tokens(self.source, self.source.val_files)
        else:
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

    def val_batches(self, n_batches: int, batch_size: int,
                    rounds: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Fixed validation windows: the same for every run of an experiment.

        Round 0 is n_batches x batch_size windows evenly spaced over the split; round j shifts
        them by j/rounds of their spacing (wrapping at the end), so the first n_batches of a
        call with more rounds are exactly the windows of a call with one.
        """
        starts = self.val_starts(n_batches * batch_size, rounds)
        return [self._windows(self.val, starts[i * batch_size:(i + 1) * batch_size])
                for i in range(n_batches * rounds)]

    def val_starts(self, n: int, rounds: int = 1) -> torch.Tensor:
        """Start offsets (n * rounds,) of the validation windows, round after round."""
        last = len(self.val) - self.seq_len - 1
        base = torch.linspace(0, last, n)
        shift = last / max(n - 1, 1) / rounds
        return torch.cat([(base + j * shift).long() % (last + 1) for j in range(rounds)])
