"""Text -> token ids for `modexp prepare`: UTF-8 bytes, a tokenizers.Tokenizer, or tiktoken
built from a byte-level BPE's own vocabulary where it gives the tokenizers library's ids.

Special-token text in the inputs is text: a literal `<|endoftext|>` in a document is encoded
as the characters it is made of (tokenizers' `encode_special_tokens`, tiktoken's
`encode_ordinary`), never as the separator, which `modexp prepare` alone puts between
documents. So a corpus about tokenizers cannot cut its own documents apart.

The fast path (the `fast` extra: tiktoken) is taken only for a tokenizer tiktoken can express
exactly (`tiktoken_problem` says why not otherwise): a byte-level BPE (GPT-2 pre-tokenisation,
no normaliser, no prefix space, every byte a token, only special added tokens) whose merges
create their tokens in id order, so merge priority and tiktoken's rank are one order, and
whose tokens each encode to themselves through tokenizers, the one case where tiktoken's
whole-piece shortcut could otherwise disagree. It is then checked where it runs: the first
batch in full and a sample of every later batch are encoded by both (`FastEncoder`); a
difference raises `EncoderMismatch`, and prepare encodes the whole pass again with tokenizers.
"""

from __future__ import annotations

import json

import numpy as np

# GPT-2's pre-tokenisation regex, as tokenizers' ByteLevel(use_regex=True) spells it
BYTE_LEVEL_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SAMPLE_EVERY = 64  # after the first batch, every 64th piece of a batch is encoded by both


class EncoderMismatch(Exception):
    """tiktoken and tokenizers gave different ids for one piece of the corpus."""


class BytesEncoder:
    """UTF-8 bytes as token ids (vocabulary 256, no separator)."""

    name, vocab, sep = "bytes", 256, None

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One uint8 array per text."""
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]


class TokenizersEncoder:
    """A tokenizers.Tokenizer (multi-threaded encode_batch; the GIL is released), special
    tokens in the text encoded as text."""

    name = "tokenizers"

    def __init__(self, tok, sep: int | None, vocab: int):
        self.tok, self.sep, self.vocab = tok, sep, vocab
        tok.encode_special_tokens = True  # `<|endoftext|>` in a document is text, not a separator

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One int array per text."""
        fast = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)
        return [np.asarray(e.ids, dtype=np.int64) for e in fast(texts, add_special_tokens=False)]


