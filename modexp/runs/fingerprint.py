"""Run fingerprints: everything that changes what a run trains, hashed, so runs never mix.

A fingerprint covers what a run computes: its resolved model and variant, the train settings
that shape the optimisation (lr, schedule, batch_size, betas, weight decay, clipping) and the
evaluation (eval_points, eval_batches), the data settings and the data's content hash (plus
the Python version for builtin:pystdlib), the FLOP convention, the seed and the plan entry.
It leaves out how the run is executed or shown, which may change on resume without changing
the numbers it is meant to produce: log_every, checkpoint_every, micro_batch_size (gradient
accumulation over the same global batch), compile, loggers (dashboards mirror metrics.jsonl),
the device and the process count.

No torch here: status and analysis read fingerprints from run.json without it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from modexp.cache import read_cache, write_cache
from modexp.spec import ROUTER_ONLY

EXECUTION_ONLY = ("log_every", "checkpoint_every", "micro_batch_size", "compile", "loggers")
"""train.* fields left out of the fingerprint: they change how a run executes, not its result."""
PLAN_FIELDS = ("budget", "model", "variant", "kind", "seed", "convention", "seq_len", "batch_size",
               "vocab", "flops_per_step", "steps", "total_flops", "warmup_steps", "eval_steps",
               "capacities")
"""The plan entry's fields in the fingerprint: the horizon and cost (others are derived notes)."""
SEED_FIELDS = ("seed",)
"""Fields by which the seeds of one setting differ (same_settings ignores them)."""


def fingerprint_fields(spec: dict, plan: dict, data: dict) -> dict:
    """The fingerprinted settings of one run, from its resolved spec, plan entry and data hash."""
    model = next(m for m in spec["models"] if m["name"] == plan["model"])
    train = {k: v for k, v in spec["train"].items() if k not in EXECUTION_ONLY}
    entry = {k: plan.get(k) for k in PLAN_FIELDS}
    variant = spec["variants"][plan["variant"]]
    if variant.get("router") == "random":  # no router: its settings change nothing it computes
        variant = {k: v for k, v in variant.items() if k not in ROUTER_ONLY}
    return {"model": model, "variant": variant, "train": train,
            "data": {**spec["data"], "sha256": data.get("sha256"), "python": data.get("python")},
            "flops": spec["flops"], "seed": plan["seed"], "plan": entry}


def digest(fields: dict, skip: tuple[str, ...] = ()) -> str:
    """sha256 of the canonical JSON of the fields (`skip`: top-level keys left out)."""
    kept = {k: v for k, v in fields.items() if k not in skip}
    if "plan" in kept and skip:
        kept["plan"] = {k: v for k, v in kept["plan"].items() if k not in skip}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(spec: dict, plan: dict, data: dict) -> dict:
    """{"sha256": all fields, "settings": all but the seed, "fields": {...}} for run.json."""
    fields = json.loads(json.dumps(fingerprint_fields(spec, plan, data)))
    return {"sha256": digest(fields), "settings": digest(fields, SEED_FIELDS), "fields": fields}


def of_run_file(run: dict) -> dict:
    """A run.json's fingerprint, rebuilt from its resolved spec, plan entry and data hash.

    The spec is validated again, so a field added to the spec since the run was written takes
    its default (what the older code did) instead of counting as a difference; a spec the
    current schema rejects is used as stored."""
    from modexp.spec import SpecError, parse_spec, spec_to_dict

    try:
        spec = spec_to_dict(parse_spec(run["spec"]))
    except SpecError:
        spec = run["spec"]
    return fingerprint(spec, run["plan"], run.get("data", {}))


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two fingerprint field dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out


def same_settings(a: dict, b: dict) -> bool:
    """True if two runs (their run.json or fingerprint dicts) differ at most in their seed."""
    fa = a if "settings" in a else of_run_file(a)
    fb = b if "settings" in b else of_run_file(b)
    return fa["settings"] == fb["settings"]


# ---------------------------------------------------------------- the data's content hash


HASH_FILE = "data-sha256.json"  # modexp.cache: files (path, size, mtime) -> content sha256


def data_fingerprint(source) -> dict:
    """Size and content sha256 of a resolved data Source, cached by each file's path, size and
    mtime (rehashing the stdlib or a big .bin on every run start would cost seconds).

    builtin:pystdlib also records the Python version: another interpreter has another stdlib.
    """
    stats = [(str(f.resolve()), *_stat(f)) for f in source.files]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()
    known = read_cache(HASH_FILE)
    sha = known.get(key)
    if sha is None:
        h = hashlib.sha256()
        for f in source.files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        sha = h.hexdigest()
        _write_cache({**known, key: sha})
    out = {"source": source.name, "files": len(source.files), "tokens": source.n_tokens, "sha256": sha,
           "tokenizer": getattr(source, "tokenizer", None)}  # sample decodes with it
    if source.name.startswith("builtin:"):
        out["python"] = ".".join(map(str, sys.version_info[:2]))
    return out


def _stat(f: Path) -> tuple[int, int]:
    st = f.stat()
    return st.st_size, st.st_mtime_ns


def _write_cache(obj: dict) -> None:
    """Best effort: a read-only home only costs a rehash next time."""
    try:
        write_cache(HASH_FILE, dict(list(obj.items())[-64:]))  # the 64 newest sources
    except OSError:
        pass
