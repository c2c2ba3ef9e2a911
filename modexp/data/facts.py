"""What the planner asks the data stage about a spec's `data` section: the vocabulary the model
is built with and the tokens of the training split, read from the source on disk.

These reads used to sit in the spec's validators, so merely parsing a spec touched the disk
(issue 25.6); the spec now only declares, and the checks that need the files live here:
- a prepared folder gives its vocabulary (meta.json); a spec's vocab_size must agree with it;
- .bin files and shard folders need vocab_size; byte-level sources take 256 (or none);
- a source that is not there is an error naming data.source, unless the spec gives
  vocab_size: then the plan is made without the data (`modexp run` still refuses it).
No torch: `modexp plan` reaches this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modexp.data.corpus import (BUILTIN, META_FILE, SourceError, is_prepared, is_token_source,
                                read_meta, resolve_source)
from modexp.spec import ExperimentSpec, SpecError

BYTE_VOCAB = 256


@dataclass(frozen=True)
class DataFacts:
    """A spec's data source as found on disk."""

    source: str  # the source as resolved (an absolute path, or a builtin name)
    kind: str  # builtin | text | prepared | tokens | missing
    vocab: int  # the vocabulary the model is built with
    train_tokens: int | None  # tokens of the training split; None when the source is missing
    missing: str | None = None  # why the source could not be read (kind: missing)

    def note(self) -> str:
        """One line for `modexp plan`: where the data is and what it holds."""
        if self.missing:
            return f"data.source: {self.source} (not there: planned with vocab_size {self.vocab})"
        what = {"builtin": "the Python standard library's source, byte tokens",
                "text": "text, byte tokens", "prepared": "a prepared token folder",
                "tokens": ".bin token files"}[self.kind]
        return (f"data.source: {self.source} ({what}; vocab {self.vocab:,}; "
                f"{self.train_tokens:,} training tokens)")


def describe(spec: ExperimentSpec, where: str = "<spec>") -> DataFacts:
    """The vocabulary and training tokens of a spec's data source; SpecError (one line naming
    data.source or data.vocab_size) when the source and the spec disagree or the source is
    missing without a vocab_size to plan with."""
    cfg = spec.data
    try:
        kind, vocab = _kind_and_vocab(cfg.source, cfg.vocab_size)
    except SourceError as e:
        raise SpecError(where, [str(e)]) from None
    if kind == "missing":
        return DataFacts(cfg.source, kind, vocab, None,
                         missing=f"{cfg.source}: no such file or folder")
    try:
        tokens = resolve_source(cfg.source, vocab).train_tokens(cfg.val_fraction)
    except SourceError as e:
        raise SpecError(where, [f"data.source: {e}"]) from None
    return DataFacts(cfg.source, kind, vocab, tokens)


def _kind_and_vocab(source: str, vocab_size: int | None) -> tuple[str, int]:
    """(kind, vocabulary) of a source, by the rules above; SourceError naming the field."""
    if source.startswith("builtin:"):
        if source != BUILTIN:
            raise SourceError(f"data.source: unknown builtin source {source!r}; allowed: {BUILTIN}")
        kind = "builtin"
    elif not Path(source).exists():
        if vocab_size is None:
            raise SourceError(f"data.source: {source}: no such file or folder (a relative path "
                              "is read from the spec's folder); give data.vocab_size to plan "
                              "without the data")
        return "missing", vocab_size
    elif is_prepared(source):
        try:
            meta_vocab = read_meta(Path(source))["vocab_size"]
        except SourceError as e:
            raise SourceError(f"data.source: {e}") from None
        if vocab_size not in (None, meta_vocab):
            raise SourceError(f"data.vocab_size: {vocab_size} disagrees with {source}/{META_FILE} "
                              f"(vocab_size {meta_vocab}); leave it out or make them agree")
        return "prepared", meta_vocab
    elif is_token_source(source):
        if vocab_size is None:
            raise SourceError("data.vocab_size: required for .bin token files (a prepared "
                              "folder's meta.json gives it)")
        return "tokens", vocab_size
    else:
        kind = "text"
    if vocab_size not in (None, BYTE_VOCAB):
        raise SourceError(f"data.vocab_size: must be {BYTE_VOCAB} (or absent) for byte-level "
                          f"sources, got {vocab_size}")
    return kind, BYTE_VOCAB


def resolved_spec(spec: ExperimentSpec, where: str = "<spec>") -> tuple[ExperimentSpec, DataFacts]:
    """The spec with a prepared folder's vocabulary filled into data.vocab_size (what run.json
    records and the model is built with), and the facts behind it."""
    facts = describe(spec, where)
    if facts.kind != "prepared" or spec.data.vocab_size == facts.vocab:
        return spec, facts
    data = spec.data.model_copy(update={"vocab_size": facts.vocab})
    return spec.model_copy(update={"data": data}), facts
