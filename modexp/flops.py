"""Parameter and FLOP accounting: pure functions of the architecture, apart from any model.

Notation: T sequence length, L layers, d width,
h heads, d_ff MLP width, V vocabulary, t the tokens a layer actually processes (T for a dense
layer, k = max(1, floor(c*T)) for a routed one). A multiply-add counts as 2 FLOPs.

Conventions:
- "matmul" (default): every matmul by its shape, full-square attention (no causal discount),
  LM head included, embedding lookup free. This is what torch's FlopCounterMode measures, and
  what torchtitan / OLMo-core count (they too charge the head and skip the embedding).
- "chinchilla": Hoffmann et al. 2022, Appendix F: the matmul terms plus 2*T*V*d for the
  embedding and 3*h*T*T per layer for the softmax.
Training = forward + backward = 3 x forward (backward is two matmuls per forward matmul:
grads w.r.t. inputs and weights; Kaplan et al. 2020 sec. 2.1). The causal predictor reads
stop-gradient inputs, so its backward has no input-gradient matmul of its first layer and is
counted exactly (predictors_train_flops).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CONVENTIONS = ("matmul", "chinchilla")


@dataclass(frozen=True)
class Arch:
    """The numbers that fix a model's parameters and FLOPs (vanilla: no routed layers)."""

    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    vocab: int
    mlp_mult: int = 2  # matmuls in the MLP: 2 plain (up, down), 3 gated SwiGLU (gate, up, down)
    tied: bool = False
    capacities: tuple[float | None, ...] = ()  # per layer; None or absent = dense
    predictor_hidden: int = 0  # 0 = no causal predictor MLP
    router: bool = True  # False: random routing (the paper's control), no router matmul or params

    def capacity(self, layer: int) -> float | None:
        """Capacity of one layer, None when it is dense."""
        return self.capacities[layer] if layer < len(self.capacities) else None

    @property
    def n_routed(self) -> int:
        """How many layers are routed (each has its own router and predictor)."""
        return sum(c is not None for c in self.capacities)


def arch_from_config(model, variant, vocab: int) -> Arch:
    """The Arch of a model size (spec.ModelConfig) as a variant runs it: the variant's own
    `arch` (its registry entry's spec class, modexp/variants; duck-typed, so flops imports none)."""
    return variant.arch(model, vocab)


def model_arch(model, vocab: int, capacities: tuple[float | None, ...] = (),
               predictor_hidden: int = 0, router: bool = True) -> Arch:
    """An Arch of a model size (spec.ModelConfig) with a variant's routed layers."""
    return Arch(n_layers=model.n_layers, d_model=model.d_model, n_heads=model.n_heads,
                d_ff=model.ffn, vocab=vocab, mlp_mult=3 if model.mlp == "swiglu" else 2,
                tied=model.tie_embeddings, capacities=capacities,
                predictor_hidden=predictor_hidden, router=router)


def routed_k(capacity: float, seq_len: int) -> int:
    """Tokens a routed layer processes per sequence: k = max(1, floor(c*T)) (MoD paper)."""
    return max(1, math.floor(capacity * seq_len + 1e-9))  # guard 0.125*128 = 15.999...


def layer_tokens(arch: Arch, layer: int, seq_len: int) -> int:
    """Tokens a layer runs its attention and MLP on (t)."""
    cap = arch.capacity(layer)
    return seq_len if cap is None else routed_k(cap, seq_len)


# ---------------------------------------------------------------- parameters
def block_params(arch: Arch) -> int:
    """One transformer block: 2 RMSNorm gains, Q/K/V/O projections, MLP; no biases."""
    d = arch.d_model
    return 2 * d + 4 * d * d + arch.mlp_mult * d * arch.d_ff


def router_params(arch: Arch) -> int:
    """One routed layer's extras: router w (d, no bias) and the predictor MLP d->h->1 with biases."""
    h = arch.predictor_hidden
    predictor = (arch.d_model * h + h + h + 1) if h else 0
    return arch.d_model * arch.router + predictor


def param_counts(arch: Arch) -> dict[str, int]:
    """Exact parameter counts: total, embedding (token table + untied head), non_embedding."""
    d, V = arch.d_model, arch.vocab
    embedding = V * d * (1 if arch.tied else 2)
    body = arch.n_layers * block_params(arch) + arch.n_routed * router_params(arch) + d
    return {"total": embedding + body, "embedding": embedding, "non_embedding": body}


# ---------------------------------------------------------------- forward FLOPs
def attention_flops(t: int, d: int) -> int:
    """Q,K,V projections 2*t*d*3d, output 2*t*d*d, logits 2*t*t*d, values 2*t*t*d."""
    return 2 * t * d * 3 * d + 2 * t * d * d + 2 * t * t * d + 2 * t * t * d


