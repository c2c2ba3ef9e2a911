"""memory.py: the training-step estimate against torch's measured peak, the generation estimate
against the caches decoding allocates, and the free-memory readers (monkeypatched numbers)."""

from __future__ import annotations

import pytest
import torch

from modexp import flops as F
from modexp import memory as M
from modexp.spec import ModelConfig, ModVariant, TrainConfig, VanillaVariant

TOLERANCE = (1.0, 1.3)
"""The estimate adds every part at once, so it is at least the measured peak, and on these
tiny models at most 1.3x of it (float32; bfloat16 through CPU autocast, a proxy for CUDA's)."""

SHAPES = {  # d, layers, heads, vocab, micro-batch, seq_len, MLP
    "one block": (32, 2, 2, 256, 4, 32, "gelu"),
    "two query blocks": (48, 3, 4, 256, 16, 100, "gelu"),
    "SDPA, long": (128, 2, 2, 256, 4, 256, "gelu"),
    "SDPA, wide head": (128, 2, 1, 256, 4, 64, "gelu"),
    "large vocab": (64, 2, 4, 4096, 8, 128, "gelu"),
    "swiglu": (64, 4, 4, 256, 8, 64, "swiglu"),
}


def _measured_peak(cfg, variant, vocab, batch, seq_len, bf16):
    """Bytes: params, buffers and AdamW state held, plus the profiler's peak over one step."""
    from modexp.bench.memory import _state_bytes, peak_bytes
    from modexp.bench.timing import Stepper, random_batch
    from modexp.models.build import build_model

    torch.manual_seed(0)
    net = build_model(cfg, variant, vocab)
    step = Stepper(net, TrainConfig(batch_size=batch), random_batch(vocab, batch, seq_len), "cpu",
                   bf16=bf16)
    step.step()  # AdamW's state exists from the first step on
    return peak_bytes(step.step, "cpu", _state_bytes(step.net, *step.opts))[0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["vanilla", "mod"])
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_training_estimate_bounds_the_measured_peak(shape, kind, dtype):
    d, L, h, V, B, T, mlp = SHAPES[shape]
    cfg = ModelConfig(name="m", n_layers=L, d_model=d, n_heads=h, mlp=mlp)
    variant = (ModVariant(kind="mod", capacity=0.25, causal="predictor") if kind == "mod"
               else VanillaVariant(kind="vanilla"))
    est = M.training_memory(F.arch_from_config(cfg, variant, V), T, B, dtype)
    peak = _measured_peak(cfg, variant, V, B, T, dtype == "bfloat16")
    lo, hi = TOLERANCE
    assert lo * peak <= est.total <= hi * peak, (est, peak)


def test_estimate_parts_scale_as_documented():
    arch = F.Arch(n_layers=4, d_model=64, n_heads=4, d_ff=256, vocab=512)
    one, two = M.training_memory(arch, 64, 1), M.training_memory(arch, 64, 2)
    P = F.param_counts(arch)["total"]
    assert (one.params, one.grads, one.optimizer, one.weight_copies) == (4 * P, 4 * P, 8 * P, 0)
    assert two.params == one.params and two.optimizer == one.optimizer
    assert two.loss == 2 * one.loss and two.activations > one.activations
    bf16 = M.training_memory(arch, 64, 1, "bfloat16")
    assert bf16.weight_copies == 2 * P and bf16.activations < one.activations
    d = one.to_dict()
    assert d["total"] == one.total == sum(d[k] for k in ("params", "grads", "optimizer",
                                                         "weight_copies", "activations", "loss"))
    with pytest.raises(ValueError, match="dtype"):
        M.training_memory(arch, 64, 1, "float16")


def test_matmul_path_limits_agree_with_attention_py():
    from modexp.kernels import attention

    assert (M.MATMUL_MAX_T, M.MATMUL_MAX_HEAD, M.MATMUL_MAX_SCORES, M.MATMUL_ONE_BLOCK_T) == (
        attention.MAX_T, attention.MAX_HEAD, attention.MAX_SCORES, attention.ONE_BLOCK_T)


