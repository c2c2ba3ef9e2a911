"""The spec's typed, frozen config classes: every field documented where it is declared and
checked once, here, with the checks that span fields (`_cross_problems`). Unknown keys are
rejected (`extra="forbid"`). No torch import: `modexp plan` must stay fast.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Literal, Union

from pydantic import (Discriminator, Field, PlainValidator, Tag, ValidationInfo, field_validator,
                      model_validator)
from pydantic_core import PydanticCustomError, core_schema

from modexp import variants
from modexp.variants import VariantConfig
from modexp.variants.base import Strict
from modexp.variants.mod import RANDOM_DRAWS, ROUTER_ONLY, ModVariant  # noqa: F401 (the spec's names)
from modexp.variants.vanilla import VanillaVariant  # noqa: F401


SPEC_DIR = "spec_dir"
"""Validation context key: the folder of the spec file, against which data.source resolves."""


class SpecError(Exception):
    """A spec (or other user input) is invalid; `problems` holds one line per bad field."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


_Strict = Strict  # every section: unknown keys refused, frozen (modexp/variants/base.py)

AUTO = "auto"
"""micro_batch_size: auto: the largest divisor of the per-process batch that fits where the
run trains, chosen by `modexp run` before the run starts (modexp/runs/runner.py)."""


def _micro_batch(value):
    """A micro-batch size: a whole number >= 1, `auto`, or null; one line for anything else."""
    if type(value) is float and value.is_integer():  # YAML's 8.0, as pydantic's int took it
        value = int(value)
    if value is None or value == AUTO or (type(value) is int and value >= 1):
        return value
    raise PydanticCustomError("micro_batch", "must be a whole number >= 1 or 'auto', got {got}",
                              {"got": repr(value)})


MicroBatch = Annotated[Union[int, Literal["auto"], None], PlainValidator(_micro_batch)]


def _on_off_auto(value):
    """true, false or `auto`; one line for anything else."""
    if isinstance(value, bool) or value == AUTO:
        return value
    raise PydanticCustomError("on_off_auto", "must be true, false or 'auto', got {got}",
                              {"got": repr(value)})


OnOffAuto = Annotated[Union[bool, Literal["auto"]], PlainValidator(_on_off_auto)]


class DataConfig(_Strict):
    """Where tokens come from and how they are windowed. Declarations only: what the source
    holds (its vocabulary, its token counts) is read by the data stage (modexp/data/facts.py)
    when the spec is planned, never while it is parsed."""

    source: str = "builtin:pystdlib"
    """`builtin:pystdlib` (the Python stdlib's own source, byte tokens), a text file or folder of
    text files (byte tokens), a token folder from `modexp prepare` (vocabulary from its
    meta.json), or a `.bin` file or folder of `.bin` shards (uint16 tokens, uint32 when
    vocab_size > 65536; needs vocab_size). See modexp/data/corpus.py. A relative path is read
    from the spec file's folder, not the current one (`~` is the home folder), and is stored
    absolute in run.json; `modexp plan` prints the path it resolved to."""
    seq_len: int = Field(128, ge=2)
    """Tokens per training sequence (T)."""
    vocab_size: int | None = Field(None, ge=2, le=1 << 32)
    """Vocabulary size; required for `.bin` sources, read from meta.json for a prepared folder
    (given, it must agree), fixed at 256 for byte-level sources. Given, `modexp plan` can plan
    without the data (a corpus not yet copied); `modexp run` needs the data."""
    val_fraction: float = Field(0.05, gt=0, lt=0.5)
    """Share of the corpus held out (the tail, deterministic) for evaluation."""

    @field_validator("source")
    @classmethod
    def _relative_to_the_spec(cls, v: str, info: ValidationInfo) -> str:
        folder = (info.context or {}).get(SPEC_DIR)
        if folder is None or v.startswith("builtin:"):
            return v
        return os.path.abspath(os.path.join(folder, os.path.expanduser(v)))

    @property
    def vocab(self) -> int:
        """The vocabulary size the model is built with (a planned spec carries a prepared
        folder's in vocab_size; modexp/data/facts.py)."""
        return self.vocab_size or 256


