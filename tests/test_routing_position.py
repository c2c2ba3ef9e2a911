"""The routed fraction by token position (evaluation.position_bins): its bins cover every
position once and give back the routed count, on a hand-made tensor and on a model's causal pass."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from modexp.models.build import build_model
from modexp.spec import ModelConfig, ModVariant
from modexp.training.evaluation import POS_BINS, eval_pass, position_bins

V = 64


def test_bins_by_hand():
    decided = torch.zeros(1, 20)
    decided[0, :5] = 3.0  # 3 of 3 sequences routed at positions 0-4, none after
    starts, fracs = position_bins(decided, torch.tensor(60))
    assert len(starts) == POS_BINS and starts[0] == 0 and starts == sorted(set(starts))
    widths = [b - a for a, b in zip(starts, starts[1:] + [20])]
    assert set(widths) <= {1, 2} and sum(widths) == 20  # near-equal bins, every position once
    routed = sum(f * w * 3 for f, w in zip(fracs[0], widths))
    assert routed == pytest.approx(15.0)
    assert fracs[0][0] == 1.0 and fracs[0][-1] == 0.0
    starts, fracs = position_bins(torch.ones(2, 5), torch.tensor(5))  # T < POS_BINS: one per position
    assert starts == [0, 1, 2, 3, 4] and fracs == [[1.0] * 5, [1.0] * 5]


@pytest.mark.parametrize("T", [37, 64])
def test_causal_pass_bins_sum_to_the_routed_count(T):
    """Each routed layer's bins, weighted by their tokens, sum to the tokens it routed on the
    causal pass (routed_frac); the top-k pass (decisions route nothing there) has no bins."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="t", n_layers=4, d_model=32, n_heads=2),
                        ModVariant(kind="mod", capacity=0.25, route_every=2, causal="predictor"), V)
    model.eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, V, (3, T), generator=g), torch.randint(0, V, (3, T), generator=g))
               for _ in range(2)]
    with torch.no_grad():
        row = eval_pass(model, batches, "causal", torch.device("cpu"), nullcontext)
        topk = eval_pass(model, batches, "topk", torch.device("cpu"), nullcontext)
    assert "routed_frac_pos" not in topk
    starts, fracs = row["pos_bin_starts"], row["routed_frac_pos"]
    widths = [b - a for a, b in zip(starts, starts[1:] + [T])]
    assert len(fracs) == len(row["routed_frac"]) == 2  # one list per routed layer
    n_seq = 6
    for layer, frac in enumerate(row["routed_frac"]):
        routed = sum(f * w * n_seq for f, w in zip(fracs[layer], widths))
        assert routed == pytest.approx(round(frac * n_seq * T), abs=1e-6)  # a whole count
        assert routed == pytest.approx(frac * n_seq * T, rel=1e-6)  # routed_frac is float32
        assert all(0.0 <= f <= 1.0 for f in fracs[layer])
    assert any(f > 0 for f in fracs[0] + fracs[1])  # something routed: the check is not 0 == 0
