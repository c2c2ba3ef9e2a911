"""CUDA smoke test and throughput: vanilla vs MoD at ~125M, bf16, torch.compile off/on, then DDP.

    python benchmarks/cuda_smoke.py [--peak-tflops 989] [--batch-size 16] [--seq-len 1024]
    python benchmarks/cuda_smoke.py --cpu-dry-run    # a tiny config on CPU: checks the script

For each variant (vanilla; MoD at 12.5% capacity, every other block, causal predictor) and
compile setting it times full training steps (forward + backward + the trainer's AdamW,
synchronised) and prints the median step time, tokens/s and MFU = achieved model FLOPs/s
divided by --peak-tflops. Model FLOPs are modexp.flops.train_flops, the planner's count (3x
the forward matmuls, full-square attention, LM head; the MoD blocks at their capacity), so MFU
says how well each variant realises the FLOPs it is charged for. Then the same steps under
DistributedDataParallel over every visible GPU (mp.spawn, nccl), the same batch per GPU.
Without CUDA it says so and exits 0: nothing in CI needs it. About 3-4 minutes on one H200.

Checks, each printed as PASS/FAIL; any FAIL makes the exit code 1, so one run on a lent GPU
answers pass/fail: every loss finite (no NaN/inf), MoD's step faster than vanilla's at each
compile setting, and after the DDP steps every rank holding the same parameters as rank 0.
The peak defaults to the device's bf16 peak from modexp/training/mfu.py's table (--peak-tflops if not
listed there).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from modexp import flops  # noqa: E402
from modexp.models.build import build_model  # noqa: E402
from modexp.spec import ModelConfig, ModVariant, TrainConfig, VanillaVariant  # noqa: E402
from modexp.training import mfu  # noqa: E402
from modexp.training.optim import make_optimizers  # noqa: E402  (the trainer's, as trained)

VARIANTS = {"vanilla": VanillaVariant(kind="vanilla"),
            "mod": ModVariant(kind="mod", capacity=0.125, route_every=2, causal="predictor")}


def parse_args(argv=None) -> argparse.Namespace:
    """Options; sizes default to ~125M (GPT-2 small shape) or, with --cpu-dry-run, a tiny model."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu-dry-run", action="store_true", help="tiny config on CPU (gloo DDP)")
    p.add_argument("--batch-size", type=int, help="sequences per GPU (default 16; dry run 4)")
    p.add_argument("--seq-len", type=int, help="default 1024; dry run 64")
    p.add_argument("--vocab", type=int, help="default 50304; dry run 256")
    p.add_argument("--peak-tflops", type=float,
                   help="peak dense bf16 TFLOP/s of one device (default: modexp/training/mfu.py's table)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps (compilation included)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps")
    p.add_argument("--compile", help="compile settings to run: off, on or off,on (default; "
                   "dry run: off, as inductor on CPU takes minutes)")
    p.add_argument("--ddp-compile", action="store_true", help="torch.compile in the DDP phase too")
    p.add_argument("--no-ddp", action="store_true", help="skip the DDP phase")
    args = p.parse_args(argv)
    tiny = args.cpu_dry_run
    args.batch_size = args.batch_size or (4 if tiny else 16)
    args.seq_len = args.seq_len or (64 if tiny else 1024)
    args.vocab = args.vocab or (256 if tiny else 50304)
    args.compile = args.compile or ("off" if tiny else "off,on")
    args.model = (ModelConfig(name="tiny", n_layers=2, d_model=64, n_heads=2) if tiny else
                  ModelConfig(name="125m", n_layers=12, d_model=768, n_heads=12))
    return args


