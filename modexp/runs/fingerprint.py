"""Run fingerprints: everything that changes what a run trains, hashed, so runs never mix.

A fingerprint covers what a run computes: its resolved model and variant, the train settings
that shape the optimisation (lr, schedule, batch_size, betas, weight decay, clipping) and the
evaluation (eval_points, eval_batches), the data settings and the data's content hash (plus
the Python version for builtin:pystdlib, and the sha256 of the tokenizer.json the tokens were
made with), the FLOP convention, the seed and the plan entry.

The data is identified by its content, not by where it lives: a file source's path is left
out (`source_identity`), so a trailing slash, the absolute spelling of the same folder, or a
copy of the corpus elsewhere is the same data, while any change of its bytes (or of its
tokenizer) is a change of data. A builtin source keeps its name (its content is the running
Python's, recorded beside it).
It leaves out how the run is executed or shown, which may change on resume without changing
the numbers it is meant to produce: log_every, checkpoint_every, micro_batch_size (gradient
accumulation over the same global batch), compile, loggers (dashboards mirror metrics.jsonl),
keep (which checkpoints stay on disk), activation_checkpointing (recompute instead of store),
parallel (DDP or FSDP2: the same optimisation, sharded or not), prefetch (the same batches,
made ahead on a thread), the device and the process count.

No torch here: status and analysis read fingerprints from run.json without it.
"""

from __future__ import annotations

import hashlib
import json
import sys

from modexp.data.verify import verified_hashes
from modexp import variants

EXECUTION_ONLY = ("log_every", "checkpoint_every", "micro_batch_size", "compile", "loggers", "keep",
                  "activation_checkpointing", "parallel", "prefetch")
"""train.* fields left out of the fingerprint: they change how a run executes, not its result."""
ANALYSIS_ONLY = ("family",)
"""models[] fields left out of the fingerprint: labels the analysis groups runs by."""
MODEL_EXECUTION_ONLY = ("micro_batch_size",)
"""models[].* fields left out of the fingerprint, for the same reason."""
PLAN_FIELDS = ("budget", "model", "variant", "kind", "seed", "convention", "seq_len", "batch_size",
               "vocab", "flops_per_step", "steps", "total_flops", "warmup_steps", "eval_steps",
               "capacities")
"""The plan entry's fields in the fingerprint: the horizon and cost (others are derived notes)."""
SEED_FIELDS = ("seed",)
"""Fields by which the seeds of one setting differ (same_settings ignores them)."""


def fingerprint_fields(spec: dict, plan: dict, data: dict) -> dict:
    """The fingerprinted settings of one run, from its resolved spec, plan entry and data hash."""
    model = next(m for m in spec["models"] if m["name"] == plan["model"])
    # the family is a label for the analysis (ModelConfig.family): renaming it changes nothing
    # the run computes, so it never refuses a finished run
    model = {k: v for k, v in model.items() if k not in ANALYSIS_ONLY + MODEL_EXECUTION_ONLY}
    train = {k: v for k, v in spec["train"].items() if k not in EXECUTION_ONLY}
    entry = {k: plan.get(k) for k in PLAN_FIELDS}
    variant = spec["variants"][plan["variant"]]
    config = variants.config_class(variant.get("kind"))  # what its spec class says it computes
    if config is not None:
        variant, extra = config.fingerprint_fields(variant, plan)
        entry |= extra
    return {"model": model, "variant": variant, "train": train,
            "data": {**spec["data"], "source": source_identity(spec["data"].get("source")),
                     "sha256": data.get("sha256"), "python": data.get("python"),
                     "tokenizer_sha256": data.get("tokenizer_sha256")},
            "flops": spec["flops"], "seed": plan["seed"], "plan": entry}


def source_identity(source: str | None) -> str | None:
    """data.source as the fingerprint compares it: a builtin's name, else nothing (a file
    source is identified by its content hash, wherever and however its path is written)."""
    return source if isinstance(source, str) and source.startswith("builtin:") else None


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


def data_fingerprint(source) -> dict:
    """What run.json records about a resolved data Source: its size, its content sha256 and its
    tokenizer's, checked against a prepared folder's meta.json first (SourceError on a
    difference; modexp/data/verify.py, which caches the hashes by each file's stat key, so a
    cached source costs a few stat calls).

    builtin:pystdlib also records the Python version: another interpreter has another stdlib.
    """
    hashes = verified_hashes(source)
    out = {"source": source.name, "files": len(source.files), "tokens": source.n_tokens,
           "sha256": hashes["sha256"], "tokenizer": getattr(source, "tokenizer", None),  # sample decodes with it
           "tokenizer_sha256": hashes["tokenizer_sha256"]}
    if source.name.startswith("builtin:"):
        out["python"] = ".".join(map(str, sys.version_info[:2]))
    return out
