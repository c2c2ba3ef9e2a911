"""How a model is spread over torchrun's processes, and its activation memory traded for compute.

torchtitan's order, applied once by the Trainer before it builds its optimisers (`parallelize`):
1. activation checkpointing (`train.activation_checkpointing`): each block's forward runs
   under `torch.utils.checkpoint.checkpoint(..., use_reentrant=False)`, so backward recomputes
   the block's activations instead of keeping them: a step holds the block inputs (B, T, d)
   of every layer plus one block's internals, for about one more forward of compute. The
   block stays where it was (`model.blocks[i]`, called through `__call__`, its hooks firing
   once per forward; only its bound `forward` is wrapped), so state_dict keys, isinstance
   checks (`Transformer.routed`) and checkpoints are unchanged. The forward is a pure
   function of its inputs and buffers (drawn routing reads its (step, row) buffers, set
   before the forward and unchanged until the next micro-batch), so the recomputation
   reproduces it bit for bit, and so do the gradients.
2. torch.compile (`train.compile`): under FSDP each block is compiled on its own before it
   is sharded (torchtitan's per-block compile), so FSDP's hooks stay outside the graphs;
   otherwise the whole model (DDP-wrapped or not), as before.
3. FSDP2 (`train.parallel: fsdp`, world > 1): `fully_shard` on every block (its router and
   predictor inside it: one unit per layer), then on the root (embedding, final norm, head).
   Parameters, gradients and AdamW state are sharded over the processes (DTensors, dim 0);
   each block's weights are all-gathered just before its forward (and again for backward),
   and its gradients reduce-scattered (averaged) after its backward.
   Otherwise DDP (world > 1), or the model itself (one process: `fsdp` changes nothing).

Buffers under FSDP2. fully_shard shards parameters only; buffers stay plain local tensors on
every process, never broadcast: the RoPE tables (made at build, equal everywhere), the
decision thresholds (folded from all-reduced quantiles, so equal on every rank:
calibrate.py), random routing's seed (from the run seed) and its per-rank draw position
(`Transformer.rank_local_buffers`: each rank's first global row, which a broadcast would
overwrite with rank 0's). DDP is told the last explicitly; FSDP2 has no buffer sync to avoid.

Precision. Under FSDP the parameters stay float32 and the Trainer's bf16 autocast does the
mixed precision (no `MixedPrecisionPolicy(param_dtype=bf16)`): the router and the predictor
compute in float32 under autocast (mod.py `router_logits`: bf16 logits tie at top-k), which a
bf16 parameter would defeat, and DDP and FSDP then compute the same numbers. The price is
all-gathering float32 weights (twice the bytes of bf16). On the CPU nothing is cast: FSDP's
float32 numbers differ from one process's only by reduction order.

Gradient accumulation under FSDP reduce-scatters after every micro-batch (no
`set_requires_gradient_sync(False)`): gradients then stay sharded, 1/world of them per
process. Skipping the sync would keep each unit's full float32 gradient until the last
micro-batch (28 GB for 7B parameters on every GPU), the memory FSDP is there to save; DDP
keeps its no_sync (its gradients are whole anyway). `accumulation_context` picks.

Gradient clipping over DTensor gradients (`clip_grad_norm`): the total norm of the local
shards is a partial sum that `full_tensor()` reduces over the processes before scaling, so
every process clips by the global norm. The LM's and the predictors' norms stay separate
(train.py).
"""

from __future__ import annotations

import functools
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import nn

from modexp.spec import TrainConfig

if TYPE_CHECKING:  # annotation only: the Trainer's context
    from modexp.training.train import Context


def is_sharded(cfg: TrainConfig, world: int) -> bool:
    """Whether the parameters are sharded (FSDP2): train.parallel fsdp over more than one process."""
    return cfg.parallel == "fsdp" and world > 1


def parallelize(model: nn.Module, cfg: TrainConfig, ctx: Context) -> tuple[nn.Module, nn.Module]:
    """(the wrapper whose gradients sync: DDP or the model, the callable to train: compiled or
    not), in the order of the module docstring. `model` is changed in place (checkpointed
    forwards, FSDP's DTensor parameters), so build its optimisers after this."""
    if cfg.activation_checkpointing:
        checkpoint_blocks(model)
    if is_sharded(cfg, ctx.world):
        if cfg.compile:
            for block in model.blocks:
                block.compile(backend=ctx.compile_backend)
        shard(model, ctx.device)
        return model, model
    wrapped = replicate(model, ctx.device) if ctx.world > 1 else model
    # compile outside DDP: Dynamo then splits graphs at DDP's buckets, so gradient
    # all-reduce overlaps the backward; no_sync stays on the wrapper (run eagerly, not traced)
    return wrapped, torch.compile(wrapped, backend=ctx.compile_backend) if cfg.compile else wrapped