class FlopsConfig(_Strict):
    """Which FLOP convention matches budgets to steps (see flops.py)."""

    convention: Literal["matmul", "chinchilla"] = "matmul"


class ModelConfig(_Strict):
    """One size of the model grid; shared by every variant."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.]+$")
    n_layers: int = Field(ge=1)
    d_model: int = Field(ge=2)
    n_heads: int = Field(ge=1)
    d_ff: int | None = Field(None, ge=1)
    """MLP hidden width; default 4*d_model (plain) or the 8/3*d_model multiple of 64 (swiglu)."""
    mlp: Literal["gelu", "swiglu"] = "gelu"
    tie_embeddings: bool = False
    rope_base: float = Field(10000.0, gt=1)
    lr: float | None = Field(None, gt=0)
    """Peak learning rate of this size, overriding train.lr (one lr for all sizes biases the
    isoFLOP curve: smaller models usually want a larger one)."""
    batch_size: int | None = Field(None, ge=1)
    """Global sequences per step for this size, overriding train.batch_size."""
    micro_batch_size: MicroBatch = None
    """Sequences per forward pass for this size, overriding train.micro_batch_size: a 60M
    model fills a GPU at a micro-batch a 2.7B one cannot hold; `auto`: the largest that fits
    (see train.micro_batch_size). Gradient accumulation makes up the same global batch, so
    results do not change (not fingerprinted)."""
    family: str | None = Field(None, pattern=r"^[A-Za-z0-9_.=*+-]+$")
    """The shape family this size belongs to: the analysis fits one isoFLOP parabola per
    family and takes the compute-optimum over families (modexp/analysis/envelope.py).
    Default: one family per depth, named from n_layers ("L2" for 2 layers), so a grid of
    widths at several depths is searched over depth as well as width. Name a family to group
    sizes by another shape rule, e.g. `family: d64xL` on models with d_model = 64 * n_layers.
    A label for the analysis only: it changes nothing a run computes."""

    @property
    def family_name(self) -> str:
        """The family this size is fitted in: `family`, else "L<n_layers>"."""
        return self.family or f"L{self.n_layers}"

    @model_validator(mode="after")
    def _heads_divide_width(self):
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads: must divide d_model ({self.d_model}), got {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("n_heads: d_model / n_heads must be even (RoPE rotates pairs of dims)")
        return self

    @property
    def ffn(self) -> int:
        """The MLP hidden width actually used."""
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "swiglu":  # LLaMA: 2/3 of 4d, rounded up to a multiple of 64
            return 64 * math.ceil(8 * self.d_model / 3 / 64)
        return 4 * self.d_model


class AnyVariant:
    """A `variants` entry: validated, when the spec is, by the spec class of the registry entry
    its `kind` names (modexp/variants), so a variant registered by a test is accepted; errors
    keep their field paths (variants.<name>.<field>)."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source, handler):
        def validate(value, info):
            if isinstance(value, VariantConfig):
                return value
            kind = value.get("kind") if isinstance(value, dict) else None
            config = variants.config_class(kind) if isinstance(kind, str) else None
            if config is None:
                raise PydanticCustomError(
                    "union_tag_invalid" if "kind" in (value if isinstance(value, dict) else {})
                    else "union_tag_not_found", "kind: {kinds}", {"kinds": variants.kinds()})
            return config.model_validate(value, context=info.context)

        dump = core_schema.plain_serializer_function_ser_schema(
            lambda v, info: v.model_dump(mode=info.mode), info_arg=True)
        return core_schema.with_info_plain_validator_function(validate, serialization=dump)


