"""Typed run records: a metrics.jsonl row (train or eval), summary.json and run.json.

Every field of the files a run writes is declared once, here, typed and documented where it
is declared; the trainer builds these records and the run files, status, analysis, loggers
and bench read them back through them. A name another module uses as a JSON key or a column
(`"final_eval_loss"`) is taken from the records, `SUMMARY.final_eval_loss`, never re-spelled:
`TRAIN`, `EVAL`, `SUMMARY` and `RUN` hand back a field's name and refuse one not declared.

Versioned: every row, summary and run.json the trainer writes carries `"schema": SCHEMA`.
Readers accept that layout and the previous one (files written before the schema key: no
`schema`, eval rows without routed_frac_causal_pos / pos_bin_starts), which reads as schema 0
and is written back as it was (no key added). Anything else (a future schema, a field of the
wrong type) is a `RecordError`: one line naming the file, the field and what is allowed.
Unknown keys are dropped, not refused: a file with keys no record declares still reads.

Which keys a record writes (`to_dict`): a record read from a file, the keys that file had; one
the trainer built, its layout's (`_written`): a train row and a finished summary write every
field (null where unknown), an eval row its decision fields only where it has a causal pass
(eval_loss_causal set) and routed_frac only where set, a failed summary only state, error
and run_id. JSON keys and values are what the trainer wrote before the records; the key
order is the fields' order. No torch: plots and status read these without importing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

SCHEMA = 1  # the layout version written as "schema"; 0: a file from before the key
SCHEMA_KEY = "schema"
KIND_KEY = "kind"  # a metrics row's "train" | "eval"


class RecordError(ValueError):
    """A run file or row the readers cannot take; the message is one line."""


# ---------------------------------------------------------------- value checks by field
def _num(v: object) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _nums(v: object) -> bool:
    return v is None or (isinstance(v, list) and all(map(_num, v)))


def _nums2(v: object) -> bool:
    return v is None or (isinstance(v, list) and all(map(_nums, v)))


def _text(v: object) -> bool:
    return v is None or isinstance(v, str)


def _obj(v: object) -> bool:
    return isinstance(v, dict)


def _obj_or_null(v: object) -> bool:
    return v is None or isinstance(v, dict)


EXPECTED = {_num: "a number or null", _int: "an integer", _nums: "a list of numbers or null",
            _nums2: "a list of lists of numbers, or null", _text: "a string or null",
            _obj: "a JSON object", _obj_or_null: "a JSON object or null"}


def _f(check, default: object = None, **meta):
    """A record field: its value check (EXPECTED says what it allows) and default."""
    return field(default=default, metadata={"check": check, **meta})


def _present():
    """The keys a record read from a file had (None: built here, so its layout's keys)."""
    return field(default=None, compare=False, repr=False, metadata={"json": False})


class _Record:
    """What every record shares: names, checks, to_dict / from_dict, the schema."""

    kind: ClassVar[str | None] = None  # a metrics row's "kind", None for the other files

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The record's JSON keys, in the order it writes them (schema and kind aside)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("json", True)
                     and f.name != SCHEMA_KEY)

    def _written(self) -> list[str]:
        return list(self.names())

    def to_dict(self) -> dict[str, Any]:
        """The record as its file holds it (lists as lists; NaN stays NaN: files.strict_json
        writes it as null)."""
        keys = self._written() if self.present is None else [
            k for k in self.names() if k in self.present]
        out = {KIND_KEY: self.kind} if self.kind else {}
        out |= {k: getattr(self, k) for k in keys}
        if self.schema:  # a previous-layout record is written back without the key
            out[SCHEMA_KEY] = self.schema
        return out

    @classmethod
    def problems(cls, d: object) -> list[str]:
        """Why `d` is not this record (empty if it is): one phrase per bad field."""
        if not isinstance(d, dict):
            return [f"expected a JSON object, got {type(d).__name__}"]
        out = []
        if SCHEMA_KEY in d and not (_int(d[SCHEMA_KEY]) and d[SCHEMA_KEY] == SCHEMA):
            out.append(f"{SCHEMA_KEY} is {d[SCHEMA_KEY]!r}; allowed: {SCHEMA}, or no {SCHEMA_KEY} "
                       "key (files written before it); was it written by a newer modexp?")
        if cls.kind and d.get(KIND_KEY) != cls.kind:
            out.append(f"{KIND_KEY} is {d.get(KIND_KEY)!r}, expected {cls.kind!r}")
        for f in fields(cls):
            check = f.metadata.get("check")
            if check is None or f.name == SCHEMA_KEY:
                continue
            if f.name in d:
                if not check(d[f.name]):
                    out.append(f"{f.name} is {d[f.name]!r}, expected {EXPECTED[check]}")
            elif f.metadata.get("required"):
                out.append(f"{f.name} is missing, expected {EXPECTED[check]}")
        return out

    @classmethod
    def from_dict(cls, d: object, where: str = "record"):
        """The record of a dict from a file; RecordError (one line, naming `where`) if the
        file's schema or a field's type is not one this reader takes. Unknown keys are
        ignored."""
        bad = cls.problems(d)
        if bad:
            raise RecordError(f"{where}: {bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""))
        names = cls.names()
        vals = {k: d[k] for k in names if k in d}
        return cls(**vals, schema=d.get(SCHEMA_KEY, 0), present=frozenset(vals))


class Names:
    """A record's field names as attributes: `SUMMARY.final_eval_loss` is "final_eval_loss";
    an undeclared name raises AttributeError (a typo fails where it is read, not silently)."""

    def __init__(self, *records: type[_Record]):
        object.__setattr__(self, "_names", frozenset(n for r in records for n in r.names()))

    def __getattr__(self, name: str) -> str:
        if name in self._names:
            return name
        raise AttributeError(f"no record field {name!r}")

    def __iter__(self):
        return iter(sorted(self._names))


# ---------------------------------------------------------------- metrics.jsonl rows
@dataclass(frozen=True)
class TrainRow(_Record):
    """A metrics.jsonl train row: the logged step's losses and stats, and the throughput over
    the steps trained since the previous train row (training steps only)."""

    kind: ClassVar[str] = "train"
    step: int = _f(_int, 0, required=True)  # optimizer steps done
    tokens: int | None = _f(_num)  # step * batch_size * seq_len
    flops: float | None = _f(_num)  # cumulative training FLOPs, analytic: step * flops_per_step
    train_loss: float | None = _f(_num)  # what is backpropagated: lm + aux + predictor terms
    lm_loss: float | None = _f(_num)  # the LM cross-entropy (comparable across variants)
    aux_loss: float | None = _f(_num)  # MoD's router auxiliary loss (null without one)
    predictor_loss: float | None = _f(_num)  # the causal predictor's BCE (null without one)
    lr: float | None = _f(_num)  # the LM's learning rate at this step
    grad_norm: float | None = _f(_num)  # the LM's gradient norm before clipping
    predictor_grad_norm: float | None = _f(_num)  # the predictors' own (null without them)
    routed_frac: list[float] | None = _f(_nums)  # per routed layer: fraction of tokens top-k routed
    wall_time: float | None = _f(_num)  # s since the run started, across resumes
    tokens_per_s: float | None = _f(_num)  # training tokens per second since the last train row
    flops_per_s: float | None = _f(_num)  # training FLOPs per second, same span (mfu.py)
    mfu: float | None = _f(_num)  # flops_per_s over the device's peak (null: peak unknown)
    schema: int = SCHEMA
    present: frozenset[str] | None = _present()


@dataclass(frozen=True)
class EvalRow(_Record):
    """A metrics.jsonl eval row: held-out loss with top-k routing and, for a variant with a
    causal decision, the causal pass (what sampling gets) and the decision's scores against
    top-k membership, with 95% intervals over the held-out sequences (evaluation.seq_interval)."""

    kind: ClassVar[str] = "eval"
    step: int = _f(_int, 0, required=True)  # optimizer steps done
    tokens: int | None = _f(_num)  # step * batch_size * seq_len
    flops: float | None = _f(_num)  # cumulative training FLOPs, analytic
    budget_frac: float | None = _f(_num)  # the nominal fraction k / eval_points of the budget
    eval_loss: float | None = _f(_num)  # mean LM loss with top-k routing
    routed_frac: list[float] | None = _f(_nums)  # per routed layer, top-k pass (routed, no decision)
    predictor_acc: float | None = _f(_num, decision=True)  # decision vs top-k, top-k pass
    predictor_precision: float | None = _f(_num, decision=True)  # same pass
    predictor_recall: float | None = _f(_num, decision=True)  # same pass
    predictor_acc_ci: list[float] | None = _f(_nums, decision=True)  # [lo, hi] of predictor_acc
    eval_sequences: int | None = _f(_num)  # held-out sequences scored (more at the last evaluation)
    threshold: list[float] | None = _f(_nums, decision=True)  # per routed layer, the decision's
    eval_loss_causal: float | None = _f(_num, decision=True)  # mean LM loss, causal routing
    routed_frac_causal: list[float] | None = _f(_nums, decision=True)  # per routed layer, causal pass
    routed_frac_causal_ci: list[list[float] | None] | None = _f(_nums2, decision=True)  # [lo, hi] per layer
    # where the causal decisions route: per routed layer, each position bin's fraction of its
    # tokens routed (evaluation.position_bins); rows written before these two lack them
    routed_frac_causal_pos: list[list[float]] | None = _f(_nums2, decision=True)
    pos_bin_starts: list[int] | None = _f(_nums, decision=True)  # first position of each of min(16, seq_len) bins
    routed_frac_topk: list[float] | None = _f(_nums, decision=True)  # per routed layer, k/T
    predictor_acc_causal: float | None = _f(_num, decision=True)  # decision vs top-k, causal pass
    predictor_precision_causal: float | None = _f(_num, decision=True)  # same pass
    predictor_recall_causal: float | None = _f(_num, decision=True)  # same pass
    predictor_acc_causal_ci: list[float] | None = _f(_nums, decision=True)  # [lo, hi], causal pass
    schema: int = SCHEMA
    present: frozenset[str] | None = _present()

    def _written(self) -> list[str]:
        """Every field but routed_frac (only when routed without a decision) and the decision
        fields (only when the row has a causal pass)."""
        causal = self.eval_loss_causal is not None
        return [f.name for f in fields(self) if f.name in self.names()
                and (causal if f.metadata.get("decision") else
                     f.name != EVAL.routed_frac or self.routed_frac is not None)]


Row = TrainRow | EvalRow
ROWS: dict[str, type[TrainRow] | type[EvalRow]] = {TrainRow.kind: TrainRow, EvalRow.kind: EvalRow}


def row_problems(d: object) -> list[str]:
    """Why a metrics.jsonl row is not a train or eval row (empty if it is)."""
    if not isinstance(d, dict):
        return ["a metrics row must be a JSON object"]
    cls = ROWS.get(d.get(KIND_KEY))
    if cls is None:
        return [f"{KIND_KEY} is {d.get(KIND_KEY)!r}, expected {' or '.join(map(repr, ROWS))}",
                *TrainRow.problems({**d, KIND_KEY: TrainRow.kind})]
    return cls.problems(d)


def row_from_dict(d: object, where: str = "metrics row") -> Row:
    """A metrics.jsonl row as its record; RecordError (one line) if it is neither."""
    bad = row_problems(d)
    if bad:
        raise RecordError(f"{where}: {bad[0]}")
    return ROWS[d[KIND_KEY]].from_dict(d, where)


def as_row(row: Row | dict) -> Row:
    """A row given as a record or as the dict a file holds."""
    return row if isinstance(row, (TrainRow, EvalRow)) else row_from_dict(row)


# ---------------------------------------------------------------- summary.json
FINISHED = "done"  # a summary's state once the run trained to its last step
FAILED = "failed"  # the run raised or diverged (error says why; error.log the traceback)


@dataclass(frozen=True)
class Summary(_Record):
    """summary.json, written at the run's end: done (the last evaluation's figures and the
    run's throughput) or failed (the error)."""

    state: str | None = _f(_text, FINISHED)  # "done" | "failed"
    run_id: str | None = _f(_text)
    error: str | None = _f(_text, done=False)  # failed: exception type and first message line
    step: int | None = _f(_num)  # the last step trained
    flops: float | None = _f(_num)  # its cumulative training FLOPs
    final_eval_loss: float | None = _f(_num)  # the last eval row's eval_loss (top-k routing)
    final_eval_loss_causal: float | None = _f(_num)  # its eval_loss_causal
    predictor_acc: float | None = _f(_num)  # its predictor_acc (top-k pass)
    predictor_acc_causal: float | None = _f(_num)  # the last eval row's, causal pass
    predictor_precision_causal: float | None = _f(_num)
    predictor_recall_causal: float | None = _f(_num)
    predictor_acc_causal_ci: list[float] | None = _f(_nums)
    routed_frac_causal: list[float] | None = _f(_nums)  # per routed layer
    routed_frac_causal_ci: list[list[float] | None] | None = _f(_nums2)
    routed_frac_topk: list[float] | None = _f(_nums)  # per routed layer, k/T
    threshold: list[float] | None = _f(_nums)  # per routed layer, the decision's
    wall_time: float | None = _f(_num)  # s, across resumes, evaluation and checkpoints included
    tokens_per_s: float | None = _f(_num)  # the run's tokens over wall_time
    flops_per_s: float | None = _f(_num)  # over wall_time (mfu.throughput_fields)
    mfu: float | None = _f(_num)
    eval_time: float | None = _f(_num)  # s spent evaluating
    eval_share: float | None = _f(_num)  # eval_time / wall_time
    peak_mem_bytes: int | None = _f(_num)  # CUDA allocator peak of this run, or the process's peak RSS
    peak_mem_kind: str | None = _f(_text)  # "cuda_allocated" | "process_max_rss"
    schema: int = SCHEMA
    present: frozenset[str] | None = _present()

    def _written(self) -> list[str]:
        """Failed: state, error, run_id (in that order, as failures.record_failure wrote them);
        done: run_id first, then every other field but error."""
        if self.state == FAILED:
            return [SUMMARY.state, SUMMARY.error, SUMMARY.run_id]
        return [SUMMARY.run_id, *(f.name for f in fields(self) if f.name in self.names()
                                   and f.metadata.get("done", True) and f.name != SUMMARY.run_id)]

    @classmethod
    def failed(cls, run_id: str | None, error: str) -> Summary:
        return cls(state=FAILED, run_id=run_id, error=error)


# ---------------------------------------------------------------- run.json
@dataclass(frozen=True)
class RunRecord(_Record):
    """run.json, written once before training: what the run is (fingerprint.py says which of
    its settings the fingerprint covers)."""

    plan: dict | None = _f(_obj_or_null)  # the run's plan entry (plan.RunPlan.to_dict)
    spec: dict | None = _f(_obj_or_null)  # the resolved spec it was trained with
    data: dict | None = _f(_obj_or_null)  # the data's size and sha256
    fingerprint: dict | None = _f(_obj_or_null)  # {"sha256", "settings", "fields"}
    schema: int = SCHEMA
    present: frozenset[str] | None = _present()


TRAIN, EVAL, SUMMARY, RUN = Names(TrainRow), Names(EvalRow), Names(Summary), Names(RunRecord)
ROW = Names(TrainRow, EvalRow)  # a name either kind of row may carry
