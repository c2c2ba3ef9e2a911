"""Is modexp GPU-ready? One run on one GPU answers it: a table, then PASS/FAIL per check, exit 1
on any failure (issue 24.7).

    python benchmarks/cuda_smoke.py [--peak-tflops 989] [--out DIR]
    python benchmarks/cuda_smoke.py --cpu-dry-run     # every check's code path, tiny, on CPU

It needs nothing beyond the README's install. Synthetic tokens (uniform ids, vocab 32000) are
written as a bare .bin; the spec generated beside it trains ~124M models (d 768 x 12 layers,
seq 2048, bf16 autocast, torch.compile on, 9 micro-batches per step) through run_sweep, the
function `modexp run` calls, in this process. The checks:

1. runs: vanilla and MoD (12.5% capacity every other block, causal predictor) train to the end
   with every logged loss finite; each run compiles one graph with no graph break (dynamo's
   counters, cleared per run); MoD stopped mid-run (as by a kill) and resumed ends at the
   final eval loss of the uninterrupted run within bf16 tolerance (2% relative; CPU: 1e-6).
2. throughput: tokens/s and MFU of Trainer.train_step (accumulation, clipping, thresholds
   folded, AdamW) eager and compiled, vanilla at seq 1024 and 2048 and MoD at 2048; vanilla
   compiled at seq 1024 must reach 40% MFU (the issue's target, nanoGPT-class); MoD's compiled
   step must take at most 0.85x vanilla's and at most 1.1x its FLOP share of it.
3. host syncs per step: torch.cuda.set_sync_debug_mode("warn") over compiled steps of both
   (CPU: Tensor.item/.tolist/.cpu/bool/int/float calls counted): none allowed.
4. TF32 on for fp32 matmuls after the trainer's setup (CUDA only).
5. SDPA: a training forward and backward of each model with only the flash backend allowed.
6. peak memory of one training step at 1.3B (d 2048 x 24) and 2.7B (d 2560 x 32), micro-batch
   1 at seq 2048, eager: the allocator's peak against modexp/memory.py's estimate, which must
   bound it and fit the device; and 2.7B at the paper spec's micro-batch 8 with activation
   checkpointing (train.activation_checkpointing), which must fit 80 GB (the H100's memory)
   and stay under its estimate.
7. DDP: where >= 2 GPUs are visible (dry run: 2 gloo processes), the same bare steps under
   DistributedDataParallel leave every rank's parameters equal to rank 0's.

Budget on one H200 by design (not measured): phase 1 about 2 min (two cold Inductor compiles
of ~40 s, 30-50 steps each, the resumed run's compile from the FX graph cache), phase 2 about
1.5 min (the seq-2048 graphs come from the cache, one cold compile at seq 1024, 5 warm-up and
10 timed steps per setting), phases 3-6 under a minute; about 5 minutes in all. The dry run
uses dynamo's "eager" backend (tracing, graphs and breaks counted, no Inductor) on a 2-layer
model: a minute or two on a CPU core, and it judges no speed. Nothing in modexp imports this.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from modexp import flops, memory  # noqa: E402
from modexp.models.build import build_model  # noqa: E402
from modexp.runs import runner  # noqa: E402
from modexp.training.checkpoint import CKPT_FILE  # noqa: E402
from modexp.runs.metrics import read_json, read_metrics  # noqa: E402
from modexp.spec import ModelConfig, ModVariant, TrainConfig, VanillaVariant  # noqa: E402
from modexp.training import parallel, train as T  # noqa: E402
from modexp.training.optim import make_optimizers  # noqa: E402

MOD = {"kind": "mod", "capacity": 0.125, "route_every": 2, "causal": "predictor"}
VARIANTS = {"vanilla": VanillaVariant(kind="vanilla"), "mod": ModVariant(**MOD)}
SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__")


class Setup:
    """Sizes of one smoke run: the issue's on a GPU, a tiny model's in the dry run."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.seq, self.vocab = (64, 256) if dry else (2048, 32000)
        self.model = (dict(name="tiny", n_layers=2, d_model=64, n_heads=2) if dry else
                      dict(name="gpt124m", n_layers=12, d_model=768, n_heads=12))
        self.batch, self.micro = (9, 1) if dry else (18, 2)  # 9 micro-batches per step
        self.steps = 6 if dry else 30  # vanilla's; MoD's steps cost less, so it takes more
        self.warmup, self.repeats = (1, 2) if dry else (5, 10)
        self.big = ([dict(name="1.3b", n_layers=2, d_model=32, n_heads=2),
                     dict(name="2.7b", n_layers=3, d_model=48, n_heads=2)] if dry else
                    [dict(name="1.3b", n_layers=24, d_model=2048, n_heads=16),
                     dict(name="2.7b", n_layers=32, d_model=2560, n_heads=32)])


