"""Memory a training step needs, from the architecture alone (no torch), and what a machine has.

`training_memory(arch, seq_len, micro_batch, dtype)` adds up, in bytes, every part that is
alive at some point of one optimiser step (notation of flops.py: N = micro_batch * t tokens of
a layer, d width, d_ff MLP width, h heads, V vocabulary, P parameters):

- params, grads: 4P each (the Trainer keeps float32 weights; a grad per weight at the end of
  backward), and the predictors' own AdamW counts its share of P like the LM's;
- optimizer: AdamW's exp_avg and exp_avg_sq, 8P (fused AdamW: no per-step temporaries);
- weight_copies: bfloat16 only, autocast's cached bf16 copy of every matmul weight, 2P;
- activations: the tensors autograd saves for backward, per layer (routed layers on their
  k tokens, plus their router, gate and predictor on all T), counted tensor by tensor from
  modexp/models/ and modexp/kernels/ (attention.py) (below, `_layer`);
- loss: the logits and cross-entropy tensors, N*V each: the logits, the log-softmax autograd
  saves, and the two gradient buffers of backward (float32), plus a float32 copy of bf16
  logits (models/mod.py at_least_fp32).

The sum is an upper bound of the peak: backward frees activations as gradients appear, so
the two never all coexist. tests/test_memory.py measures the peak with torch's profiler on tiny
models (vanilla, MoD, GELU, SwiGLU, both attention paths) and holds the estimate between
1x and 1.3x of it. `dtype` names the Trainer's two ways of running: "float32" is the CPU
(eager float32, the batched-matmul attention path where attention.matmul_path takes it,
RoPE's paired path with its permuted weight copy); "bfloat16" is CUDA under bf16 autocast
(float32 residual stream and loss, bf16 matmul outputs, flash attention keeping its
log-sum-exp instead of the probabilities); derived, not measured on a GPU.

Two settings of the spec change the sum (`training_memory(..., activation_checkpointing,
shards)`), each named in `summary()`:

- activation checkpointing (train.activation_checkpointing: every layer of model.blocks under
  torch.utils.checkpoint, non-reentrant, router, gate and predictor inside their block):
  `activations` keeps each layer's saved input x (B, T, d) float32 and the final norm's
  tensors; `recompute` is the largest layer's internals, rebuilt in backward one layer at a
  time (the same `_layer` bytes the layer saves without checkpointing), times
  RECOMPUTE_BACKWARD for the gradient buffers its backward allocates beside them. The recompute
  runs after the head's backward has freed the loss's tensors, so `total` counts the larger
  of `loss` and `recompute`, not both; the bf16 weight copies stay whole (autocast caches
  every layer's copy until the forward ends, when the loss's tensors are alive);
- shards = N (train.parallel: fsdp over N processes, FSDP2 fully_shard per block plus the
  root): params, grads, AdamW state and bf16 weight copies are each split N ways (ceil), and
  `gathered` holds what is unsharded at once, float32: the root's own parameters (embedding,
  head, final norm: gathered for the whole step) plus 3x the largest layer's (the one running,
  the next one prefetched, and its unsharded gradient before the reduce-scatter).
`generation_memory` estimates sampling; `device_available_bytes` reads what a machine has free;
`fit_problems` is the check `modexp run` makes with them before it writes anything.
`micro_batch_by_estimate` and `halving_search` choose `micro_batch_size: auto` (runs/runner.py),
`fit_advice` says what would make a step fit (`plan --device-memory`, whose value
`parse_size` reads).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from modexp import flops as F

DTYPES = {"float32": 4, "bfloat16": 2}
# kernels/attention.py's limits for the batched-matmul path (float32 CPU training); repeated here so
# this module stays torch-free (tests/test_memory.py checks they agree)
MATMUL_MAX_T, MATMUL_MAX_HEAD, MATMUL_MAX_SCORES, MATMUL_ONE_BLOCK_T = 128, 64, 2 ** 23, 64
INT64 = 8
RECOMPUTE_BACKWARD = 1.5
"""A checkpointed layer's backward: its rebuilt tensors plus the gradient buffers of the ones
being differentiated, at most half as much again (tests/test_memory.py measures 1.0-1.26x of
the rebuilt bytes beyond the rest of the step, float32 and bf16 autocast, both attention paths)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of one training step's parts (`total` their sum) and what they assume."""

    params: int
    grads: int
    optimizer: int
    weight_copies: int
    activations: int
    loss: int
    dtype: str
    micro_batch: int
    recompute: int = 0  # activation checkpointing: the largest layer's internals, rebuilt in backward
    gathered: int = 0  # FSDP: parameters (and a gradient) unsharded at once
    shards: int = 1  # processes params, grads and AdamW state are split over (1: not sharded)

    @property
    def total(self) -> int:
        """Every part at once, an upper bound of the step's peak, except that the loss's
        tensors (freed once the head's backward has run) and the recompute (in the layers'
        backward, after it) never coexist: the larger of the two counts."""
        return (self.params + self.grads + self.optimizer + self.weight_copies
                + self.activations + max(self.loss, self.recompute) + self.gathered)

    def to_dict(self) -> dict:
        """Plain data for JSON (`modexp plan --json`), total included."""
        return {**asdict(self), "total": self.total}

    def summary(self) -> str:
        """'2.1 GiB (params 410 MiB, grads 410 MiB, AdamW 820 MiB, ...; float32, micro-batch 8)'."""
        parts = [("params", self.params), ("grads", self.grads), ("AdamW", self.optimizer),
                 ("bf16 weight copies", self.weight_copies), ("activations", self.activations),
                 ("recompute", self.recompute), ("gathered", self.gathered),
                 ("logits and loss", self.loss)]
        inner = ", ".join(f"{name} {size(n)}" for name, n in parts if n)
        setting = [self.dtype, f"micro-batch {self.micro_batch}"]
        if self.recompute:
            setting.append("activation checkpointing")
        if self.shards > 1:
            setting.append(f"fsdp over {self.shards}")
        return f"{size(self.total)} ({inner}; {', '.join(setting)})"