class FastEncoder:
    """tiktoken over a byte-level BPE's vocabulary, checked against tokenizers as it encodes:
    every piece of the first batch, then every SAMPLE_EVERY-th piece of each batch."""

    name = "tiktoken"

    def __init__(self, enc, reference: TokenizersEncoder):
        self.enc, self.ref = enc, reference
        self.sep, self.vocab = reference.sep, reference.vocab
        self.batches = self.checked = 0

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One int array per text; EncoderMismatch if a checked piece differs from tokenizers."""
        ids = self.enc.encode_ordinary_batch(texts)
        picks = range(len(texts)) if self.batches == 0 else range(0, len(texts), SAMPLE_EVERY)
        want = self.ref.encode([texts[i] for i in picks])
        for i, w in zip(picks, want):
            if not np.array_equal(w, ids[i]):
                k = next((j for j, (a, b) in enumerate(zip(w, ids[i])) if a != b), min(len(w), len(ids[i])))
                raise EncoderMismatch(f"tiktoken and tokenizers differ at token {k} of a piece "
                                      f"starting {texts[i][:40]!r}")
        self.batches, self.checked = self.batches + 1, self.checked + len(picks)
        return [np.asarray(x, dtype=np.int64) for x in ids]


def byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-in character -> the byte it stands for (ByteLevel's alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def tiktoken_problem(tok) -> str | None:
    """Why tiktoken cannot reproduce this tokenizer's ids (None: it can, by the conditions in
    the module docstring)."""
    cfg = json.loads(tok.to_str())
    model, pre = cfg.get("model") or {}, cfg.get("pre_tokenizer") or {}
    if model.get("type") != "BPE":
        return f"a {model.get('type')} model, not BPE"
    if cfg.get("normalizer") is not None:
        return "it has a normalizer"
    if (pre.get("type"), pre.get("use_regex"), pre.get("add_prefix_space")) != ("ByteLevel", True, False):
        return "its pre-tokenizer is not GPT-2's ByteLevel (regex, no prefix space)"
    if model.get("dropout") or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") \
            or model.get("byte_fallback"):
        return "its BPE uses dropout, subword prefixes/suffixes or byte fallback"
    added = cfg.get("added_tokens") or []
    if not all(a.get("special") for a in added):
        return "it has non-special added tokens (matched inside text)"
    vocab, special = model["vocab"], {a["content"] for a in added}
    chars = byte_decoder()
    if not all(c in vocab for c in chars):
        return "not every byte is a token"
    merges = [m if isinstance(m, list) else m.split(" ", 1) for m in model.get("merges") or []]
    made = [vocab.get(a + b) for a, b in merges]
    if None in made or any(x >= y for x, y in zip(made, made[1:])):
        return "its merges do not create their tokens in id order"
    if set(vocab) - special != set(chars) | {a + b for a, b in merges}:
        return "some tokens are neither bytes nor made by a merge"
    if any(not all(c in chars for c in t) for t in vocab if t not in special):
        return "some tokens are not byte-level strings"
    return _whole_tokens_problem(tok, vocab, special, chars)


def _whole_tokens_problem(tok, vocab: dict, special: set, chars: dict) -> str | None:
    """tiktoken takes a pre-tokenised piece that is a whole token as that token; tokenizers
    merges it from bytes. Where the two could meet (a token whose text is one whole piece),
    tokenizers must give the token itself."""
    import regex

    pat = regex.compile(BYTE_LEVEL_PATTERN)
    texts, ids = [], []
    for t, i in vocab.items():
        if t in special:
            continue
        try:
            text = bytes(chars[c] for c in t).decode("utf-8")
        except UnicodeDecodeError:
            continue  # not text by itself: never a whole piece
        if pat.findall(text) == [text]:
            texts.append(text)
            ids.append(i)
    was = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        got = tok.encode_batch(texts, add_special_tokens=False)
    finally:
        tok.encode_special_tokens = was
    bad = [t for t, i, e in zip(texts, ids, got) if e.ids != [i]]
    return f"{len(bad)} token(s) do not encode to themselves (e.g. {bad[0]!r})" if bad else None


def tiktoken_encoding(tok):
    """A tiktoken.Encoding with the tokenizer's byte-level vocabulary as its ranks."""
    import tiktoken

    cfg = json.loads(tok.to_str())
    special = {a["content"] for a in cfg.get("added_tokens") or []}
    chars = byte_decoder()
    ranks = {bytes(chars[c] for c in t): i for t, i in cfg["model"]["vocab"].items() if t not in special}
    return tiktoken.Encoding("modexp-bpe", pat_str=BYTE_LEVEL_PATTERN, mergeable_ranks=ranks,
                             special_tokens={})


def pick_encoder(tok, sep: int | None, vocab: int, want: str = "auto"):
    """(encoder, why not the fast one or None) for a tokenizer: tiktoken when `want` allows it
    (auto, tiktoken), it is installed and it can express the tokenizer; else tokenizers."""
    ref = TokenizersEncoder(tok, sep, vocab)
    if want == "tokenizers":
        return ref, None
    try:
        import tiktoken  # noqa: F401
    except ImportError:
        return ref, "tiktoken is not installed (pip install 'modexp[fast]')"
    why = tiktoken_problem(tok)
    if why is not None:
        return ref, f"tiktoken cannot express this tokenizer: {why}"
    return FastEncoder(tiktoken_encoding(tok), ref), None
