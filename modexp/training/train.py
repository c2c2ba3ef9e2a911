"""One trainer for every run: it takes a model, a run plan and a logger, nothing else.

The horizon is the plan's FLOP-matched step count; the LR schedule (linear warmup, cosine
decay to min_lr) spans exactly those steps, so warmup and decay are fractions of the FLOP
budget. Cumulative FLOPs are analytic: step * flops_per_step from the plan.
"""

from __future__ import annotations

import math
import os
import resource
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.distributed as dist

from modexp.data.tokens import TokenData
from modexp.plan import RunPlan
from modexp.records import EvalRow, Row, Summary, TrainRow
from modexp.training import checkpoint
from modexp.spec import TrainConfig
from modexp.training import mfu, parallel
from modexp.training.allocator import tune_cpu_allocator
from modexp.training.calibrate import calibrate_on_training, fold_thresholds
from modexp.training.evaluation import eval_pass
from modexp.training.optim import make_optimizer, make_predictor_optimizer, split_params
from modexp.training.prefetch import Prefetcher, use_prefetch


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class Preempted(RuntimeError):
    """A stop signal (SIGTERM, or Slurm's --signal=USR1) arrived: the run checkpointed the
    step it had reached and stopped, so the same command resumes it there."""

    def __init__(self, signal_name: str, step: int):
        self.signal_name, self.step = signal_name, step
        super().__init__(f"stopped by {signal_name} at step {step}, checkpoint saved")


class Logger(Protocol):
    """Where rows go (metrics file, progress bar); the trainer does not know which."""

    def log(self, row: Row) -> None: ...