@pytest.mark.parametrize("kind", ["vanilla", "mod"])
def test_generation_kv_estimate_is_the_caches_decoding_allocates(kind):
    from modexp.models.decode import generate
    from modexp.models.build import build_model

    cfg = ModelConfig(name="m", n_layers=3, d_model=32, n_heads=2)
    variant = (ModVariant(kind="mod", capacity=0.25, route_every=2) if kind == "mod"
               else VanillaVariant(kind="vanilla"))
    torch.manual_seed(0)
    net = build_model(cfg, variant, 256).eval()
    prompt, new = 20, 300
    g = generate(net, torch.randint(0, 256, (2, prompt)), new, 1.0)
    est = M.generation_memory(F.arch_from_config(cfg, variant, 256), 2, prompt, new)
    routed_at = {i for i, _ in net.routed()}
    dense = sum(c.nbytes for i, c in enumerate(g.caches) if i not in routed_at)
    routed = sum(c.nbytes for i, c in enumerate(g.caches) if i in routed_at)
    # dense caches are allocated whole; a routed one grows by doubling, within the 2c its
    # estimate allots unless decoding routed more than twice the capacity
    full = 2 * 2 * (prompt + new) * 32 * 4
    assert dense == full * (3 if kind == "vanilla" else 2)
    assert routed <= est.kv_cache - dense
    assert est.total > est.kv_cache > 0 and est.bookkeeping == new * (M.STEP_BOOKKEEPING
                                                                      + 2 * M.ROW_BOOKKEEPING)


def test_largest_fitting():
    assert M.largest_fitting(lambda n: n <= 37, 1, 10 ** 9) == 37
    assert M.largest_fitting(lambda n: True, 1, 50) == 50
    assert M.largest_fitting(lambda n: False, 1, 50) == 0


def test_size_for_a_reader():
    assert M.size(3 * 2 ** 40) == "3,072 GiB" and M.size(4.1 * 2 ** 30) == "4.1 GiB"
    assert M.size(53 * 2 ** 20) == "53 MiB" and M.size(100) == "100 B"