def size(n: float) -> str:
    """Bytes for a reader: '2,560 GiB', '4.1 GiB', '53 MiB', '12 KiB', '100 B'."""
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if n >= scale:
            x = n / scale
            return f"{x:,.0f} {unit}" if x >= 10 else f"{x:.2g} {unit}"
    return f"{int(n)} B"


def _matmul_path(dtype: str, batch: int, heads: int, t: int, head_size: int) -> bool:
    """Whether attention.matmul_path takes the batched-matmul path (float32 CPU training)."""
    return (dtype == "float32" and t <= MATMUL_MAX_T and head_size <= MATMUL_MAX_HEAD
            and batch * heads * t * t <= MATMUL_MAX_SCORES)


def _block(arch: F.Arch, batch: int, t: int, dtype: str) -> int:
    """Bytes a Block (models/model.py) saves for backward on `t` tokens of `batch` rows.

    float32 (CPU): norm1's input x and rsqrt r, qkv's input, the attention's q, k, v copies
    (matmul path: plus the softmax probabilities B*h*t*t and the causal bias t*t; SDPA: q, k,
    the qkv buffer v views, its output and log-sum-exp), the proj input, x + a with r, fc's
    input, the MLP's hidden tensors, and the paired RoPE path's permuted qkv weight 3d^2.
    bfloat16 (CUDA autocast): the residual tensors stay float32, norm outputs are saved as
    their bf16 casts, every matmul output is bf16, flash attention keeps q, k, v, its output
    and the log-sum-exp; no permuted weight (autocast takes RoPE's halves path).
    """
    d, h, w = arch.d_model, arch.n_heads, DTYPES[dtype]
    n = batch * t
    hidden = arch.d_ff * (4 if arch.mlp_mult == 3 else 2)  # SwiGLU: fc out 2*d_ff, silu, product
    if _matmul_path(dtype, batch, h, t, d // h):
        half = t // 2  # above 64 positions two causal query blocks (attention.query_blocks)
        scores = t * t if t <= MATMUL_ONE_BLOCK_T else half * half + (t - half) * t
        attention = 4 * n * d * 4 + batch * h * scores * 4 + t * t * 4  # q,k,v copies, proj in
    elif dtype == "float32":
        attention = 7 * n * d * 4 + batch * h * t * 4  # q, k, qkv buffer, out, proj in; lse
    else:
        attention = 7 * n * d * w + batch * h * t * 4
    norms = 2 * n * d * 4 + 2 * n * 4  # x and x + a (float32 residual), their rsqrt
    if dtype == "float32":
        norm_outs, rope = 2 * n * d * 4, 3 * d * d * 4  # qkv and fc inputs; permuted weight
    else:
        norm_outs, rope = 2 * n * d * w, 0
    return norms + norm_outs + attention + n * hidden * w + rope


def _layer(arch: F.Arch, layer: int, batch: int, seq_len: int, dtype: str) -> int:
    """Bytes layer `layer` saves: its Block, and for a routed layer (models/mod.py) the router's
    input x (B, T, d), its logits, the gathered indices, the gate and f (B, k, d) it scales,
    and the predictor's hidden activations (B, T, hidden) before and after the GELU."""
    cap = arch.capacity(layer)
    if cap is None:
        return _block(arch, batch, seq_len, dtype)
    k = F.routed_k(cap, seq_len)
    w = DTYPES[dtype]
    n_all, n_routed = batch * seq_len, batch * k
    routing = n_all * arch.d_model * 4 + 4 * n_all * 4 + 2 * n_routed * INT64  # x, r, idx
    gate = n_routed * arch.d_model * w + 2 * n_routed * 4
    predictor = 2 * n_all * arch.predictor_hidden * w + 2 * n_all * 4 if arch.predictor_hidden else 0
    return _block(arch, batch, k, dtype) + routing + gate + predictor


def training_memory(arch: F.Arch, seq_len: int, micro_batch: int, dtype: str = "float32",
                    activation_checkpointing: bool = False, shards: int = 1) -> MemoryEstimate:
    """Bytes of one training step of `micro_batch` sequences of `seq_len` tokens (see above);
    `shards` > 1: FSDP over that many processes (the bytes of one of them)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    P = F.param_counts(arch)["total"]
    n = micro_batch * seq_len
    per_layer = [_layer(arch, i, micro_batch, seq_len, dtype) for i in range(arch.n_layers)]
    if activation_checkpointing:  # each layer keeps its input; one layer's internals at a time
        layers = arch.n_layers * n * arch.d_model * 4
        recompute = math.ceil(RECOMPUTE_BACKWARD * max(per_layer))
    else:
        layers, recompute = sum(per_layer), 0
    ends = 2 * n * arch.d_model * 4 + n * 4 + 2 * n * INT64  # final norm in/out, ids, targets
    w = DTYPES[dtype]
    loss = n * arch.vocab * (4 + w + (4 if w < 4 else 0) + 2 * 4)
    split = lambda b: -(-b // shards)  # noqa: E731  (ceil: FSDP pads the last shard)
    gathered = 0
    if shards > 1:
        layer_params = F.block_params(arch) + (F.router_params(arch) if arch.n_routed else 0)
        root = P - arch.n_layers * F.block_params(arch) - arch.n_routed * F.router_params(arch)
        gathered = 4 * root + 3 * 4 * layer_params
    return MemoryEstimate(params=split(4 * P), grads=split(4 * P), optimizer=split(8 * P),
                          weight_copies=split(2 * P) if dtype == "bfloat16" else 0,
                          activations=layers + ends, loss=loss, dtype=dtype,
                          micro_batch=micro_batch, recompute=recompute, gathered=gathered,
                          shards=shards)


# ---------------------------------------------------------------- sampling
STEP_BOOKKEEPING, ROW_BOOKKEEPING = 1024, 2048
"""Bytes of Python objects a decode step keeps until generation ends (RoPE table views, the
sampled ids, routing decisions): a fixed share plus one per row of the batch, set above what
benchmarks/bench_generation_memory.py measures beyond the KV cache."""


@dataclass(frozen=True)
class GenerationEstimate:
    """Bytes of one KV-cached generation (models/decode.py generate), float32 weights."""

    kv_cache: int
    prefill: int
    rope: int
    bookkeeping: int

    @property
    def total(self) -> int:
        """All parts at once (the weights themselves are not counted: they are loaded)."""
        return self.kv_cache + self.prefill + self.rope + self.bookkeeping

    def summary(self) -> str:
        """'12 GiB (KV cache 11 GiB, prefill 96 MiB, RoPE tables 80 MiB, bookkeeping 190 MiB)'."""
        parts = [("KV cache", self.kv_cache), ("prefill", self.prefill),
                 ("RoPE tables", self.rope), ("bookkeeping", self.bookkeeping)]
        return f"{size(self.total)} ({', '.join(f'{k} {size(v)}' for k, v in parts)})"


def generation_memory(arch: F.Arch, batch: int, prompt_len: int,
                      new_tokens: int) -> GenerationEstimate:
    """Bytes of sampling `new_tokens` after a `prompt_len` prompt, `batch` rows alike.

    kv_cache: keys and values (B, h, n, hs) per layer for n = prompt + new tokens, a routed
    layer's at the 2c share decode.make_caches allots it; prefill: the prompt's logits and
    the widest layer's tensors, float32, plus in a routed layer the mask and attention scores
    among the ~c * P routed prompt tokens (B * (cP)^2 * (1 + 4h) bytes); rope: every layer's
    cos and sin tables and the decode loop's e^{i theta} table over n positions;
    bookkeeping: STEP_BOOKKEEPING + ROW_BOOKKEEPING * B per decoded token.
    """
    d, n = arch.d_model, prompt_len + new_tokens
    kv = 0
    for i in range(arch.n_layers):
        cap = arch.capacity(i)
        slots = n if cap is None else min(n, max(16, math.ceil(2 * cap * n)))
        kv += 2 * batch * slots * d * 4
    widest = (4 * d + arch.mlp_mult * arch.d_ff) * 4
    prefill = batch * prompt_len * (2 * arch.vocab * 4 + widest)
    routed = [c for c in arch.capacities if c is not None]
    if routed:
        k = max(routed) * prompt_len
        prefill += int(batch * k * k * (1 + 4 * arch.n_heads))
    hs = d // arch.n_heads
    rope = n * hs * 4 * arch.n_layers + n * hs * 4  # cos, sin per layer; complex table
    return GenerationEstimate(kv, prefill, rope,
                              new_tokens * (STEP_BOOKKEEPING + ROW_BOOKKEEPING * batch))


def largest_fitting(fits, low: int, high: int) -> int:
    """The largest n in [low, high] with fits(n), fits monotone (True, then False); low - 1
    if none."""
    if not fits(low):
        return low - 1
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def divisors(n: int) -> list[int]:
    """The divisors of n, largest first (the micro-batch sizes that split a batch of n)."""
    return [m for m in range(n, 0, -1) if n % m == 0]


def micro_batch_by_estimate(arch: F.Arch, seq_len: int, per_process: int, free: int,
                            dtype: str = "float32", activation_checkpointing: bool = False,
                            shards: int = 1, processes: int = 1) -> int:
    """The largest divisor of `per_process` whose training_memory, times the `processes`
    sharing the memory, is at most `free` bytes; 0 if not even one sequence fits."""
    for m in divisors(per_process):
        est = training_memory(arch, seq_len, m, dtype, activation_checkpointing, shards)
        if est.total * processes <= free:
            return m
    return 0


def halving_search(per_process: int, start: int, fits) -> int:
    """The first micro-batch size that `fits(n) -> bool` accepts, trying `start` (a divisor of
    `per_process`), then the largest divisor at most half the last one tried (a trial that runs
    out of memory at n is retried at about n/2); 0 if even 1 does not fit."""
    n = start
    while n >= 1:
        if fits(n):
            return n
        n = next((m for m in divisors(per_process) if m <= n // 2), 0)
    return 0


UNITS = {"b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
         "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_size(text: str) -> int | None:
    """'80GB' -> 80e9, '24GiB' -> 24 * 2**30, '1.5TB'; None for anything else (no unit, zero)."""
    t = text.strip().lower().replace(" ", "")
    unit = next((u for u in sorted(UNITS, key=len, reverse=True) if t.endswith(u)), None)
    if unit is None:
        return None
    try:
        x = float(t[:-len(unit)])
    except ValueError:
        return None
    return int(x * UNITS[unit]) if math.isfinite(x) and x > 0 else None


def fit_advice(arch: F.Arch, seq_len: int, per_process: int, micro: int, dtype: str,
               activation_checkpointing: bool, parallel: str, processes: int, free: int) -> list[str]:
    """What would make a step that does not fit in `free` bytes fit: each change on its own
    (a smaller micro_batch_size, activation checkpointing, fsdp over these processes, fsdp
    over more processes of this memory), or nothing it names fits."""
    def fits(m=micro, ckpt=activation_checkpointing, shards=processes if parallel == "fsdp" else 1):
        return training_memory(arch, seq_len, m, dtype, ckpt, shards).total <= free

    out = []
    smaller = micro_batch_by_estimate(arch, seq_len, per_process, free, dtype,
                                      activation_checkpointing,
                                      processes if parallel == "fsdp" else 1)
    if 0 < smaller < micro:
        out.append(f"micro_batch_size {smaller}")
    if not activation_checkpointing and fits(ckpt=True):
        out.append("train.activation_checkpointing: true")
    if parallel != "fsdp" and processes > 1 and fits(shards=processes):
        out.append(f"train.parallel: fsdp over the {processes} processes")
    batch = per_process * processes
    more = next((n for n in (2 ** k for k in range(1, 11))
                 if n > processes and batch % n == 0 and fits(min(micro, batch // n), shards=n)), None)
    if more and (parallel == "fsdp" or not out):
        out.append(f"train.parallel: fsdp over {more} processes (--processes {more})")
    return out or ["a smaller model or micro-batch with activation checkpointing and fsdp "
                   "together, or a device with more memory"]


# ---------------------------------------------------------------- what the machine has
MEMINFO = Path("/proc/meminfo")
CGROUP = Path("/sys/fs/cgroup")


def cpu_available_bytes() -> int | None:
    """Memory this process could still take: MemAvailable of /proc/meminfo, capped by the
    cgroup's limit less its usage (a container, a Slurm job); None where neither is known."""
    found = []
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    for limit, usage in (("memory.max", "memory.current"),  # cgroup v2, then v1
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            cap = (CGROUP / limit).read_text().strip()
            if cap != "max" and int(cap) < 2 ** 60:  # v1 writes "no limit" as a huge number
                found.append(int(cap) - int((CGROUP / usage).read_text().strip()))
        except (OSError, ValueError):
            continue
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return max(0, min(found))


def device_available_bytes(device: str) -> int | None:
    """Free bytes where a run on `device` (cpu, cuda, cuda:N) allocates: RAM for the CPU,
    torch.cuda.mem_get_info's free device memory for CUDA (torch imported only then)."""
    if not device.startswith("cuda"):
        return cpu_available_bytes()
    import torch

    return int(torch.cuda.mem_get_info(torch.device(device))[0])


def fit_problems(spec, runs, micro: dict[int, int], device: str, world: int = 1,
                 local: int = 1) -> list[str]:
    """One line per run (plan.RunPlan) of a spec whose training step cannot fit where it runs:
    training_memory against the free memory, RAM for the CPU, shared by the `local` processes
    of this machine, or under torchrun (`world` > 1) each rank's own GPU (LOCAL_RANK).
    `micro`: run id (or batch size) -> sequences per forward pass of one process. Estimated
    under the spec's train.activation_checkpointing and, with train.parallel fsdp, its shards
    over the `world` processes, as plan and `auto` estimate them. `modexp run` refuses such
    runs before it writes anything."""
    cuda = device.startswith("cuda")
    if cuda and world > 1 and ":" not in device:
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}"
    free = device_available_bytes(device)
    if free is None:
        return []
    here = 1 if cuda else local
    ckpt, shards = spec.train.activation_checkpointing, world if spec.train.parallel == "fsdp" else 1
    models = {m.name: m for m in spec.models}
    problems = []
    for r in runs:
        arch = F.arch_from_config(models[r.model], spec.variants[r.variant], r.vocab)
        m = micro[r.run_id] if r.run_id in micro else micro[r.batch_size]
        est = training_memory(arch, r.seq_len, m, "bfloat16" if cuda else "float32", ckpt, shards)
        if est.total * here > free:
            procs = f" x {here} processes" if here > 1 else ""
            problems.append(f"{r.run_id}: a training step needs about {est.summary()}{procs}, "
                            f"and {device} has {size(free)} free; allowed: a smaller "
                            "train.micro_batch_size (gradient accumulation keeps the batch), "
                            "a smaller model, or a machine with more memory")
    return problems