@dataclass
class Context:
    """Where and how to run: device, precision, and the DDP rank (world 1 without torchrun)."""

    device: torch.device
    autocast: bool = False  # bf16 autocast (CUDA)
    rank: int = 0
    world: int = 1
    owns_group: bool = False  # setup_context started the process group, so teardown ends it
    peak_flops: float | None = None  # per device, for MFU: given, a known GPU's or measured
    compile_backend: object = "inductor"  # torch.compile's backend (tests pass a counting one)

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes metrics and checkpoints."""
        return self.rank == 0


def lr_factor(step: int, steps: int, warmup: int, min_lr: float) -> float:
    """LR multiplier for 0-based `step`: linear warmup, then cosine to min_lr at step steps-1."""
    if step < warmup:
        return (step + 1) / warmup
    span = steps - 1 - warmup
    progress = 1.0 if span <= 0 else min(1.0, (step - warmup) / span)
    return min_lr + (1 - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def split_batch(batch_size: int, micro_batch_size: int | None, world: int) -> tuple[int, int]:
    """(micro, accum): each rank runs accum micro-batches of `micro` sequences per global step."""
    if batch_size % world:
        raise ValueError(f"train.batch_size ({batch_size}) is global and must divide evenly over "
                         f"the {world} processes; use a batch_size that is a multiple of {world}, "
                         "or another process count")
    per_rank = batch_size // world
    micro = min(micro_batch_size or per_rank, per_rank)  # a rank never needs more than its share
    if per_rank % micro:
        fits = [m for m in range(1, per_rank + 1) if per_rank % m == 0]
        raise ValueError(f"train.micro_batch_size ({micro}) must divide the per-process batch "
                         f"batch_size / processes = {batch_size} / {world} = {per_rank}; "
                         f"with {world} processes use one of {fits}")
    return micro, per_rank // micro




def peak_memory(device: torch.device) -> dict:
    """Peak memory: CUDA allocator peak of this run (reset when its Trainer starts), or on CPU
    this process's peak RSS, which covers earlier runs of the same sweep too (the OS keeps one
    high-water mark per process)."""
    if device.type == "cuda":
        return {"peak_mem_bytes": torch.cuda.max_memory_allocated(device), "peak_mem_kind": "cuda_allocated"}
    return {"peak_mem_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_mem_kind": "process_max_rss"}


class Trainer:
    """Trains one model for exactly plan.steps steps, evaluating at the plan's eval steps."""

    def __init__(self, model: torch.nn.Module, plan: RunPlan, cfg: TrainConfig, data: TokenData,
                 logger: Logger, ckpt_path: Path, ctx: Context,
                 on_step: Callable[[int, float | None], None] | None = None,
                 stop_signal: Callable[[], str | None] | None = None):
        if plan.lr is not None:  # per-size lr and batch size live in the plan entry (spec.models[])
            cfg = cfg.model_copy(update={"lr": plan.lr, "batch_size": plan.batch_size})
        if plan.micro_batch_size is not None:  # the model's own, else train's (plan.py)
            cfg = cfg.model_copy(update={"micro_batch_size": plan.micro_batch_size})
        self.plan, self.cfg, self.data, self.logger, self.ctx = plan, cfg, data, logger, ctx
        self.ckpt_path, self.on_step = ckpt_path, on_step or (lambda step, loss: None)
        # the name of a stop signal received (runner's handler), checked after every step
        self.stop_signal = stop_signal or (lambda: None)
        self.raw = model.to(ctx.device)
        if ctx.device.type == "cuda":  # summary's peak_mem_bytes: this run's, not the sweep's
            torch.cuda.reset_peak_memory_stats(ctx.device)
        # before the optimisers: fully_shard replaces the parameters by DTensor shards
        self.sharded = parallel.is_sharded(cfg, ctx.world)
        self.ddp, self.model = parallel.parallelize(self.raw, cfg, ctx)
        self.lm_params, self.pred_params = split_params(self.raw)
        self.opt = make_optimizer(self.raw, cfg, ctx.device)
        self.pred_opt = make_predictor_optimizer(self.raw, cfg, ctx.device)
        warm = plan.warmup_steps
        sched = lambda opt: torch.optim.lr_scheduler.LambdaLR(  # noqa: E731
            opt, lambda s: lr_factor(s, plan.steps, warm, cfg.min_lr))
        self.sched = sched(self.opt)
        self.pred_sched = sched(self.pred_opt) if self.pred_opt is not None else None
        self.step, self.wall_offset, self.last_eval, self.notes = 0, 0.0, {}, []
        self.eval_time = 0.0
        self.micro, self.accum = split_batch(cfg.batch_size, cfg.micro_batch_size, ctx.world)

    # ------------------------------------------------------------ checkpoints
    def save(self, wall: float) -> None:
        """Atomically checkpoint model, optimizer, scheduler, step and RNG states: rank 0
        writes ckpt.pt, or under FSDP every rank its shards of ckpt.dcp/ (checkpoint.py)."""
        if not (self.ctx.is_main or self.sharded):
            return
        state = {"sched": self.sched.state_dict(), "step": self.step, "wall_time": wall,
                 "cpu_rng": torch.get_rng_state(), "run_id": self.plan.run_id,
                 "last_eval": self.last_eval, "eval_time": self.eval_time}
        if self.pred_opt is not None:
            state["pred_sched"] = self.pred_sched.state_dict()
        if self.ctx.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.ctx.device)
        if self.sharded:
            shards = parallel.sharded_state(self.raw, self._optimizers())
            checkpoint.save_sharded(shards, state, self.ckpt_path.parent, self.cfg.keep_every)
            return
        weights = {"model": self.raw.state_dict(),
                   **{name: opt.state_dict() for name, opt in self._optimizers().items()}}
        checkpoint.save(weights | state, self.ckpt_path, self.cfg.keep_every)

    def _optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers by their name in a checkpoint."""
        return {"opt": self.opt} | ({"pred_opt": self.pred_opt} if self.pred_opt is not None else {})

    def resume(self) -> int:
        """Load the newest good checkpoint if any; return the step to continue from.

        Files passed over (corrupt, or killed mid-save) are described in self.notes."""
        if self.sharded:
            state = self._load_sharded()
        else:
            # onto the CPU, memory-mapped: load_state_dict copies each tensor to the device,
            # and the RNG states stay the CPU ByteTensors torch.set_rng_state requires (loaded
            # onto a GPU they raised TypeError, so no run could resume there)
            state, self.notes = checkpoint.load(self.ckpt_path, "cpu", set_aside=self.ctx.is_main)
        if state is None:
            self._refuse_other_layout()
            self._check_same_step()
            return 0
        if not self.sharded:  # (FSDP's shards are in place already)
            self.raw.load_state_dict(state["model"])
            for name, opt in self._optimizers().items():
                opt.load_state_dict(state[name])
        self.sched.load_state_dict(state["sched"])
        if self.pred_opt is not None:
            self.pred_sched.load_state_dict(state["pred_sched"])
        torch.set_rng_state(state["cpu_rng"].cpu())
        if "cuda_rng" in state and self.ctx.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"].cpu(), self.ctx.device)
        self.step, self.wall_offset = state["step"], state["wall_time"]
        self.last_eval, self.eval_time = state["last_eval"], state.get("eval_time", 0.0)
        self._check_same_step()
        return self.step

    def _load_sharded(self) -> dict | None:
        """Under FSDP: rank 0 picks the newest folder that verifies and tells every rank,
        which fills its shards of the model and optimisers from it; the trainer.pt state."""
        run_dir = self.ckpt_path.parent
        choice = [checkpoint.choose_sharded(run_dir)[::2] if self.ctx.is_main else None]
        dist.broadcast_object_list(choice)
        name, self.notes = choice[0]
        if name is None:
            return None
        shards = parallel.sharded_state(self.raw, self._optimizers())
        checkpoint.load_sharded(shards, run_dir / name)
        parallel.load_sharded_state(self.raw, self._optimizers(), shards)
        return torch.load(run_dir / name / checkpoint.TRAINER_FILE, map_location="cpu", mmap=True)

    def _refuse_other_layout(self) -> None:
        """A run resumes from the checkpoint layout its train.parallel writes: ckpt.pt (one
        process, DDP) or ckpt.dcp/ (FSDP); the other's alone is not converted."""
        run_dir = self.ckpt_path.parent
        mine, other = ("ckpt.dcp/", checkpoint.CKPT_FILE) if self.sharded else \
            (checkpoint.CKPT_FILE, "ckpt.dcp/")
        if (run_dir / other.rstrip("/")).exists():
            how = "fsdp over more than one process" if other.endswith("/") else "ddp (or one process)"
            raise RuntimeError(f"{run_dir} holds {other}, written with train.parallel: {how}, and "
                               f"no {mine}: resume it with the train.parallel and process count "
                               "that wrote it")

    def _check_same_step(self) -> None:
        """Every rank must resume from rank 0's checkpoint (multi-node: a shared results folder)."""
        if self.ctx.world == 1:
            return
        steps = [None] * self.ctx.world
        dist.all_gather_object(steps, self.step)
        if len(set(steps)) > 1:
            raise RuntimeError(f"ranks resume from different steps {steps}: every node must see "
                               f"the same results folder ({self.ckpt_path})")

    # ------------------------------------------------------------ steps
    def _autocast(self):
        dev = self.ctx.device.type
        return torch.autocast(dev, dtype=torch.bfloat16) if self.ctx.autocast else nullcontext()

    prefetcher: Prefetcher | None = None  # while fit() runs with train.prefetch on

    def _make_batches(self, step: int):
        """This rank's micro-batches (x, y) of the step's global batch, on the CPU (same data
        for any world size): a pure function of (seed, step, rows), so a thread may make them."""
        base = self.ctx.rank * (self.cfg.batch_size // self.ctx.world)
        for i in range(self.accum):
            rows = slice(base + i * self.micro, base + (i + 1) * self.micro)
            yield self.data.train_batch(self.plan.seed, step, self.cfg.batch_size, rows)

    def _micro_batches(self, step: int):
        """The step's micro-batches on the device: made here, or by the prefetch thread."""
        made = self.prefetcher.get(step) if self.prefetcher is not None else self._make_batches(step)
        base = self.ctx.rank * (self.cfg.batch_size // self.ctx.world)
        for i, (x, y) in enumerate(made):
            self.raw.set_draws(step, base + i * self.micro)  # drawn routing: at (step, global row)
            yield x.to(self.ctx.device, non_blocking=True), y.to(self.ctx.device, non_blocking=True)

    @contextmanager
    def _prefetching(self):
        """train.prefetch: a thread makes the coming steps' batches from the current step on
        (training/prefetch.py); stopped and joined however the loop ends."""
        if not use_prefetch(self.cfg.prefetch, self.ctx.device) or self.step >= self.plan.steps:
            yield
            return
        make = lambda step: list(self._make_batches(step))  # noqa: E731
        with Prefetcher(make, self.step, self.plan.steps, pin=self.ctx.device.type == "cuda") as p:
            self.prefetcher = p
            try:
                yield
            finally:
                self.prefetcher = None

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimiser step over the global batch; returns detached loss/stat tensors."""
        sums: dict[str, torch.Tensor] = {}
        quantiles = []  # per micro-batch: the tracked decisions' batch quantiles (calibrate.py)
        for i, (x, y) in enumerate(self._micro_batches(self.step)):
            sync = i == self.accum - 1 or self.ctx.world == 1
            # all-reduce once, after the last micro-batch; no_sync is entered once (a context
            # manager made by a generator cannot be re-entered) around forward and backward
            with parallel.accumulation_context(self.ddp, sync):
                with self._autocast():
                    out = self.model(x, y)
                (out.loss / self.accum).backward()
            _accumulate(sums, out, self.accum)
            if out.quantiles is not None:
                quantiles.append(out.quantiles.detach())
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        # Two clips: the LM's norm is its own (the predictors' never scales the LM's step)
        sums["grad_norm"] = parallel.clip_grad_norm(self.lm_params, clip)
        sums["lr"] = torch.tensor(self.sched.get_last_lr()[0])
        opts = [(self.opt, self.sched)]
        if self.pred_opt is not None:
            sums["predictor_grad_norm"] = parallel.clip_grad_norm(self.pred_params, clip)
            opts.append((self.pred_opt, self.pred_sched))
        for opt, sched in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
            sched.step()
        fold_thresholds(self.raw, quantiles, self._mean_over_ranks if self.ctx.world > 1 else None)
        self.step += 1
        return sums

    # ------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Eval loss with top-k routing and, for MoD with a causal method, causal routing."""
        self.raw.eval()
        # eval_batches x batch_size sequences, chunked to fit: the same set for every run; the
        # last evaluation (the summary's) scores final_eval_batches, a superset of them
        final = self.step >= self.plan.steps
        rounds = self.cfg.final_eval_batches // self.cfg.eval_batches if final else 1
        batches = self.data.val_batches(self.cfg.eval_batches * self.cfg.batch_size // self.micro,
                                        self.micro, rounds)
        if final:  # exact thresholds with the final weights (calibrate.py)
            calibrate_on_training(self.raw, self.data, self.plan.seed, self.step,
                                  (self.cfg.batch_size, self.micro), self.ctx.device, self._autocast)
        shard = (self.ctx.rank, self.ctx.world)  # each rank scores its share of the batches
        row = eval_pass(self.raw, batches, "topk", self.ctx.device, self._autocast, *shard)
        row["eval_sequences"] = sum(x.size(0) for x, _ in batches)
        if row.pop("causal_ok"):
            # the decision thresholds both passes scored (calibrate.py)
            row["threshold"] = [float(d.threshold) for d in self.raw.decisions()]
            causal = eval_pass(self.raw, batches, "causal", self.ctx.device, self._autocast, *shard)
            row |= {"eval_loss_causal": causal["eval_loss"],
                    "routed_frac_causal": causal["routed_frac"],
                    "routed_frac_causal_ci": causal["routed_frac_ci"],
                    "routed_frac_causal_pos": causal["routed_frac_pos"],
                    "pos_bin_starts": causal["pos_bin_starts"],
                    "routed_frac_topk": row.pop("routed_frac")}
            # The decision scored both on the top-k pass (the inputs it trains on) and on the
            # causal pass (the inputs it meets when sampling), each against top-k membership.
            row |= {f"{k}_causal": v for k, v in causal.items()
                    if k.startswith("predictor_") and not k.endswith("_ci")}
            row["predictor_acc_causal_ci"] = causal["predictor_acc_ci"]
        self.raw.train()
        return row

    def _mean_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """t averaged over DDP ranks (the threshold quantiles: every rank keeps the same)."""
        torch.distributed.all_reduce(t)
        return t / self.ctx.world

    # ------------------------------------------------------------ the loop
    def fit(self) -> Summary:
        """Train from the current step to plan.steps; return the summary of the finished run."""
        with self._prefetching():
            return self._fit()

    def _fit(self) -> dict:
        """fit()'s loop, with the prefetch thread (if on) running beside it."""
        plan, start_wall = self.plan, time.time() - self.wall_offset
        # `bad` stays on the device, read only on logged and checkpointed steps: no host
        # sync per step (the loss's .cpu() each step stalled the GPU's queue)
        eval_at, bad = set(plan.eval_steps), torch.zeros((), dtype=torch.bool, device=self.ctx.device)
        t_log, step_log = time.time(), self.step
        self.raw.train()
        while self.step < plan.steps:
            sums = self.train_step()
            bad |= ~torch.isfinite(sums["loss"])
            s, loss = self.step, None
            log_now = s % self.cfg.log_every == 0 or s in eval_at or s == plan.steps
            ckpt_now = s in eval_at or s % self.cfg.checkpoint_every == 0 or s == plan.steps
            if log_now or ckpt_now:
                sums, bad = self._all_ranks(sums, bad)
            if (log_now or ckpt_now) and bad.item():  # never log or checkpoint a diverged state
                raise Diverged(f"loss is not finite (NaN/inf) by step {s}")
            if log_now:
                now = time.time()
                row = self._train_row(sums, now - start_wall, s - step_log, now - t_log)
                self.logger.log(row)
                t_log, step_log, loss = now, s, row.train_loss
            if s in eval_at:
                # the nominal fraction k/eval_points this step stands for (within half a step)
                frac = round(s * self.cfg.eval_points / plan.steps) / self.cfg.eval_points
                t_eval = time.time()
                ev = EvalRow(**self._position(), budget_frac=frac, **self.evaluate())
                self.last_eval = ev.to_dict()  # the checkpoint keeps it as metrics.jsonl does
                self.eval_time += time.time() - t_eval
                self.logger.log(ev)
            if ckpt_now:
                self.save(time.time() - start_wall)
            if s in eval_at or ckpt_now:  # train rows' throughput covers training steps only
                t_log, step_log = time.time(), s
            self.on_step(s, loss)
            stop = self._stop_requested(log_now or ckpt_now)
            if stop is not None and s < plan.steps:
                if not ckpt_now:
                    if bad.item():
                        raise Diverged(f"loss is not finite (NaN/inf) by step {s}")
                    self.save(time.time() - start_wall)
                raise Preempted(stop, s)
        return self._summary(self.last_eval, time.time() - start_wall)

    def _stop_requested(self, synced: bool) -> str | None:
        """The stop signal's name once this process (one process) or any rank (torchrun) got
        one. Ranks agree on steps that reduce across them anyway (logged or checkpointed), so
        they stop at the same step; one process checks every step, a host flag (no sync)."""
        if self.ctx.world == 1:
            return self.stop_signal()
        if not synced:
            return None
        names = [None] * self.ctx.world
        dist.all_gather_object(names, self.stop_signal())
        return next((n for n in names if n is not None), None)

    def _all_ranks(self, sums: dict, bad: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """The global batch's mean losses/stats, and whether any rank saw a non-finite loss.

        Every rank then logs the same numbers and raises Diverged at the same step, so no rank
        is left waiting in a collective for one that stopped.
        """
        if self.ctx.world == 1:
            return sums, bad
        same = ("grad_norm", "predictor_grad_norm", "lr")  # already equal on every rank
        keys = [k for k in sums if k not in same]
        parts = [sums[k].float().reshape(-1) for k in keys]
        flat = torch.cat(parts + [bad.float().reshape(1).to(parts[0].device)])
        dist.all_reduce(flat)
        out, at = dict(sums), 0
        for k, p in zip(keys, parts):
            out[k] = (flat[at:at + p.numel()] / self.ctx.world).reshape(sums[k].shape)
            at += p.numel()
        return out, (flat[-1] > 0).cpu()

    def _position(self) -> dict:
        p = self.plan
        return {"step": self.step, "tokens": self.step * p.batch_size * p.seq_len,
                "flops": self.step * p.flops_per_step}

    def _train_row(self, sums: dict, wall: float, steps: int, secs: float) -> TrainRow:
        """Losses and stats of the step, throughput over the `steps` trained in `secs`."""
        vals = {k: v.tolist() for k, v in sums.items()}  # one host sync per logged step
        p = self.plan
        return TrainRow(**self._position(), train_loss=vals["loss"], lm_loss=vals["lm_loss"],
                        aux_loss=vals.get("aux_loss"), predictor_loss=vals.get("predictor_loss"),
                        lr=vals["lr"], grad_norm=vals["grad_norm"],
                        predictor_grad_norm=vals.get("predictor_grad_norm"),
                        routed_frac=vals.get("routed", []), wall_time=wall,
                        tokens_per_s=steps * p.batch_size * p.seq_len / max(secs, 1e-9),
                        **mfu.throughput_fields(steps * p.flops_per_step, secs, self.ctx.peak_flops))

    def _summary(self, last_eval: dict, wall: float) -> Summary:
        """The finished run's summary: the last eval row's figures (`last_eval` as the
        checkpoint keeps it; empty if the run never evaluated) and the run's throughput."""
        p = self.plan
        ev = EvalRow.from_dict(last_eval, "the checkpoint's last eval row") if last_eval else EvalRow()
        return Summary(run_id=p.run_id, step=self.step, flops=self.step * p.flops_per_step,
                       final_eval_loss=ev.eval_loss, final_eval_loss_causal=ev.eval_loss_causal,
                       predictor_acc=ev.predictor_acc, predictor_acc_causal=ev.predictor_acc_causal,
                       predictor_precision_causal=ev.predictor_precision_causal,
                       predictor_recall_causal=ev.predictor_recall_causal,
                       predictor_acc_causal_ci=ev.predictor_acc_causal_ci,
                       routed_frac_causal=ev.routed_frac_causal,
                       routed_frac_causal_ci=ev.routed_frac_causal_ci,
                       routed_frac_topk=ev.routed_frac_topk,  # = each layer's k/T
                       threshold=ev.threshold,
                       wall_time=wall, tokens_per_s=p.tokens / max(wall, 1e-9),
                       # over the whole wall time, evaluation and checkpoints included
                       **mfu.throughput_fields(self.step * p.flops_per_step, wall, self.ctx.peak_flops),
                       eval_time=self.eval_time, eval_share=self.eval_time / max(wall, 1e-9),
                       **peak_memory(self.ctx.device))


def _accumulate(sums: dict, out, accum: int) -> None:
    """Average losses over micro-batches; routed fraction per routed layer."""
    for name in ("loss", "lm_loss", "aux_loss", "predictor_loss"):
        v = getattr(out, name)
        if v is not None:
            sums[name] = sums.get(name, 0) + v.detach().float() / accum
    if "routed" in out.stats:
        frac = out.stats["routed"].float() / out.stats["tokens"]
        sums["routed"] = sums.get("routed", 0) + frac / accum


def setup_context(device: str = "auto", peak_tflops: float | None = None) -> Context:
    """Pick the device (cuda, then cpu) and join the torchrun process group if launched by it.

    peak_tflops: the device's peak for MFU; default a known GPU's bf16 peak, or on a CPU the
    matmul peak `modexp bench` measured and cached on this machine (else MFU stays unknown).
    """
    from modexp.device import resolve_device

    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    dev = torch.device(resolve_device(device))
    if dev.type == "cuda" and world > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    if dev.type == "cuda":  # fp32 matmuls (router, predictor, outside autocast) on TF32 cores
        torch.set_float32_matmul_precision("high")
    if dev.type == "cpu":  # reuse freed activations instead of faulting them in every step
        tune_cpu_allocator()
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    peak = peak_tflops * 1e12 if peak_tflops else _known_peak(dev)
    return Context(device=dev, autocast=dev.type == "cuda", rank=rank, world=world, owns_group=owns,
                   peak_flops=peak)


def _known_peak(dev: torch.device) -> float | None:
    """A known GPU's bf16 peak (the trainer autocasts to bf16 there), or a cached CPU peak."""
    if dev.type == "cuda":
        return mfu.gpu_peak_flops(torch.cuda.get_device_name(dev), "bf16")
    from modexp.training.peak import cached_peak

    return cached_peak("cpu", measure=False)


def teardown_context(ctx: Context) -> None:
    """End the process group setup_context started (after the last collective of the sweep)."""
    if ctx.owns_group and dist.is_initialized():
        # every rank past its last collective before any tears its group down: a rank whose
        # peer closed the connection while it still had gloo work in flight aborted at exit
        # ("terminate called without an active exception", seen after an FSDP sweep)
        dist.barrier()
        dist.destroy_process_group()