def _files(tmp_path, meminfo=None, v2=None, v1=None):
    (tmp_path / "cg" / "memory").mkdir(parents=True, exist_ok=True)
    if meminfo is not None:
        (tmp_path / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {meminfo} kB\n")
    if v2 is not None:
        (tmp_path / "cg" / "memory.max").write_text(v2[0])
        (tmp_path / "cg" / "memory.current").write_text(v2[1])
    if v1 is not None:
        (tmp_path / "cg" / "memory" / "memory.limit_in_bytes").write_text(v1[0])
        (tmp_path / "cg" / "memory" / "memory.usage_in_bytes").write_text(v1[1])


def test_cpu_available_reads_meminfo_and_the_cgroup_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(M, "CGROUP", tmp_path / "cg")
    _files(tmp_path, meminfo=8 * 2 ** 20)  # 8 GiB available, no cgroup limit
    assert M.cpu_available_bytes() == 8 * 2 ** 30
    (tmp_path / "cg" / "memory.max").write_text("max\n")  # v2 without a limit
    (tmp_path / "cg" / "memory.current").write_text("1000\n")
    assert M.cpu_available_bytes() == 8 * 2 ** 30
    (tmp_path / "cg" / "memory.max").write_text(f"{2 * 2 ** 30}\n")  # a 2 GiB job, 1 GiB used
    (tmp_path / "cg" / "memory.current").write_text(f"{2 ** 30}\n")
    assert M.cpu_available_bytes() == 2 ** 30
    (tmp_path / "cg" / "memory.max").unlink()
    _files(tmp_path, v1=(str(2 ** 63), "5"))  # v1 "no limit"
    assert M.cpu_available_bytes() == 8 * 2 ** 30
    _files(tmp_path, v1=(str(3 * 2 ** 30), str(2 * 2 ** 30)))
    assert M.cpu_available_bytes() == 2 ** 30


def test_cpu_available_falls_back_to_sysconf(tmp_path, monkeypatch):
    monkeypatch.setattr(M, "MEMINFO", tmp_path / "none")
    monkeypatch.setattr(M, "CGROUP", tmp_path / "none")
    monkeypatch.setattr(M.os, "sysconf", lambda k: {"SC_AVPHYS_PAGES": 10, "SC_PAGE_SIZE": 4096}[k])
    assert M.cpu_available_bytes() == 40960


def test_cuda_available_reads_mem_get_info_without_a_gpu(monkeypatch):
    seen = []

    def fake(dev):
        seen.append(str(dev))
        return (5 * 2 ** 30, 80 * 2 ** 30)

    monkeypatch.setattr(torch.cuda, "mem_get_info", fake)
    assert M.device_available_bytes("cuda:1") == 5 * 2 ** 30 and seen == ["cuda:1"]
    monkeypatch.setattr(M, "cpu_available_bytes", lambda: 123)
    assert M.device_available_bytes("cpu") == 123


CHECKPOINTED = {  # deeper than SHAPES: checkpointing keeps one layer's internals of many
    "deep": (64, 6, 4, 256, 8, 64, "gelu"),
    "two query blocks": (48, 4, 4, 256, 16, 100, "gelu"),
    "SDPA, swiglu": (128, 4, 2, 512, 4, 256, "swiglu"),
}


def _checkpoint_blocks(net):
    """Each layer of net.blocks under torch.utils.checkpoint, non-reentrant (what
    train.activation_checkpointing asks of the Trainer), router and predictor inside."""
    from torch.utils.checkpoint import checkpoint

    for block in net.blocks:
        inner = block.forward
        block.forward = (lambda f: lambda *a: checkpoint(f, *a, use_reentrant=False))(inner)
    return net


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["vanilla", "mod"])
@pytest.mark.parametrize("shape", CHECKPOINTED, ids=list(CHECKPOINTED))
def test_checkpointed_estimate_bounds_the_measured_peak(shape, kind, dtype, monkeypatch):
    from modexp.models import build

    d, L, h, V, B, T, mlp = CHECKPOINTED[shape]
    cfg = ModelConfig(name="m", n_layers=L, d_model=d, n_heads=h, mlp=mlp)
    variant = (ModVariant(kind="mod", capacity=0.25, causal="predictor") if kind == "mod"
               else VanillaVariant(kind="vanilla"))
    real = build.build_model
    monkeypatch.setattr(build, "build_model", lambda *a, **k: _checkpoint_blocks(real(*a, **k)))
    arch = F.arch_from_config(cfg, variant, V)
    est = M.training_memory(arch, T, B, dtype, activation_checkpointing=True)
    peak = _measured_peak(cfg, variant, V, B, T, dtype == "bfloat16")
    lo, hi = TOLERANCE
    assert lo * peak <= est.total <= hi * peak, (est, peak)
    plain = M.training_memory(arch, T, B, dtype)
    assert est.recompute > 0 and est.activations + est.recompute < plain.activations
    assert "activation checkpointing" in est.summary()


def test_sharded_estimate_splits_the_state_and_gathers_one_layer_ahead():
    arch = F.Arch(n_layers=4, d_model=64, n_heads=4, d_ff=256, vocab=512, capacities=(None, 0.25) * 2,
                  predictor_hidden=16)
    one = M.training_memory(arch, 64, 2, "bfloat16")
    eight = M.training_memory(arch, 64, 2, "bfloat16", shards=8)
    P = F.param_counts(arch)["total"]
    assert (one.gathered, one.shards) == (0, 1)
    assert (eight.params, eight.grads, eight.optimizer, eight.weight_copies) == (
        -(-4 * P // 8), -(-4 * P // 8), P, -(-2 * P // 8))  # ceil: the last shard is padded
    assert (eight.activations, eight.loss) == (one.activations, one.loss)  # per process, unsharded
    layer = F.block_params(arch) + F.router_params(arch)
    root = 2 * 512 * 64 + 64  # token table, untied head, final norm
    assert eight.gathered == 4 * root + 3 * 4 * layer
    assert eight.total < one.total and "fsdp over 8" in eight.summary()
    both = M.training_memory(arch, 64, 2, "bfloat16", activation_checkpointing=True, shards=8)
    assert both.gathered == eight.gathered and both.activations < eight.activations
    with pytest.raises(ValueError, match="shards"):
        M.training_memory(arch, 64, 2, shards=0)