# ---------------------------------------------------------------- activation checkpointing
def checkpoint_blocks(model: nn.Module) -> None:
    """Recompute every block's activations in backward (module docstring, point 1)."""
    for block in model.blocks:
        block.forward = functools.partial(_recomputed, block.forward)


def _recomputed(forward, *args, **kwargs):
    """forward(*args) under non-reentrant checkpointing while gradients are recorded; plain
    otherwise (evaluation and calibration keep no activations to drop)."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


# ---------------------------------------------------------------- FSDP2
def shard(model: nn.Module, device: torch.device) -> None:
    """fully_shard every block, then the root, over one mesh of all the processes."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    # FSDP2 warns when a unit returns a view (a block's x is its index_add's (B*T, d) result
    # viewed as (B, T, d)), since an in-place op on such a view would skip the all-gather of
    # backward. Nothing modifies a block's output in place (Transformer.forward hands it to
    # the next block; every block's update is out of place), and tests/test_parallel.py holds
    # FSDP's gradients to one process's, so the warning says nothing here.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(.*\) returned a view tensor",
                            category=UserWarning)
    for block in model.blocks:  # one unit per layer: its router and predictor with it
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the embedding, the final norm, the head


def accumulation_context(wrapped: nn.Module, sync: bool):
    """The context of a micro-batch's forward and backward: DDP's no_sync() on all but the
    last one; FSDP reduce-scatters every micro-batch (module docstring); one process: none."""
    if sync or not isinstance(wrapped, nn.parallel.DistributedDataParallel):
        return nullcontext()
    return wrapped.no_sync()


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the gradients of params to a total 2-norm of max_norm; the norm before clipping.
    Plain tensors: torch's clip_grad_norm_. DTensor shards: the global norm (module docstring)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not any(isinstance(g, DTensor) for g in grads):
        return nn.utils.clip_grad_norm_(params, max_norm)
    total = nn.utils.get_total_norm(grads, 2.0)
    total = total.full_tensor() if isinstance(total, DTensor) else total
    nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


# ---------------------------------------------------------------- DDP
def replicate(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP over the process group, each rank's draw position left its own."""
    ids = [device.index] if device.type == "cuda" else None
    # each rank's draws start at its own global row: never overwritten by rank 0's
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        model, model.rank_local_buffers())
    # every parameter gets a gradient each step (routers via the gate, predictors via
    # their BCE), so DDP needs no search for unused parameters. No buffer broadcast
    # before each forward: the buffers are the RoPE tables (made at build), the decision
    # thresholds (folded from all-reduced quantiles, so equal on every rank: calibrate.py)
    # and random routing's draw counter (advanced alike on every rank)
    return ddp_wrap(model, ids)


def ddp_wrap(model: nn.Module, device_ids: list[int] | None) -> nn.Module:
    """DistributedDataParallel without a buffer broadcast before each forward. torch 2.13
    deprecates broadcast_buffers for forward_sync_buffers, whose False still syncs buffers at
    init; its own warning says to keep broadcast_buffers=False until then, so it is kept and
    the warning silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


# ---------------------------------------------------------------- sharded checkpoints
def sharded_state(model: nn.Module, opts: dict[str, torch.optim.Optimizer]) -> dict:
    """{"model": its state dict, name: each optimiser's}, each process holding its shards
    (DTensors) keyed by parameter name (torch.distributed.checkpoint's state_dict API): what
    dcp.save writes and dcp.load fills in place. A fresh optimiser's state is initialised
    first (an lr-0 step), so a load has tensors of the right shapes to fill."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    return {"model": get_model_state_dict(model),
            **{name: get_optimizer_state_dict(model, opt) for name, opt in opts.items()}}


def load_sharded_state(model: nn.Module, opts: dict[str, torch.optim.Optimizer], state: dict) -> None:
    """Put a filled `sharded_state` back into the model and the optimisers."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

    set_model_state_dict(model, state["model"])
    for name, opt in opts.items():
        set_optimizer_state_dict(model, opt, state[name])
