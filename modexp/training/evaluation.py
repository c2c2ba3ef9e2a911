"""One evaluation pass over held-out batches: LM loss, routed fractions, how well the
causal decision matches top-k membership, with 95% intervals over the held-out sequences, and
where in the sequence the causal decisions route (fractions by position bin)."""

from __future__ import annotations

import math

import torch


def eval_pass(model, batches, routing: str, device: torch.device, autocast,
              rank: int = 0, world: int = 1) -> dict:
    """Mean LM loss over the validation batches, plus routing stats.

    Under DDP (world > 1) each rank scores every world-th batch and the scores are gathered
    back in the batches' order, so every rank gets the row one process computes over all of
    them (same batches, same sums in the same order), for 1/world of the work."""
    starts = [0]  # drawn routing sees each held-out sequence at its own row, whatever the chunking
    for x, _ in batches[:-1]:
        starts.append(starts[-1] + x.size(0))
    mine = [_score(model, x, y, routing, device, autocast, start)
            for (x, y), start in list(zip(batches, starts))[rank::world]]
    if world == 1:
        return _summarize(mine, routing)
    import torch.distributed as dist

    parts = [None] * world
    dist.all_gather_object(parts, [_to_cpu(s) for s in mine])
    return _summarize([parts[i % world][i // world] for i in range(len(batches))], routing)


def _score(model, x, y, routing: str, device, autocast, start: int) -> tuple:
    """One batch, its first sequence at held-out row `start`: (its mean LM loss, its summed
    stats, its per-sequence stats)."""
    model.set_draws(0, start)
    with autocast():
        out = model(x.to(device), y.to(device), routing=routing)
    seq = {k: v.float() / x.size(1) for k, v in out.stats.items() if k.endswith("_seq")}  # (R, B)
    return out.lm_loss.float(), {k: v.float() for k, v in out.stats.items() if not k.endswith("_seq")}, seq


def _to_cpu(score: tuple) -> tuple:
    loss, counts, seq = score
    return loss.cpu(), {k: v.cpu() for k, v in counts.items()}, {k: v.cpu() for k, v in seq.items()}


def _summarize(scores: list[tuple], routing: str) -> dict:
    """The row of a pass from its batches' scores, in the batches' order."""
    losses, counts, per_seq = [], {}, {}
    for loss, stats, seq in scores:
        losses.append(loss)
        for k, v in stats.items():
            counts[k] = counts.get(k, 0) + v
        for k, v in seq.items():  # (R, B): one column per sequence, (R, N) over the batches
            per_seq.setdefault(k, []).append(v)
    row = {"eval_loss": torch.stack(losses).mean().item(), "causal_ok": "pred_tp" in counts}
    if "routed" in counts:
        row["routed_frac"] = (counts["routed"] / counts["tokens"]).tolist()
    if "pred_tp" in counts:
        row |= predictor_scores(counts)
        acc, routed = (torch.cat(per_seq[k], dim=1) for k in ("pred_correct_seq", "decided_seq"))
        row["predictor_acc_ci"] = seq_interval(acc.mean(0))  # layers pooled, as predictor_acc
        if routing == "causal":  # on a top-k pass the decisions route nothing
            row["routed_frac_ci"] = [seq_interval(r) for r in routed]  # per routed layer
            starts, fracs = position_bins(counts["decided_pos"], counts["tokens"])
            row |= {"routed_frac_pos": fracs, "pos_bin_starts": starts}
    return row


POS_BINS = 16  # bins of the routed fraction by position (fewer when the sequence is shorter)


def position_bins(decided: torch.Tensor, tokens: torch.Tensor) -> tuple[list[int], list[list[float]]]:
    """The routed fraction by position: decided (R, T) positive decisions per routed layer and
    position over `tokens` scored tokens, in min(POS_BINS, T) bins of (near) equal width.

    Returns the bins' first positions and, per routed layer, each bin's fraction of its tokens
    routed. Top-k routes k of T in every sequence wherever its scores put them; a causal
    decision sees only the prefix, so a drift across positions (early tokens, whose prefix
    thresholds rest on few scores, routed more or less often) shows here and not in the mean.
    """
    R, T = decided.shape
    n = min(POS_BINS, T)
    edges = [round(i * T / n) for i in range(n + 1)]
    per_pos = tokens.item() / T  # sequences scored (each contributes one token per position)
    fracs = [[decided[r, a:b].sum().item() / (per_pos * (b - a)) for a, b in zip(edges, edges[1:])]
             for r in range(R)]
    return edges[:-1], fracs


def seq_interval(v: torch.Tensor) -> list[float] | None:
    """95% interval of the mean of per-sequence values v (N,): mean +- 1.96 s / sqrt(N).

    Sequences, not tokens, are the independent units: a sequence's tokens route alike (its
    top-k is relative to its own scores), so a token-level interval would be far too narrow.
    """
    n = v.numel()
    if n < 2:
        return None
    mean, half = v.mean().item(), 1.96 * v.std().item() / math.sqrt(n)
    return [mean - half, mean + half]


def predictor_scores(c: dict) -> dict:
    """Accuracy, precision, recall of the causal decision against top-k membership."""
    tp, fp, fn, tn = (c[k].sum().item() for k in ("pred_tp", "pred_fp", "pred_fn", "pred_tn"))
    return {"predictor_acc": (tp + tn) / max(tp + fp + fn + tn, 1),
            "predictor_precision": tp / max(tp + fp, 1), "predictor_recall": tp / max(tp + fn, 1)}
