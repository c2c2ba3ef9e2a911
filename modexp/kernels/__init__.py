"""Fast paths for the model's hot spots: what models/build.py lays over the reference.

Each module replaces one field of modexp.models.ops.Kernels with a function that computes
what the reference computes, faster on some device, dtype or mode (docs/performance.md says
what each does, when it applies and what it buys, with the command that measures it):
- norm.py: RMSNorm with a closed-form backward (CPU, fp32 training);
- rope.py: the q/k/v projection with RoPE as one complex product on permuted weight rows
  (fp32/fp64 eager), else the halves formula with a hand-written backward;
- attention.py: causal attention as batched matmuls in causal query blocks (CPU training,
  short sequences);
- gather.py: the routed layer's top-k gather with a copy for a backward;
- decode.py: the decode loop with its weights bound once per generation, batch-1 decisions
  in Python floats, and oneDNN off on the CPU.
Nothing here imports modexp.models (the model is handed in) or anything above it.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from modexp.kernels.attention import CausalAttention
from modexp.kernels.decode import FastDecoder, block_step, routed_step
from modexp.kernels.gather import gather_rows
from modexp.kernels.norm import rms_norm
from modexp.kernels.rope import QKVRope


def for_device(device: torch.device) -> dict[str, Callable]:
    """The Kernels fields (modexp.models.ops) this package replaces for models on `device`.

    Made per model: the RoPE kernel keeps its permutations and, while a generation runs, the
    weights it bound; the attention kernel its causal biases.
    """
    rope = QKVRope()
    found = {"qkv_rope": rope.qkv_rope, "gather_rows": gather_rows, "block_step": block_step,
             "routed_step": routed_step, "decoder": functools.partial(FastDecoder, rope=rope)}
    if device.type == "cpu":  # their gains are the CPU's (docs/performance.md)
        found |= {"rms_norm": rms_norm, "attention": CausalAttention().attention}
    return found