def write_tokens(folder: Path, setup: Setup) -> Path:
    """Uniform random token ids as a bare uint16 .bin (enough for every window drawn)."""
    n = max(2_000_000, 40 * setup.batch * (setup.seq + 1)) if not setup.dry else 200_000
    path = folder / "tokens.bin"
    np.random.default_rng(0).integers(0, setup.vocab, n, dtype=np.uint16).tofile(path)
    return path


def write_spec(folder: Path, setup: Setup, tokens: Path, seq: int, compile_: bool) -> Path:
    """A one-budget spec for vanilla and MoD at `seq`, its budget setup.steps vanilla steps."""
    model = ModelConfig(**setup.model)
    per_step = flops.train_flops(flops.arch_from_config(model, VARIANTS["vanilla"], setup.vocab), seq)
    spec = {"name": f"smoke{seq}", "seeds": [0],
            "data": {"source": str(tokens), "seq_len": seq, "vocab_size": setup.vocab},
            "budgets": [float(f"{per_step * setup.batch * setup.steps:.6g}")],
            "models": [setup.model], "variants": {"vanilla": {"kind": "vanilla"}, "mod": MOD},
            "train": {"batch_size": setup.batch, "micro_batch_size": setup.micro, "eval_points": 2,
                      "eval_batches": 1, "final_eval_batches": 1, "log_every": 5,
                      "checkpoint_every": 10, "compile": compile_, "warmup": 0.1}}
    path = folder / f"smoke{seq}{'' if compile_ else '-eager'}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


class StopAt(runner._QuietProgress):
    """The silent progress UI, interrupting the run at one step (a kill, as Ctrl-C)."""

    def __init__(self, at: int):
        self.at = at

    def step(self, step, loss):
        if step == self.at:
            raise KeyboardInterrupt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- 1. runs through run_sweep


