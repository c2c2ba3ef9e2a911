"""The model's layers as modules: a hook on every block fires in training, evaluation and
decoding; training compiles to one graph; checkpoints of the previous layout (routers apart
from their blocks) load and resume; RoPE tables are made at build time; and the model files
import neither modexp.kernels nor anything above them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from modexp.models.build import build_model
from modexp.models.decode import generate
from modexp.spec import ModelConfig, ModVariant, VanillaVariant

CFG = ModelConfig(name="t", n_layers=4, d_model=32, n_heads=2)
V = 64
VARIANTS = {"vanilla": VanillaVariant(kind="vanilla"),
            "predictor": ModVariant(kind="mod", capacity=0.25, causal="predictor"),
            "aux_loss": ModVariant(kind="mod", capacity=0.25, causal="aux_loss"),
            "none": ModVariant(kind="mod", capacity=0.25, causal="none"),
            "random": ModVariant(kind="mod", capacity=0.25, router="random")}
ROOT = Path(__file__).resolve().parents[1]


def make(variant, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(CFG, variant, V, **kw)


def tokens(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["vanilla", "predictor", "aux_loss", "random"])
@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("B", [1, 2])
def test_a_forward_hook_on_every_block_fires_in_training_evaluation_and_decoding(name, reference, B):
    """Blocks called as modules everywhere (FSDP's all-gathers and activation checkpointing
    hang on these hooks): a decode step calls every layer once, routed or not."""
    from modexp.models import ops

    net = make(VARIANTS[name], **({"kernels": ops.REFERENCE} if reference else {}))
    calls = {i: 0 for i in range(CFG.n_layers)}
    for i, block in enumerate(net.blocks):
        block.register_forward_hook(lambda m, a, out, i=i: calls.__setitem__(i, calls[i] + 1))
    idx = tokens(B, 12)
    net.train()(idx, idx).loss.backward()
    assert set(calls.values()) == {1}
    with torch.no_grad():
        net.eval()(idx, idx)
        if name != "vanilla":
            net(idx, idx, routing="causal")
    passes = 2 if name == "vanilla" else 3
    assert set(calls.values()) == {passes}
    generate(net, idx[:, :5], 6)  # the prefill, then 5 decode steps
    assert set(calls.values()) == {passes + 6}


@pytest.mark.parametrize("name", ["vanilla", "predictor", "aux_loss", "none", "random"])
def test_training_compiles_to_one_graph_over_micro_batches(name):
    """Nothing mutable appended in the forward (the threshold quantiles come back in its
    output), static shapes, RoPE tables made at build: one graph, no graph break, and no
    recompile over a step's micro-batches and the next steps."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    from modexp.training.calibrate import fold_thresholds

    torch._dynamo.reset()
    counters.clear()
    net = make(VARIANTS[name], seq_len=16).train()
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter)
    for step in range(2):
        quantiles = []
        for micro in range(3):
            idx = tokens(2, 16, seed=3 * step + micro)
            out = compiled(idx, idx)
            (out.loss / 3).backward()
            if out.quantiles is not None:
                quantiles.append(out.quantiles.detach())
        fold_thresholds(net, quantiles)
    assert counter.frame_count == 1, counter.frame_count
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert (len(quantiles) == 3) == (name in ("predictor", "aux_loss"))
    if quantiles:
        assert all(int(d.threshold_steps) == 2 for d in net.tracked())
    torch._dynamo.reset()


def old_layout(state: dict) -> dict:
    """A state dict as the previous release wrote it: each routed layer's router, predictor
    and thresholds under routers.N. (router.weight, predictor.*, threshold, threshold_steps,
    random.state), its block under blocks.N. as now."""
    old = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "blocks" and parts[2] in ("router", "random"):
            k = ".".join(["routers", parts[1], *parts[2:]])
        elif parts[0] == "blocks" and parts[2] == "decision":
            k = ".".join(["routers", parts[1], *parts[3:]])
        old[k] = v
    return old


@pytest.mark.parametrize("variant", [VARIANTS["predictor"], VARIANTS["aux_loss"],
                                     ModVariant(kind="mod", capacity=0.25, router="random")])
def test_checkpoints_of_the_previous_layout_load(variant):
    saved = make(variant, seed=1)
    for d in saved.decisions():
        d.set_threshold(0.7, steps=5)
    old = old_layout(saved.state_dict())
    assert any(k.startswith("routers.1.") for k in old) and not any(".decision." in k for k in old)
    fresh = make(variant, seed=2)
    fresh.load_state_dict(old)  # strict: every key placed, none left over
    new = fresh.state_dict()
    assert new.keys() == saved.state_dict().keys()
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in new.items())