class Stepper:
    """One model, its optimiser and a fixed random batch; step() is one training step."""

    def __init__(self, variant, args, device: torch.device, compile_: bool, ddp: bool = False):
        torch.manual_seed(0)
        self.raw = build_model(args.model, variant, args.vocab, seq_len=args.seq_len,
                               device=device)
        self.opts = make_optimizers(self.raw, TrainConfig(), device)  # LM's, predictors' own
        net = self.raw
        if ddp:  # wrapped as the trainer does: compile outside DDP
            net = torch.nn.parallel.DistributedDataParallel(
                net, device_ids=[device.index] if device.type == "cuda" else None)
        self.net = torch.compile(net) if compile_ else net
        tokens = torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1), device=device)
        self.x, self.y = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
        self.device, self.finite = device, True
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16)  # as the trainer on CUDA

    def step(self) -> float:
        """Seconds for forward + backward + AdamW step, synchronised."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        with self.autocast:
            out = self.net(self.x, self.y)
        out.loss.backward()
        for opt in self.opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
        sync()
        secs = time.perf_counter() - t0
        self.finite &= bool(torch.isfinite(out.loss.detach()))  # after timing: a host sync
        return secs


def measure(stepper: Stepper, args) -> float:
    """Median step time in ms after the warm-up steps."""
    for _ in range(args.warmup):
        stepper.step()
    return 1e3 * statistics.median(stepper.step() for _ in range(args.repeats))


def figures(name: str, ms: float, args, world: int = 1) -> dict:
    """tokens/s and MFU of one configuration (world devices, args.batch_size sequences each)."""
    per_step = flops.train_flops(flops.arch_from_config(args.model, VARIANTS[name], args.vocab),
                                 args.seq_len) * args.batch_size * world
    tflops = per_step / (ms / 1e3) / 1e12
    return {"ms": ms, "tok_s": world * args.batch_size * args.seq_len / (ms / 1e3),
            "tflops": tflops, "mfu": tflops / (args.peak_tflops * world)}


def row(label: str, f: dict, mem_gib: float | None) -> str:
    """One line of the results table."""
    mem = "" if mem_gib is None else f"{mem_gib:8.1f}"
    return (f"{label:<26}{f['ms']:>10.1f}{f['tok_s']:>13,.0f}{f['tflops']:>10.1f}"
            f"{100 * f['mfu']:>8.1f}%{mem}")


HEADER = f"{'config':<26}{'step ms':>10}{'tokens/s':>13}{'TFLOP/s':>10}{'MFU':>9}{'peak GiB':>9}"


def single_device(args, device: torch.device) -> list[tuple[bool, str]]:
    """Every variant x compile setting on one device; the checks (ok, line) they pass or fail."""
    print(HEADER)
    checks = []
    for compile_ in [c.strip() == "on" for c in args.compile.split(",")]:
        ms = {}
        for name, variant in VARIANTS.items():
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            stepper = Stepper(variant, args, device, compile_)
            ms[name] = measure(stepper, args)
            mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            label = f"{name} compile={'on' if compile_ else 'off'}"
            print(row(label, figures(name, ms[name], args), mem), flush=True)
            checks.append((stepper.finite, f"{label}: every loss finite"))
        if device.type == "cuda":  # a CPU dry run checks the code paths, not the speed
            checks.append((ms["mod"] < ms["vanilla"], f"compile={'on' if compile_ else 'off'}: MoD "
                           f"step {ms['mod']:.1f} ms faster than vanilla {ms['vanilla']:.1f} ms"))
    return checks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, args) -> None:
    """One DDP rank: time the same steps; rank 0 prints (ranks run in lockstep)."""
    cuda = not args.cpu_dry_run
    if not cuda:
        torch.set_num_threads(1)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=world)
    try:
        for name, variant in VARIANTS.items():
            stepper = Stepper(variant, args, device, args.ddp_compile, ddp=True)
            ms = measure(stepper, args)
            dist.barrier()
            if rank == 0:
                print(row(f"{name} DDP x{world}", figures(name, ms, args, world), None), flush=True)
            # replicas must stay identical: every rank's parameters against rank 0's
            flat = torch.cat([p.detach().float().reshape(-1) for p in stepper.raw.parameters()])
            ref = flat.clone()
            dist.broadcast(ref, 0)
            bad = torch.tensor([float((flat != ref).sum()) + (not stepper.finite)], device=device)
            dist.all_reduce(bad)
            if bad.item():
                raise RuntimeError(f"{name} DDP: ranks disagree on {int(bad.item())} parameter "
                                   "values (or a loss was not finite)")
    finally:
        dist.destroy_process_group()


def ddp_phase(args) -> list[tuple[bool, str]]:
    """DDP over every visible GPU (dry run: 2 CPU processes), one process per device."""
    world = 2 if args.cpu_dry_run else torch.cuda.device_count()
    print(f"\nDDP over {world} {'CPU processes (gloo)' if args.cpu_dry_run else 'GPUs (nccl)'}, "
          f"{args.batch_size} sequences each, compile={'on' if args.ddp_compile else 'off'}; "
          "MFU per device")
    print(HEADER)
    try:
        mp.spawn(_ddp_worker, args=(world, _free_port(), args), nprocs=world, join=True)
    except Exception as e:  # a rank raised: mismatch, NaN or a crash
        return [(False, f"DDP x{world}: {str(e).strip().splitlines()[-1]}")]
    return [(True, f"DDP x{world}: every rank's parameters equal rank 0's, losses finite")]


def main(argv=None) -> int:
    """Run the benchmark; 0 without CUDA (nothing to do) unless --cpu-dry-run."""
    args = parse_args(argv)
    if not args.cpu_dry_run and not torch.cuda.is_available():
        print("cuda_smoke: no CUDA device here, nothing to benchmark (exit 0). "
              "--cpu-dry-run exercises the script on a tiny CPU config.")
        return 0
    device = torch.device("cpu" if args.cpu_dry_run else "cuda", None if args.cpu_dry_run else 0)
    what = "CPU dry run" if args.cpu_dry_run else torch.cuda.get_device_name(device)
    if args.peak_tflops is None:
        known = mfu.gpu_peak_flops(what, "bf16")
        if known is None and not args.cpu_dry_run:
            print(f"cuda_smoke: {what} is not in modexp/training/mfu.py's peak table; pass --peak-tflops",
                  file=sys.stderr)
            return 2
        args.peak_tflops = known / 1e12 if known else 1.0  # dry run: MFU against 1 TFLOP/s
    m = args.model
    print(f"{what}: torch {torch.__version__}, bf16 autocast, {m.n_layers} layers d={m.d_model} "
          f"heads={m.n_heads} vocab={args.vocab} seq={args.seq_len} batch={args.batch_size}, "
          f"peak {args.peak_tflops:g} TFLOP/s, median of {args.repeats} steps after {args.warmup}")
    t0 = time.time()
    checks = single_device(args, device)
    if not args.no_ddp:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        checks += ddp_phase(args)
    print(f"\ntotal {time.time() - t0:.0f} s")
    for ok, line in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {line}")
    failed = sum(not ok for ok, _ in checks)
    print(f"cuda_smoke: {failed} check(s) failed" if failed else "cuda_smoke: all checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
