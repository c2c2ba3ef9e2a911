"""Text <-> token ids for a trained run: UTF-8 bytes, its tokenizer.json, or bare token ids."""

from __future__ import annotations

from pathlib import Path

from modexp.spec import SpecError


class Codec:
    """Encodes prompts and decodes samples the way the run's data was tokenised."""

    def __init__(self, kind: str, tokenizer=None):
        self.kind, self.tok = kind, tokenizer  # kind: bytes | tokenizer | ids

    def encode(self, text: str) -> list[int]:
        """Prompt text -> ids (ids: whitespace-separated integers)."""
        if self.kind == "bytes":
            return list(text.encode("utf-8"))
        if self.kind == "tokenizer":
            return self.tok.encode(text, add_special_tokens=False).ids
        try:
            return [int(t) for t in text.split()]
        except ValueError:
            raise SpecError("--prompt", ["this run's data has no tokenizer (bare token ids): give "
                                         "the prompt as whitespace-separated token ids"]) from None

    def decode(self, ids: list[int]) -> str:
        """Ids -> text (bytes: invalid UTF-8 replaced; ids: space-separated)."""
        if self.kind == "bytes":
            return bytes(ids).decode("utf-8", errors="replace")
        if self.kind == "tokenizer":
            return self.tok.decode(ids, skip_special_tokens=False)
        return " ".join(map(str, ids))


def run_codec(run: dict) -> Codec:
    """The codec of a run (its run.json): the tokenizer its data source recorded, else found in
    the source folder, bytes for text sources, bare ids for token files without a tokenizer."""
    from modexp.data.corpus import is_token_source

    source = run["spec"]["data"]["source"]
    tok = (run.get("data") or {}).get("tokenizer")
    if tok is None and is_token_source(source) and (Path(source) / "tokenizer.json").is_file():
        tok = str(Path(source) / "tokenizer.json")
    if tok == "bytes" or (tok is None and not is_token_source(source)):
        return Codec("bytes")
    if tok is None:
        return Codec("ids")
    if not Path(tok).is_file():
        raise SpecError(str(tok), ["the run's tokenizer is gone (it was recorded in run.json); "
                                   "restore it to sample text"])
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise SpecError(str(tok), ["decoding this run's tokens needs the `data` extra "
                                   "(pip install 'modexp[data]')"]) from None
    return Codec("tokenizer", read_tokenizer(tok, "restore the one the run's data was made with"))


def read_tokenizer(path, hint: str = ""):
    """A tokenizer.json read by the tokenizers library (installed: the caller checks); SpecError
    naming the file, one line, if the library cannot read it (it raises a bare Exception)."""
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:
        raise SpecError(str(path), [f"not a tokenizer.json the tokenizers library can read "
                                    f"({e})" + (f"; {hint}" if hint else "")]) from None
