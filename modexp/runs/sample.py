"""`modexp sample`: continue a prompt with a run's checkpoint, and report how MoD routed it.

Also how models come out of run folders: one run (load_run), or the vanilla and MoD models of
one size from a run, a results folder or a spec (resolve, for `modexp bench`). Decoding itself
(KV caches, causal routing, sampling) lives in modexp/models/decode.py.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from pathlib import Path

import torch

from modexp.models.decode import generate
from modexp.models.routing_check import RoutingCheck, check_routing
from modexp import variants
from modexp.spec import ExperimentSpec, ModelConfig, SpecError
from modexp.variants import BASELINE, TREATMENT, VariantConfig

if TYPE_CHECKING:  # annotations only
    from modexp.models.model import Transformer


@dataclass
class SampleResult:
    """What `modexp sample` prints: the continuation and how the model routed it."""

    run_id: str
    kind: str  # vanilla | mod
    step: int | None  # the checkpoint's training step
    prompt: str
    text: str  # the continuation, decoded by the run's codec (modexp/data/codec.py)
    tokens: list[int]  # the generated token ids
    routed_frac: dict[int, float]  # routed layer -> fraction of decoded tokens routed there
    tokens_per_s: float  # decode steps only
    seconds: float  # prefill + decode
    routing: RoutingCheck | None = None  # MoD: fractions vs capacity, FLOP ratio there
    warnings: list[str] = field(default_factory=list)  # e.g. generation past the trained seq_len


def load_run(run_dir: str | Path, device: str = "cpu"):
    """(model in eval mode, run.json, checkpoint step) from a run folder; SpecError if unusable."""
    from modexp.models.build import build_model
    from modexp.runs.metrics import RUN_FILE, read_run
    from modexp.spec import parse_spec
    from modexp.training.checkpoint import CKPT_FILE, CheckpointError, has_checkpoint, load_for_reading

    run_dir = Path(run_dir)
    if not (run_dir / RUN_FILE).is_file():
        raise SpecError(str(run_dir), [f"not a run folder: no {RUN_FILE} (expected "
                                       "results/<experiment>/<run_id>/)"])
    ckpt = run_dir / CKPT_FILE
    if not has_checkpoint(run_dir):
        raise SpecError(str(run_dir), ["no checkpoint (ckpt.pt or ckpt.dcp/): the run has not trained yet "
                                       "(modexp run SPEC)"])
    record = read_run(run_dir / RUN_FILE)  # records.RunRecord: one line if another schema
    spec, plan, run = parse_spec(record.spec, str(run_dir / RUN_FILE)), record.plan, record.to_dict()
    model_cfg = next(m for m in spec.models if m.name == plan["model"])
    model = build_model(model_cfg, spec.variants[plan["variant"]], plan["vocab"],
                        seq_len=spec.data.seq_len, device=device)
    try:
        state, _ = load_for_reading(run_dir, device)  # the newest checkpoint that verifies
    except CheckpointError as e:
        raise SpecError(str(ckpt), [f"no usable checkpoint: {e}"]) from None
    model.load_state_dict(state["model"])
    return model.eval(), run, state.get("step")


def encode_prompt(text: str, vocab: int, codec) -> list[int]:
    """Prompt text -> ids with the run's codec (bytes, tokenizer, or whitespace-separated ids).

    A byte that is not UTF-8 reaches Python from the command line as a lone surrogate
    (surrogateescape, U+DC80..U+DCFF): a byte-level run takes it back as that very byte, its
    token; a tokenizer takes text only, so there it is refused, with its position.
    """
    bad = next((i for i, c in enumerate(text) if unicodedata.category(c) == "Cs"), None)
    if bad is not None and codec.kind == "bytes":
        try:
            ids = list(text.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # a surrogate no byte stands for (a Python caller's)
            ids = None
    elif bad is not None:
        ids = None
    else:
        ids = codec.encode(text)
    if ids is None:
        raise SpecError("--prompt", [f"--prompt: character {bad} ({escape_controls(text[bad])}) is "
                                     "not text (a byte that is not UTF-8); this run's tokenizer "
                                     "needs UTF-8 text (a byte-level run takes any bytes)"])
    if not ids:
        raise SpecError("--prompt", ["the prompt is empty; sampling needs at least one token"])
    if not all(0 <= i < vocab for i in ids):
        raise SpecError("--prompt", [f"token ids must lie in 0..{vocab - 1}"])
    return ids


def escape_controls(text: str) -> str:
    """Control characters (other than newline and tab) as escapes, e.g. \\x1b: a sampled
    byte must not move the cursor, clear the screen or recolour the terminal; a non-UTF-8
    byte of the prompt (a lone surrogate) as the byte it stands for, \\xff."""
    def show(c: str) -> str:
        if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cs"):
            return c
        if 0xDC80 <= ord(c) <= 0xDCFF:  # surrogateescape's stand-in for one raw byte
            return f"\\x{ord(c) - 0xDC00:02x}"
        return c.encode("unicode_escape").decode("ascii")
    return "".join(map(show, text))


SEED_LIMIT = 2 ** 64  # torch.Generator.manual_seed takes 0..2**64 - 1
TEMPERATURES = (1e-6, 1e6)
"""The positive temperatures allowed (0 is greedy): outside, sampling only degenerates, to
greedy up to float rounding below, to uniform above (the Gumbel noise drowns the logits)."""


def check_sampling(max_new_tokens: int | None, temperature: float, top_k: int | None,
                   seed: int) -> list[str]:
    """One problem per sampling flag out of its range (checked before a model is loaded)."""
    lo, hi = TEMPERATURES
    checks = ((max_new_tokens is None or max_new_tokens >= 1, "--max-new-tokens: must be at least 1"),
              (temperature == 0 or lo <= temperature <= hi,
               f"--temperature: must be 0 (greedy) or between {lo:g} and {hi:g}, got {temperature}"),
              (top_k is None or top_k >= 1, "--top-k: must be at least 1 (a k of the vocabulary "
                                            "size or more samples from all tokens)"),
              (0 <= seed < SEED_LIMIT, f"--seed: must lie in 0..2**64 - 1, got {seed}"))
    return [m for ok, m in checks if not ok]


def check_generation_memory(archs, batch: int, prompt_len: int, new_tokens: int, device: str,
                            flags: tuple[str, str, str] = ("--max-new-tokens", "", "--prompt"),
                            extra: int = 0) -> list[str]:
    """A problem if the generation of any model of `archs` (flops.Arch) cannot fit the free
    memory of `device` (memory.py's estimate; `extra`: bytes the caller holds besides), naming
    the flag to change and its limit: flags = (new tokens, batch size or '', prompt), tried
    in that order."""
    new_flag, batch_flag, prompt_flag = flags
    from modexp.memory import device_available_bytes, generation_memory, largest_fitting, size

    free = device_available_bytes(device)

    def fits(b: int, p: int, n: int) -> bool:
        return all(generation_memory(a, b, p, n).total + extra <= free for a in archs)

    if free is None or fits(batch, prompt_len, new_tokens):
        return []
    need = max((generation_memory(a, batch, prompt_len, new_tokens) for a in archs),
               key=lambda e: e.total)
    what = (f"{batch} x ({prompt_len:,} prompt + {new_tokens:,} new) tokens need about "
            f"{need.summary()}, and {device} has {size(free)} free")
    most = largest_fitting(lambda n: fits(batch, prompt_len, n), 1, new_tokens)
    if most >= 1:
        return [f"{new_flag}: at most {most:,} here; {what}"]
    if batch_flag and batch > 1:
        rows = largest_fitting(lambda b: fits(b, prompt_len, 1), 1, batch)
        if rows >= 1:
            return [f"{batch_flag}: at most {rows:,} here; {what}"]
    prompt = largest_fitting(lambda p: fits(1, p, 1), 1, prompt_len)
    return [f"{prompt_flag}: at most {max(prompt, 0):,} tokens here; {what}"]


def sample_run(run_dir: str | Path, prompt: str, max_new_tokens: int | None = None,
               temperature: float = 0.8, top_k: int | None = None, seed: int = 0,
               device: str = "auto") -> SampleResult:
    """Continue a prompt with a run's checkpoint (causal routing for MoD); text and routing.

    max_new_tokens None: up to the trained seq_len (prompt included). Past it, RoPE positions
    and routing decisions were never trained: generation goes on, with a warning.
    """
    from modexp.device import resolve_device

    device = resolve_device(device)
    bad = check_sampling(max_new_tokens, temperature, top_k, seed)
    if bad:
        raise SpecError("modexp sample", bad)
    model, run, step = load_run(run_dir, device)
    spec, plan = run["spec"], run["plan"]
    if spec["variants"][plan["variant"]].get("causal") == "none":
        raise SpecError(str(run_dir), ["this MoD variant has causal: none, so it cannot route "
                                       "token by token; sampling needs aux_loss or predictor"])
    from modexp.data.codec import run_codec

    codec = run_codec(run)
    ids = encode_prompt(prompt, plan["vocab"], codec)
    seq_len = spec["data"]["seq_len"]
    n = max_new_tokens if max_new_tokens is not None else max(1, seq_len - len(ids))
    from modexp.flops import arch_from_config

    too_big = check_generation_memory([arch_from_config(model.cfg, model.variant, plan["vocab"])],
                                      1, len(ids), n, device)
    if too_big:
        raise SpecError("modexp sample", too_big)
    warnings = []
    if len(ids) + n > seq_len:
        warnings.append(f"prompt ({len(ids)}) + new tokens ({n}) = {len(ids) + n} passes the "
                        f"trained seq_len {seq_len}: positions beyond it (RoPE, routing "
                        "decisions) were never trained")
    g = generate(model, torch.tensor([ids], device=device), n, temperature, top_k, seed)
    new = g.tokens[0, len(ids):].tolist()
    text = codec.decode(new)
    routed_layers = [i for i, _ in model.routed()]
    check = None
    if routed_layers and g.routed_frac():
        check = check_routing(model.cfg, model.variant, plan["vocab"], seq_len, g.routed_frac(),
                              len(ids), g.decode_steps)
    return SampleResult(plan["run_id"], plan["kind"], step, prompt, escape_controls(text), new,
                        dict(zip(routed_layers, g.routed_frac())), g.decode_tokens_per_s,
                        g.prefill_s + g.decode_s, check, warnings)


def print_sample(res: SampleResult, console) -> None:
    """The continuation, then one line of routing statistics (rich console), as text. The
    warnings are the caller's to print, on stderr (`modexp sample` keeps stdout the sample)."""
    from rich.text import Text

    console.print(Text(escape_controls(res.prompt), style="dim") + Text(res.text))
    stats = (f"{res.run_id} (step {res.step}): {len(res.tokens)} tokens, "
             f"{res.tokens_per_s:,.0f} tok/s")
    if res.routing is not None:
        stats += f"; {res.routing.summary()}"
    console.print(Text(stats, style="cyan"), highlight=False)


# ---------------------------------------------------------------- both kinds of one size (bench)
BASE, ROUTED = variants.first(BASELINE).name, variants.first(TREATMENT).name
"""A pair's two sides, named after the registry's first baseline and first treatment entries
("vanilla" and "mod": labels and JSON keys of `modexp bench`)."""
SIDES: dict[str, str] = {BASE: BASELINE, ROUTED: TREATMENT}
"""Each side and the role (modexp/variants) its variant is taken from."""


@dataclass
class Pair:
    """The baseline and treatment models of one size (sides BASE and ROUTED), and where
    their weights come from."""

    spec: ExperimentSpec
    model_cfg: ModelConfig
    variants: dict[str, VariantConfig]  # side (BASE | ROUTED) -> variant config
    nets: dict[str, Transformer]  # side -> model, in eval mode
    weights: dict[str, str]  # side -> "checkpoint <run_id> (step n)" | "fresh init"


def _side(entry_name: str | None, kind: str, router: str | None) -> str:
    """The pair side a run's variant takes: its entry's role's."""
    role = variants.of_run({"entry": entry_name, "kind": kind, "router": router}).role
    return BASE if role == BASELINE else ROUTED


def _variant_name(spec, side: str) -> str:
    """The spec's first variant whose registry entry has the side's role."""
    names = [n for n, v in spec.variants.items() if variants.entry_of(v).role == SIDES[side]]
    if not names:
        raise SpecError(spec.name, [f"variants: no {side} variant to benchmark against"])
    return names[0]


def _largest(spec, name: str | None):
    """The named model size, or the largest (by L * d^2, ~ its non-embedding parameters)."""
    if name is not None:
        found = [m for m in spec.models if m.name == name]
        if not found:
            raise SpecError(spec.name, [f"--model: no size {name!r}; sizes: "
                                        f"{', '.join(m.name for m in spec.models)}"])
        return found[0]
    return max(spec.models, key=lambda m: m.n_layers * m.d_model ** 2)


def resolve(target, model: str | None = None, device: str = "cpu") -> Pair:
    """A run folder, a results folder, a spec file (or spec) -> the pair of models to compare."""
    from modexp.runs.metrics import RUN_FILE, read_json, read_run
    from modexp.runs.runner import PLAN_FILE
    from modexp.training.checkpoint import has_checkpoint
    from modexp.data.facts import resolved_spec
    from modexp.spec import load_spec, parse_spec

    if not isinstance(target, (str, Path)):  # an ExperimentSpec already loaded (scripts)
        return _pair(target, _largest(target, model), {}, {}, device)
    target = Path(target)
    if target.is_file() or target.suffix in (".yaml", ".yml"):
        # the vocabulary a prepared token folder records, as `plan` and `run` resolve it
        spec, _ = resolved_spec(load_spec(target), str(target))
        return _pair(spec, _largest(spec, model), {}, {}, device)
    if (target / RUN_FILE).is_file():  # a run: its size, with its sibling of the other kind
        run = read_run(target / RUN_FILE)
        spec, p = parse_spec(run.spec, str(target / RUN_FILE)), run.plan
        runs = _runs(target.parent, p["budget"], p["seed"])
        side = _side(p.get("entry"), p["kind"], p.get("router"))
        return _pair(spec, _largest(spec, p["model"]), runs, {side: p["variant"]}, device)
    if (target / PLAN_FILE).is_file():  # a results folder: its largest trained budget
        planned = read_json(target / PLAN_FILE)
        spec = parse_spec(planned["spec"], str(target / PLAN_FILE))
        size = _largest(spec, model)
        done = [r["budget"] for r in planned["runs"]
                if r["model"] == size.name and has_checkpoint(target / r["run_id"])]
        runs = _runs(target, max(done), spec.seeds[0]) if done else {}
        return _pair(spec, size, runs, {}, device)
    raise SpecError(str(target), ["expected a run folder (run.json), a results folder "
                                  "(plan.json) or a spec file (YAML)"])


def _runs(exp_dir: Path, budget: float, seed: int) -> dict[tuple[str, str], Path]:
    """(model, variant) -> run folder with a checkpoint, for one budget and seed."""
    from modexp.runs.metrics import RUN_FILE, read_run
    from modexp.training.checkpoint import has_checkpoint

    found = {}
    for run_file in exp_dir.glob(f"*/{RUN_FILE}"):
        p = read_run(run_file).plan
        if p["budget"] == budget and p["seed"] == seed and has_checkpoint(run_file.parent):
            found[(p["model"], p["variant"])] = run_file.parent
    return found


def _pair(spec, size, runs: dict, names: dict, device: str) -> Pair:
    """Both models: from the runs' checkpoints where they exist, else freshly initialised.

    names: side -> variant name (default: the spec's first of each side's role).
    """
    from modexp.models.build import build_model

    names = {k: names.get(k) or _variant_name(spec, k) for k in SIDES}
    configs = {k: spec.variants[n] for k, n in names.items()}
    nets, weights = {}, {}
    for kind in SIDES:
        run_dir = runs.get((size.name, names[kind]))
        if run_dir is not None:
            nets[kind], run, step = load_run(run_dir, device)
            weights[kind] = f"checkpoint {run['plan']['run_id']} (step {step})"
        else:
            torch.manual_seed(0)
            nets[kind] = build_model(size, configs[kind], spec.data.vocab,
                                     seq_len=spec.data.seq_len, device=device).eval()
            weights[kind] = "fresh init"
    return Pair(spec, size, configs, nets, weights)
