"""FLOP and parameter formulas against hand-computed cases (flops.py's conventions)."""

import pytest

from modexp import flops as F

ONE = F.Arch(n_layers=1, d_model=4, n_heads=2, d_ff=8, vocab=10)


def test_dense_forward_matmul_by_hand():
    # T=3: QKV 2*3*4*12=288, out 2*3*4*4=96, logits+values 2*(2*9*4)=144, MLP 2*3*4*8*2=384,
    # head 2*3*4*10=240 -> 1152
    assert F.forward_flops(ONE, 3) == 1152


def test_dense_forward_chinchilla_by_hand():
    # matmul 1152 + embedding 2*3*10*4=240 + softmax 3*2*3*3=54
    assert F.forward_flops(ONE, 3, "chinchilla") == 1446


def test_routed_layer_by_hand():
    arch = F.Arch(n_layers=2, d_model=4, n_heads=2, d_ff=8, vocab=10, capacities=(None, 0.5))
    # T=4, k=2. dense: 384+128+256 + 512 = 1280; routed: 192+64+64 + 256 + router 32 = 608;
    # head 320
    assert F.forward_flops(arch, 4) == 1280 + 608 + 320
    # chinchilla adds embedding 2*4*10*4=320 and softmax 3*2*16 + 3*2*4
    assert F.forward_flops(arch, 4, "chinchilla") == 2208 + 320 + 96 + 24


def test_params_by_hand():
    # block: 2 norms 8 + attention 4*16 + MLP 2*4*8 = 136; final norm 4; emb 40; head 40
    assert F.param_counts(ONE) == {"total": 220, "embedding": 80, "non_embedding": 140}
    tied = F.Arch(n_layers=1, d_model=4, n_heads=2, d_ff=8, vocab=10, tied=True)
    assert F.param_counts(tied)["total"] == 180
    swiglu = F.Arch(n_layers=1, d_model=4, n_heads=2, d_ff=8, vocab=10, mlp_mult=3)
    assert F.param_counts(swiglu)["total"] == 220 + 32


def test_predictor_params_and_flops():
    arch = F.Arch(n_layers=2, d_model=4, n_heads=2, d_ff=8, vocab=10, capacities=(None, 0.5),
                  predictor_hidden=3)
    # router 4, predictor 4*3+3 + 3+1 = 19
    assert F.param_counts(arch)["total"] - F.param_counts(
        F.Arch(n_layers=2, d_model=4, n_heads=2, d_ff=8, vocab=10))["total"] == 4 + 19
    # forward 2*T*(d*h + h) = 2*4*15; training 2*T*(2dh + 3h) = 2*4*33
    assert F.predictors_forward_flops(arch, 4) == 120
    assert F.train_flops(arch, 4) == 3 * F.forward_flops(arch, 4) + 264


def test_capacity_one_differs_from_vanilla_only_by_router():
    base = dict(n_layers=4, d_model=64, n_heads=4, d_ff=256, vocab=256)
    vanilla = F.Arch(**base)
    full = F.Arch(**base, capacities=(None, 1.0, None, 1.0))
    T = 128
    assert F.forward_flops(full, T) - F.forward_flops(vanilla, T) == 2 * F.router_flops(T, full)
    assert F.param_counts(full)["total"] - F.param_counts(vanilla)["total"] == 2 * 64


@pytest.mark.parametrize("convention", F.CONVENTIONS)
def test_flops_monotone_in_capacity(convention):
    caps = [0.0625, 0.125, 0.25, 0.5, 0.75, 1.0]
    values = [F.forward_flops(F.Arch(n_layers=4, d_model=64, n_heads=4, d_ff=256, vocab=256,
                                     capacities=(None, c, None, c)), 256, convention) for c in caps]
    assert values == sorted(values) and len(set(values)) == len(values)


def test_routed_k():
    assert F.routed_k(0.125, 128) == 16
    assert F.routed_k(0.01, 10) == 1  # never zero tokens
    assert F.routed_k(1.0, 7) == 7


def test_unknown_convention():
    with pytest.raises(ValueError, match="matmul, chinchilla"):
        F.forward_flops(ONE, 3, "kaplan")


def test_decode_flops_by_hand():
    arch = F.Arch(n_layers=2, d_model=4, n_heads=2, d_ff=8, vocab=10, capacities=(None, 0.5))
    block = 2 * 4 * 12 + 2 * 4 * 4 + 2 * 4 * 8 * 2  # QKV, O, MLP of one token: 256
    dense = block + 4 * 4 * 4  # the token at position 3 attends over 4 keys
    routed = 0.5 * (block + 4 * (0.5 * 4) * 4) + 2 * 4  # half the tokens, half the keys; router
    assert F.decode_flops(arch, 3, 1) == dense + routed + 2 * 4 * 10  # + LM head
    two = F.decode_flops(arch, 3, 2) - F.decode_flops(arch, 3, 1)  # position 4: one more key
    assert two - (dense + routed + 80) == 4 * 4 + 0.5 * 4 * 0.5 * 4


def test_decode_flops_predictor_runs_on_every_token_router_on_routed_ones():
    base = dict(n_layers=2, d_model=4, n_heads=2, d_ff=8, vocab=10, predictor_hidden=3)
    skip_all = F.decode_flops(F.Arch(**base, capacities=(None, 0.0)), 5, 2)
    dense_only = F.decode_flops(F.Arch(**{**base, "n_layers": 1, "predictor_hidden": 0}), 5, 2)
    assert skip_all - dense_only == 2 * F.predictor_flops(1, F.Arch(**base))