def phase_runs(spec: Path, results: Path, setup: Setup) -> tuple[list, list]:
    """Train both runs, then MoD again, stopped and resumed; (table rows, checks)."""
    from torch._dynamo.utils import counters

    rows, checks, finals = [], [], {}
    plan = runner.prepare(spec, results).plan
    for run in plan.runs:
        counters.clear()
        t0 = time.time()
        report = runner.run_sweep(spec, results, only=[run.run_id])
        secs = time.time() - t0
        run_dir = results / spec.stem / run.run_id
        summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {}
        losses = [r["train_loss"] for r in read_metrics(run_dir / "metrics.jsonl") if r.get("kind") == "train"]
        graphs = counters["stats"]["unique_graphs"]
        breaks = sum(counters["graph_break"].values())
        finals[run.variant] = summary.get("final_eval_loss")
        rows.append((f"run {run.variant} (compiled, {run.steps} steps)", f"{secs:.0f} s",
                     f"final eval {summary.get('final_eval_loss', float('nan')):.4f}",
                     f"{graphs} graph(s), {breaks} break(s)"))
        checks.append((report.outcomes.get(run.run_id) == "done" and losses
                       and all(math.isfinite(v) for v in losses),
                       f"{run.variant}: the run finished, its {len(losses)} logged losses finite"))
        checks.append((graphs == 1 and breaks == 0,
                       f"{run.variant}: one compiled graph, no graph break ({graphs}, {breaks})"))
    mod = next(r for r in plan.runs if r.variant == "mod")
    resumed = results.with_name(results.name + "-resumed")
    stop = max(2, mod.steps // 2)
    try:
        runner.run_sweep(spec, resumed, only=[mod.run_id], progress=StopAt(stop))
    except KeyboardInterrupt:
        pass
    runner.run_sweep(spec, resumed, only=[mod.run_id])
    got = read_json(resumed / spec.stem / mod.run_id / "summary.json").get("final_eval_loss")
    want, tol = finals.get("mod"), 1e-6 if setup.dry else 2e-2
    ok = got is not None and want is not None and abs(got - want) <= tol * abs(want)
    checks.append((ok, f"mod stopped at step {stop} and resumed: final eval loss {got} against "
                       f"{want} uninterrupted (tolerance {tol:g} relative)"))
    return rows, checks


# ---------------------------------------------------------------- 2-3. throughput, syncs


def trainer_for(spec: Path, results: Path, variant: str, compile_: bool, ctx) -> T.Trainer:
    """The Trainer run_sweep builds for a run of the spec, fresh, compiled or not."""
    p = runner.prepare(spec, results)
    run = next(r for r in p.plan.runs if r.variant == variant)
    cfg = next(m for m in p.spec.models if m.name == run.model)
    torch._dynamo.reset()
    torch.manual_seed(run.seed)
    model = build_model(cfg, p.spec.variants[variant], run.vocab, seq_len=run.seq_len, device=ctx.device)
    train = p.spec.train.model_copy(update={"compile": compile_})
    folder = results / "throughput" / f"{variant}-{compile_}"
    folder.mkdir(parents=True, exist_ok=True)
    return T.Trainer(model, run, train, p.data, runner._NullLogger(), folder / CKPT_FILE, ctx)


def time_steps(trainer: T.Trainer, setup: Setup) -> float:
    """Median seconds of a train_step after the warm-up steps (compilation among them)."""
    dev = trainer.ctx.device
    for _ in range(setup.warmup):
        trainer.train_step()
    times = []
    for _ in range(setup.repeats):
        _sync(dev)
        t0 = time.perf_counter()
        trainer.train_step()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_syncs(trainer: T.Trainer, steps: int) -> int:
    """Host syncs in `steps` train_steps: CUDA's sync debug warnings, or on CPU the Tensor
    reads that would be one (the data loader's host arrays excepted)."""
    if trainer.ctx.device.type == "cuda":
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    trainer.train_step()
                torch.cuda.synchronize()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in seen)
    count, real = [0], {n: getattr(torch.Tensor, n) for n in SYNCS}

    def counting(name):
        def wrapper(self, *a, **k):
            if not sys._getframe(1).f_code.co_filename.endswith("modexp/data/tokens.py"):
                count[0] += 1
            return real[name](self, *a, **k)
        return wrapper

    try:
        for n in SYNCS:
            setattr(torch.Tensor, n, counting(n))
        for _ in range(steps):
            trainer.train_step()
    finally:
        for n, f in real.items():
            setattr(torch.Tensor, n, f)
    return count[0]