class BudgetGrid(_Strict):
    """A budget with its own grid of sizes (isoFLOP curves span different sizes per budget)."""

    flops: float = Field(gt=0, allow_inf_nan=False)
    """Training FLOPs per run of this budget."""
    models: list[str] = Field(min_length=1)
    """Names of `models` entries trained at this budget."""
    variants: list[str] | None = Field(None, min_length=1)
    """Names of `variants` trained at this budget (default: all), e.g. a control at one budget."""
    variant_families: dict[str, list[str]] | None = None
    """Variant -> the shape families (ModelConfig.family_name: "L8", ...) it is trained on at
    this budget; a variant not named here is trained on every model of the budget. E.g.
    `{random: [L8]}` puts a control in the deepest family only, beside the variants it
    controls, without paying for it at every depth."""


# A mapping is a grid, anything else a number: one error per bad budget, not one per union arm.
Budget = Annotated[Union[Annotated[float, Field(gt=0, allow_inf_nan=False), Tag("number")],
                         Annotated[BudgetGrid, Tag("grid")]],
                   Discriminator(lambda v: "grid" if isinstance(v, (dict, BudgetGrid)) else "number")]


class TrainConfig(_Strict):
    """Optimiser and schedule; every horizon is a fraction of the FLOP-derived step count."""

    batch_size: int = Field(32, ge=1)
    """Global sequences per optimiser step (what the FLOP budget is divided by)."""
    micro_batch_size: MicroBatch = None
    """Sequences per forward pass; gradient accumulation makes up batch_size. Default: all.
    `auto`: the largest divisor of the per-process batch that fits where the run trains, found
    once per run before it starts (the CPU: by the memory estimate against free RAM; CUDA: a
    trial forward + backward, halved on out-of-memory) and recorded in run.json."""
    lr: float = Field(3e-3, gt=0)
    warmup: float = Field(0.02, ge=0, lt=1)
    """Linear warmup, as a fraction of the planned steps."""
    min_lr: float = Field(0.1, ge=0, le=1)
    """Cosine decay ends at min_lr * lr exactly at the last planned step."""
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global grad norm to this; 0 disables clipping."""
    eval_points: int = Field(10, ge=1)
    """Evaluate at k/eval_points of every run's budget, k = 1..eval_points."""
    eval_batches: int = Field(1, ge=1)
    """Validation batches (of batch_size sequences) per evaluation but the last. Default 1: the
    same fixed windows for every run, and evaluation a small share of a run's wall time
    (docs/performance.md gives the quickstart's); summary.json reports the share as eval_share."""
    final_eval_batches: int = Field(4, ge=1)
    """Validation batches at the last evaluation, whose numbers summary.json and the verdict
    use: a multiple of eval_batches, its windows a superset of theirs. Default: the smallest
    multiple >= 4. One batch of 32 sequences measures a causal routed fraction to ~1.5 points
    (a sequence's tokens route alike); four, to under a point."""
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    """Steps between atomic checkpoints (one is also written at every eval point)."""
    keep: str = Field("last", pattern=r"^(last|none|every:[1-9][0-9]*)$")
    """Checkpoints kept on disk. While a run trains there are always two (ckpt.pt and
    ckpt.prev.pt, so a damaged save falls back on the one before); once it is done, `last`
    keeps the final checkpoint only (what sample and bench load), `none` deletes them all,
    `every:N` also keeps the checkpoint of every N-th step (ckpt.step<N>.pt, hard links,
    checksummed in the manifest) from the start. Leaves results unchanged (not fingerprinted)."""
    compile: bool = False
    """torch.compile the model (top-k training path; static shapes)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in backward instead of keeping them
    (torch.utils.checkpoint, non-reentrant, one block at a time: training/parallel.py): every
    block keeps only its input (B, T, d), for about one more forward of compute (~1/3 of a
    step). Same numbers, bit for bit on a CPU (not fingerprinted)."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """How torchrun's processes share the model: `ddp` replicates it (each process holds every
    weight, gradient and AdamW state); `fsdp` shards them over the processes (FSDP2
    fully_shard, one unit per block; checkpoints become the folder ckpt.dcp/: docs/scaling.md)
    for models that do not fit one device. One process: no difference. Same numbers up to
    float reduction order (not fingerprinted)."""
    prefetch: OnOffAuto = "auto"
    """Make the coming steps' batches on a background thread (two steps ahead, pinned memory
    on CUDA): `auto` on CUDA only (on the CPU the thread shares the step's cores:
    docs/scaling.md), true or false to force it. The same batches in the same order (not
    fingerprinted)."""
    loggers: list[Literal["tensorboard", "wandb"]] = []
    """Dashboards fed the same rows as metrics.jsonl (optional extras; see modexp/runs/loggers.py)."""

    @model_validator(mode="before")
    @classmethod
    def _default_final_eval(cls, data):
        eb = data.get("eval_batches", 1) if isinstance(data, dict) else None
        if isinstance(eb, int) and eb >= 1 and data.get("final_eval_batches") is None:
            data = {**data, "final_eval_batches": -(-4 // eb) * eb}  # smallest multiple >= 4
        return data

    @model_validator(mode="after")
    def _final_eval_is_a_superset(self):
        if self.final_eval_batches % self.eval_batches:
            raise ValueError(f"final_eval_batches: must be a multiple of eval_batches "
                             f"({self.eval_batches}), got {self.final_eval_batches}")
        return self

    @model_validator(mode="after")
    def _micro_divides_batch(self):
        mb = self.micro_batch_size
        if isinstance(mb, int) and self.batch_size % mb:
            raise ValueError(f"micro_batch_size: must divide batch_size ({self.batch_size}), got {mb}")
        return self

    @property
    def keep_every(self) -> int | None:
        """N of `keep: every:N`, else None."""
        return int(self.keep.split(":")[1]) if self.keep.startswith("every:") else None


class ExperimentSpec(_Strict):
    """A whole experiment: every budget x model x variant x seed is one run."""

    name: str = Field(max_length=200)
    """Results go to results/<name>/: one folder name (letters, digits, '_', '.', '-'; not
    starting with '.' or '-', so never '..' or a hidden or option-like name)."""
    seeds: list[Annotated[int, Field(ge=0, lt=2**32)]] = Field([0], min_length=1)
    """Each seed fixes init and data order; 0 <= seed < 2**32 (data.batch_seed)."""
    data: DataConfig = DataConfig()
    flops: FlopsConfig = FlopsConfig()
    budgets: list[Budget] = Field(min_length=1)
    """Training FLOPs per run, identical for every variant and size: a number (every model of
    `models`) or `{flops: 1e13, models: [s, m, l, xl]}` (the named models only)."""
    models: list[ModelConfig] = Field(min_length=1)
    variants: dict[str, AnyVariant] = Field(min_length=1)
    """Each a variant of a registry entry, chosen by its `kind` (modexp/variants)."""
    train: TrainConfig = TrainConfig()

    def grids(self) -> list[tuple[float, list[ModelConfig]]]:
        """(budget FLOPs, the models trained at it) per budget, in spec order."""
        by_name = {m.name: m for m in self.models}
        return [(b, list(self.models)) if not isinstance(b, BudgetGrid)
                else (b.flops, [by_name[n] for n in b.models]) for b in self.budgets]

    def variants_at(self, i: int) -> list[str]:
        """Names of the variants trained at budget i, in spec order."""
        names = getattr(self.budgets[i], "variants", None)
        return [v for v in self.variants if names is None or v in names]

    def trains(self, i: int, model: ModelConfig, vname: str) -> bool:
        """Whether budget i trains variant vname on this model (its variant_families)."""
        only = getattr(self.budgets[i], "variant_families", None) or {}
        return vname not in only or model.family_name in only[vname]

    def lr(self, model: ModelConfig) -> float:
        """The model's own lr, else train.lr."""
        return model.lr if model.lr is not None else self.train.lr

    def batch_size(self, model: ModelConfig) -> int:
        """The model's own batch size, else train.batch_size."""
        return model.batch_size if model.batch_size is not None else self.train.batch_size

    def micro_batch_size(self, model: ModelConfig) -> int | str | None:
        """The model's own micro-batch size, else train.micro_batch_size (None: the whole
        per-process batch in one pass; "auto": chosen where the run trains)."""
        return model.micro_batch_size if model.micro_batch_size is not None else self.train.micro_batch_size

    @field_validator("seeds")
    @classmethod
    def _seeds_once(cls, v: list[int]) -> list[int]:
        twice = sorted({s for s in v if v.count(s) > 1})
        if twice:  # the same run id twice: the second would find the first "already done"
            raise ValueError(f"each seed must appear once; {', '.join(map(str, twice))} "
                             f"repeated in {v}")
        return v

    @field_validator("name")
    @classmethod
    def _one_safe_folder(cls, v: str) -> str:
        if not v or v[0] in ".-" or not all(c.isalnum() and c.isascii() or c in "_.-" for c in v):
            raise ValueError(f"{v!r} is not a safe folder name: use letters, digits, '_', '.' and "
                             "'-', not starting with '.' or '-' (no '/', no '..')")
        return v

    @model_validator(mode="after")
    def _cross_checks(self):
        problems = _cross_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _cross_problems(spec: ExperimentSpec) -> list[str]:
    problems = []
    names = [m.name for m in spec.models]
    if len(set(names)) != len(names):
        problems.append(f"models: names must be unique, got {names}")
    for vname, v in spec.variants.items():
        if not _NAME_OK(vname):
            problems.append(f"variants.{vname}: names may use letters, digits, '_' and '.'")
        problems += [f"variants.{vname}.{p}" for m in spec.models for p in v.problems(m)]
    flops = [b if not isinstance(b, BudgetGrid) else b.flops for b in spec.budgets]
    if len(set(flops)) != len(flops):
        problems.append("budgets: each budget must appear once")
    for i, b in enumerate(spec.budgets):
        unknown = [n for n in getattr(b, "models", []) if n not in names]
        if unknown:
            problems.append(f"budgets[{i}].models: unknown model {', '.join(map(repr, unknown))} "
                            f"(allowed: names from models: {', '.join(names)})")
        elif isinstance(b, BudgetGrid) and len(set(b.models)) != len(b.models):
            problems.append(f"budgets[{i}].models: each model must appear once")
        bad = [v for v in getattr(b, "variants", None) or [] if v not in spec.variants]
        if bad:
            problems.append(f"budgets[{i}].variants: unknown variant {', '.join(map(repr, bad))} "
                            f"(allowed: names from variants: {', '.join(spec.variants)})")
        problems += _variant_family_problems(spec, i, b)
    mb = spec.train.micro_batch_size
    for m in spec.models:
        if m.micro_batch_size == AUTO:
            continue
        if m.micro_batch_size is not None:
            if spec.batch_size(m) % m.micro_batch_size:
                problems.append(f"models: {m.name}.micro_batch_size ({m.micro_batch_size}) must "
                                f"divide its batch_size ({spec.batch_size(m)})")
        elif isinstance(mb, int) and m.batch_size is not None and m.batch_size % mb:
            problems.append(f"models: {m.name}.batch_size ({m.batch_size}) must be a multiple of "
                            f"train.micro_batch_size ({mb})")
    return problems


def _variant_family_problems(spec: ExperimentSpec, i: int, b) -> list[str]:
    """budgets[i].variant_families must name variants trained at the budget and families
    among its models, and leave each named variant at least one family."""
    if not isinstance(b, BudgetGrid):
        return []
    only = b.variant_families or {}
    trained = spec.variants_at(i)
    by_name = {m.name: m for m in spec.models}
    families = sorted({by_name[n].family_name for n in b.models if n in by_name})
    problems = []
    for vname, fams in only.items():
        where = f"budgets[{i}].variant_families.{vname}"
        if vname not in trained:
            problems.append(f"{where}: unknown variant {vname!r} (allowed: variants trained at "
                            f"this budget: {', '.join(trained)})")
            continue
        bad = [f for f in fams if f not in families]
        if bad or not fams:
            problems.append(f"{where}: unknown family {', '.join(map(repr, bad)) or '(none given)'} "
                            f"(allowed: families of this budget's models: {', '.join(families)})")
    return problems


def _NAME_OK(s: str) -> bool:
    return bool(s) and all(c.isalnum() or c in "_." for c in s)