def test_lm_parameters_keep_the_previous_releases_optimiser_order():
    """The LM's AdamW state in a checkpoint is indexed by position: the order is the previous
    layout's named_parameters() (routers after every block), whatever the modules' now."""
    net = make(ModVariant(kind="mod", capacity=0.25, causal="predictor", route_every=2))
    names = {id(p): n for n, p in net.named_parameters()}
    block = ["norm1.weight", "attn.qkv.weight", "attn.proj.weight", "norm2.weight",
             "mlp.fc.weight", "mlp.proj.weight"]
    want = (["embed.weight"] + [f"blocks.{i}.{p}" for i in range(4) for p in block]
            + ["blocks.1.router.weight", "blocks.3.router.weight", "norm.weight", "head.weight"])
    assert [names[id(p)] for p in net.lm_parameters()] == want
    tied = build_model(CFG.model_copy(update={"tie_embeddings": True}), VARIANTS["vanilla"], V)
    assert len(tied.lm_parameters()) == len(list(tied.parameters()))  # the tied head once


def test_a_run_resumes_from_a_checkpoint_of_the_previous_layout(write_spec, tmp_path):
    """Killed at step 8 after a checkpoint at step 5, its checkpoint rewritten in the old key
    layout: the resumed run's rows equal an uninterrupted run's, bit for bit."""
    from conftest import TINY, StopAt

    from modexp.training import checkpoint
    from modexp.runs.metrics import read_metrics
    from modexp.runs.runner import run_sweep

    spec = write_spec(variants={"mod": TINY["variants"]["mod"]})
    run_sweep(spec, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path / "resumed", progress=StopAt(8))
    path = tmp_path / "resumed" / "tiny" / "2e9-xs-mod-s0" / checkpoint.CKPT_FILE
    state, _ = checkpoint.load(path)
    assert state["step"] == 5
    state["model"] = old_layout(state["model"])
    checkpoint.save(state, path)
    run_sweep(spec, tmp_path / "resumed")
    rows = [[{k: v for k, v in r.items() if "time" not in k and "per_s" not in k and k != "mfu"}
             for r in read_metrics(tmp_path / d / "tiny" / "2e9-xs-mod-s0" / "metrics.jsonl")]
            for d in ("straight", "resumed")]
    assert rows[0] == rows[1]


def test_rope_tables_are_made_at_build_and_never_grown_by_a_forward_pass():
    net = make(VARIANTS["aux_loss"], seq_len=24)
    assert net.rotary.max_len == 24
    net(tokens(2, 24))
    with pytest.raises(ValueError, match="seq_len >= 25"):
        net(tokens(2, 25))
    assert net.rotary.max_len == 24
    assert make(VARIANTS["vanilla"]).rotary.max_len == 1024  # unspecified: the old default
    g = generate(net.eval(), tokens(1, 20), 10)  # decoding reserves its own length first
    assert g.tokens.shape == (1, 30) and net.rotary.max_len == 30


def test_bench_runs_generations_past_the_trained_seq_len(write_spec):
    """`modexp bench` on a spec calibrates fresh models on samples as long as a generation
    (prompt + new tokens, here past TINY's seq_len 32): the tables are reserved before it."""
    from modexp.bench import bench

    report = bench(write_spec(), batch_sizes=(1,), prompt_len=30, new_tokens=8, warmup=0,
                   repeats=1, train=False, memory=False, peak=False)
    assert [r.what for r in report.ratios] == ["decode b1"] and report.ratios[0].mod > 0


def imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_models_and_kernels_import_only_downward():
    """The model files reach their kernels only through build.py (the shim); kernels/ knows
    no model (the model is handed in); neither imports training, runs, analysis or the CLI.
    (`modexp sample`, which reads run folders, is runs/sample.py.)"""
    above = ("modexp.training", "modexp.runs", "modexp.analysis", "modexp.cli")
    for path in sorted((ROOT / "modexp" / "models").glob("*.py")):
        found = imports(path)
        assert not any(m.startswith(above) for m in found), path.name
        if path.name != "build.py":
            assert not any(m.startswith("modexp.kernels") for m in found), path.name
    for path in sorted((ROOT / "modexp" / "kernels").glob("*.py")):
        found = imports(path)
        assert not any(m.startswith(above + ("modexp.models",)) for m in found), path.name