def mlp_flops(t: int, arch: Arch) -> int:
    """2*t*d*d_ff per MLP matmul, m = 2 (plain) or 3 (SwiGLU)."""
    return 2 * t * arch.d_model * arch.d_ff * arch.mlp_mult


def router_flops(seq_len: int, arch: Arch) -> int:
    """Router 2*T*d on every token of a routed layer (the top-k itself is not a matmul);
    0 for random routing, which draws its choice instead of computing it."""
    return 2 * seq_len * arch.d_model * arch.router


def predictor_flops(seq_len: int, arch: Arch) -> int:
    """Predictor MLP on all T tokens: 2*T*d*h + 2*T*h*1."""
    h = arch.predictor_hidden
    return 2 * seq_len * (arch.d_model * h + h)


def layer_flops(arch: Arch, layer: int, seq_len: int, convention: str = "matmul") -> int:
    """Forward FLOPs of one layer on one sequence, router included, predictor excluded."""
    t, d = layer_tokens(arch, layer, seq_len), arch.d_model
    flops = attention_flops(t, d) + mlp_flops(t, arch)
    if arch.capacity(layer) is not None:
        flops += router_flops(seq_len, arch)
    if convention == "chinchilla":
        flops += 3 * arch.n_heads * t * t  # softmax (Hoffmann et al. 2022, App. F)
    return flops


def forward_flops(arch: Arch, seq_len: int, convention: str = "matmul") -> int:
    """Forward FLOPs of one sequence of the language model (predictors excluded)."""
    _check(convention)
    layers = sum(layer_flops(arch, i, seq_len, convention) for i in range(arch.n_layers))
    head = 2 * seq_len * arch.d_model * arch.vocab
    embed = 2 * seq_len * arch.vocab * arch.d_model if convention == "chinchilla" else 0
    return layers + head + embed


def predictors_forward_flops(arch: Arch, seq_len: int) -> int:
    """Forward FLOPs of every routed layer's causal predictor on one sequence."""
    return arch.n_routed * predictor_flops(seq_len, arch) if arch.predictor_hidden else 0


def inference_flops(arch: Arch, seq_len: int, convention: str = "matmul") -> int:
    """Forward FLOPs of one sequence as sampled: the LM forward plus its predictors."""
    return forward_flops(arch, seq_len, convention) + predictors_forward_flops(arch, seq_len)


def decode_flops(arch: Arch, prompt_len: int, steps: int) -> float:
    """Forward FLOPs of `steps` KV-cached decode steps of one row after a prompt_len prompt.

    Step s feeds the token at position p = prompt_len + s; in a dense layer it attends over
    the p + 1 cached keys (2*(p+1)*d for the logits, as much for the values: a decode step
    pays causal attention, not the full square). A routed layer's capacity is read as the
    fraction c of tokens that run its block (at decode: the measured causal routed
    fraction); such a token attends over about c*(p+1) keys, the routed tokens of its row.
    The predictor (if any) runs on every token and the router only on the routed ones (for
    the gate g(r)); without a predictor the router's logit is the decision, on every token.
    Matmul convention; an expected value, so a float.
    """
    d = arch.d_model
    block = attention_flops(1, d) - 4 * d + mlp_flops(1, arch)  # one token, keys excluded
    total = 0.0
    for p in range(prompt_len, prompt_len + steps):
        for i in range(arch.n_layers):
            c = arch.capacity(i)
            if c is None:
                total += block + 4 * (p + 1) * d
            else:
                router = router_flops(1, arch) * (c if arch.predictor_hidden else 1)
                total += c * (block + 4 * c * (p + 1) * d) + router
    per_token = 2 * d * arch.vocab + predictors_forward_flops(arch, 1)  # LM head, predictors
    return total + steps * per_token


def predictors_train_flops(arch: Arch, seq_len: int) -> int:
    """Training FLOPs of the predictors: forward 2T(dh + h), backward 2T(dh + 2h).

    The predictor reads stop-gradient(x) (MoD paper, sec. 3.5), so its backward has weight
    grads for both layers and the hidden activation's grad, but no input grad of layer one.
    """
    h, d = arch.predictor_hidden, arch.d_model
    return arch.n_routed * 2 * seq_len * (2 * d * h + 3 * h) if h else 0


def train_flops(arch: Arch, seq_len: int, convention: str = "matmul") -> int:
    """Training FLOPs of one sequence: 3x the LM forward (Kaplan et al. 2020) + predictors."""
    return 3 * forward_flops(arch, seq_len, convention) + predictors_train_flops(arch, seq_len)


def _check(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown FLOP convention {convention!r}; allowed: {', '.join(CONVENTIONS)}")