def phase_throughput(specs: dict, results: Path, setup: Setup, ctx, peak: float | None):
    """Eager and compiled steps at each seq; (rows, checks)."""
    rows, checks, step = [], [], {}
    for seq, variant in [(1024, "vanilla"), (setup.seq, "vanilla"), (setup.seq, "mod")]:
        seq = seq if not setup.dry else (setup.seq // 2 if seq == 1024 else setup.seq)
        for compile_ in (False, True):
            trainer = trainer_for(specs[seq], results, variant, compile_, ctx)
            secs = time_steps(trainer, setup)
            step[(seq, variant, compile_)] = secs
            per_step = trainer.plan.flops_per_step
            tok_s = trainer.plan.batch_size * trainer.plan.seq_len / secs
            util = per_step / secs / peak if peak else None
            rows.append((f"{variant} compile={'on' if compile_ else 'off'} seq {seq}", f"{1e3 * secs:.0f} ms/step",
                         f"{tok_s:,.0f} tok/s", "MFU " + (f"{100 * util:.1f}%" if util is not None else "n/a")))
            if compile_ and seq == setup.seq:
                syncs = count_syncs(trainer, 3)
                checks.append((syncs == 0, f"{variant} seq {seq} compiled: {syncs / 3:g} host syncs per step"))
            if compile_ and variant == "vanilla" and seq == min(s for s, _, _ in step) and not setup.dry:
                checks.append((util is not None and util >= 0.40,
                               f"vanilla seq {seq} compiled: MFU {util and 100 * util:.1f}% >= 40%"))
            del trainer
    if not setup.dry:  # a CPU dry run checks the code paths, not the speed
        v, m = step[(setup.seq, "vanilla", True)], step[(setup.seq, "mod", True)]
        model = ModelConfig(**setup.model)
        share = (flops.train_flops(flops.arch_from_config(model, VARIANTS["mod"], setup.vocab), setup.seq)
                 / flops.train_flops(flops.arch_from_config(model, VARIANTS["vanilla"], setup.vocab), setup.seq))
        checks.append((m <= 0.85 * v, f"MoD compiled step {1e3 * m:.0f} ms <= 0.85 x vanilla's {1e3 * v:.0f} ms"))
        checks.append((m <= 1.1 * share * v, f"MoD compiled step {m / v:.2f} x vanilla's <= 1.1 x its "
                                              f"FLOP share {share:.2f}"))
    return rows, checks


# ---------------------------------------------------------------- 4-6. TF32, SDPA, memory


def bare_step(cfg: ModelConfig, variant, setup: Setup, device: torch.device, micro: int = 1,
              checkpointed: bool = False):
    """One forward, backward and AdamW step of a fresh model on random tokens (bf16 autocast);
    `checkpointed`: every block recomputed in backward, as the Trainer does it."""
    torch.manual_seed(0)
    net = build_model(cfg, variant, setup.vocab, seq_len=setup.seq, device=device)
    if checkpointed:
        parallel.checkpoint_blocks(net)
    opts = make_optimizers(net, TrainConfig(), device)
    tokens = torch.randint(0, setup.vocab, (micro, setup.seq + 1), device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = net(tokens[:, :-1], tokens[:, 1:])
    out.loss.backward()
    for opt in opts:
        opt.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    return net


def phase_device(setup: Setup, device: torch.device) -> tuple[list, list]:
    """TF32, the flash kernel, and peak memory at 1.3B and 2.7B; (rows, checks)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows, checks = [], []
    if device.type == "cuda":
        prec = torch.get_float32_matmul_precision()
        checks.append((prec == "high", f"TF32 on for fp32 matmuls (float32 matmul precision {prec!r})"))
    backend = SDPBackend.FLASH_ATTENTION if device.type == "cuda" else SDPBackend.MATH
    for name, variant in VARIANTS.items():
        try:
            with sdpa_kernel([backend]):
                bare_step(ModelConfig(**setup.model), variant, setup, device)
            ok, why = True, ""
        except RuntimeError as e:
            ok, why = False, f": {str(e).splitlines()[0][:120]}"
        checks.append((ok, f"{name}: a training step with only SDPA's {backend.name} backend{why}"))
    h100 = 80 * 10 ** 9
    cases = [(big, 1, False) for big in setup.big] + [(setup.big[-1], 8, True)]
    for big, micro, ckpt in cases:
        cfg = ModelConfig(**big)
        est = memory.training_memory(flops.arch_from_config(cfg, VARIANTS["vanilla"], setup.vocab),
                                     setup.seq, micro, "bfloat16" if device.type == "cuda" else "float32",
                                     activation_checkpointing=ckpt)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        try:
            bare_step(cfg, VARIANTS["vanilla"], setup, device, micro, ckpt)
            peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
            err = None
        except torch.OutOfMemoryError as e:
            peak, err = None, str(e).splitlines()[0][:100]
        total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
        if ckpt and total is not None:
            total = min(total, h100)  # the target: one 80 GB GPU, whatever this one has
        how = f"micro {micro}, seq {setup.seq}" + (", activation checkpointing" if ckpt else "")
        rows.append((f"one step at {cfg.name} ({how})",
                     "peak " + (memory.size(peak) if peak else "n/a (CPU)" if err is None else "OOM"),
                     f"estimate {memory.size(est.total)}", ""))
        if device.type == "cuda":
            checks.append((err is None and peak <= est.total <= total,
                           f"{cfg.name} ({how}): one step fits ({err or memory.size(peak)}), under the "
                           f"estimate {memory.size(est.total)} and {memory.size(total)}"))
    return rows, checks


# ---------------------------------------------------------------- 7. DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, dry: bool) -> None:
    """One DDP rank: three bare steps, then every rank's parameters against rank 0's."""
    setup = Setup(dry)
    if dry:
        torch.set_num_threads(1)
    device = torch.device("cuda", rank) if not dry else torch.device("cpu")
    if not dry:
        torch.cuda.set_device(device)
    dist.init_process_group("gloo" if dry else "nccl", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        for variant in VARIANTS.values():
            torch.manual_seed(0)
            net = build_model(ModelConfig(**setup.model), variant, setup.vocab, seq_len=setup.seq, device=device)
            opts = make_optimizers(net, TrainConfig(), device)
            ddp = parallel.ddp_wrap(net, device_ids=None if dry else [rank])
            gen = torch.Generator().manual_seed(rank)
            for _ in range(3):
                tokens = torch.randint(0, setup.vocab, (2, setup.seq + 1), generator=gen).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not dry):
                    out = ddp(tokens[:, :-1], tokens[:, 1:])
                out.loss.backward()
                for opt in opts:
                    opt.step()
                    opt.zero_grad(set_to_none=True)
            flat = torch.cat([p.detach().float().reshape(-1) for p in net.parameters()])
            ref = flat.clone()
            dist.broadcast(ref, 0)
            bad = torch.tensor([float((flat != ref).sum())], device=device)
            dist.all_reduce(bad)
            if bad.item():
                raise RuntimeError(f"DDP: ranks disagree on {int(bad.item())} parameter values")
    finally:
        dist.destroy_process_group()


def phase_ddp(dry: bool) -> list:
    """DDP over every visible GPU (dry run: 2 CPU processes); [] with fewer than 2 GPUs."""
    world = 2 if dry else torch.cuda.device_count()
    if world < 2:
        print(f"DDP: {world} GPU visible, no DDP check")
        return []
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        mp.spawn(_ddp_worker, args=(world, _free_port(), dry), nprocs=world, join=True)
    except Exception as e:  # a rank raised: a mismatch or a crash
        return [(False, f"DDP x{world}: {str(e).strip().splitlines()[-1]}")]
    return [(True, f"DDP x{world}: every rank's parameters equal rank 0's after 3 steps")]


# ---------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="every check's code path on a tiny CPU config")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the GPU (default: modexp/training/mfu.py's table)")
    p.add_argument("--out", type=Path, help="working folder (default: a temporary one, removed after)")
    p.add_argument("--no-ddp", action="store_true", help="skip the DDP check")
    p.add_argument("--warmup", type=int, help="untimed steps per throughput setting (default 5; dry run 1)")
    p.add_argument("--repeats", type=int, help="timed steps per throughput setting (default 10; dry run 2)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    """Run every phase, print the table and each check; 1 if any check failed."""
    args = parse_args(argv)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("cuda_smoke: no CUDA device here, nothing to check (exit 0). "
              "--cpu-dry-run exercises the script on a tiny CPU config.")
        return 0
    setup = Setup(args.cpu_dry_run)
    setup.warmup, setup.repeats = args.warmup or setup.warmup, args.repeats or setup.repeats
    ctx = T.setup_context("cpu" if setup.dry else "cuda", args.peak_tflops)
    if setup.dry:
        ctx.compile_backend = "eager"  # dynamo traces and counts; no Inductor compile on CPU
        real_setup = T.setup_context
        T.setup_context = lambda *a, **k: _with_backend(real_setup(*a, **k))
    name = "CPU dry run" if setup.dry else torch.cuda.get_device_name(0)
    if ctx.peak_flops is None and not setup.dry:
        print(f"cuda_smoke: {name} is not in modexp/training/mfu.py's peak table; MFU needs --peak-tflops",
              file=sys.stderr)
    print(f"{name}: torch {torch.__version__}, {setup.model}, seq {setup.seq}, vocab {setup.vocab}, "
          f"batch {setup.batch} in micro-batches of {setup.micro}", flush=True)
    t0, rows, checks = time.time(), [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        tokens = write_tokens(work, setup)
        seqs = {setup.seq: setup.seq, 1024: setup.seq // 2 if setup.dry else 1024}
        specs = {s: write_spec(work, setup, tokens, s, True) for s in set(seqs.values())}
        try:
            for phase in (lambda: phase_runs(specs[setup.seq], work / "results", setup),
                          lambda: phase_throughput(specs, work / "results", setup, ctx, ctx.peak_flops),
                          lambda: phase_device(setup, ctx.device)):
                r, c = phase()
                rows += r
                checks += c
                print(f"[{time.time() - t0:.0f} s]", flush=True)
            if not args.no_ddp:
                checks += phase_ddp(setup.dry)
        finally:
            if setup.dry:
                T.setup_context = real_setup
    print()
    for r in rows:
        print(f"{r[0]:<44}{r[1]:>16}{r[2]:>22}  {r[3]}")
    print(f"\ntotal {time.time() - t0:.0f} s")
    for ok, line in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {line}")
    failed = sum(not ok for ok, _ in checks)
    print(f"cuda_smoke: {failed} check(s) failed" if failed else "cuda_smoke: all checks passed")
    return 1 if failed else 0


def _with_backend(ctx):
    ctx.compile_backend = "eager"
    return ctx


if __name__ == "__main__":
    sys.exit(main())
