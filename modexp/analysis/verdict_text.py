"""The verdict as a researcher reads it (Markdown; `modexp plot` prints it and writes it to
plots/summary.md): per budget a table of every family's fit, each variant's optimum over
families, the comparisons with their intervals and readings, the compute-equivalent gain,
and the reason for every "no verdict"; then the frontier. No torch."""

from __future__ import annotations

from modexp.analysis.frontier import LOSS_LAW
from modexp.analysis.roles import decides_of
from modexp.analysis.text import ci_text, compact, params_ci_text
from modexp.naming import budget_tag

METRIC = {"topk": "top-k", "causal": "causal"}


def _loss_label(f: dict, metric: str) -> str:
    """A fit's loss, as the table names it: a variant whose entry makes a causal decision
    names which of its two losses (top-k or causal), any other has one eval loss."""
    return METRIC[metric] if decides_of(f["kind"], f.get("router"), f.get("entry")) else "eval"


def _check(f: dict) -> str:
    d = f.get("diagnostics")
    if not d:
        return "-"
    if d["test"] == "lack of fit":
        return f"lack of fit p = {d['p']:.2g}"
    return "leave-one-out " + ("stable" if d["passed"] else "unstable")


def _family_rows(fits: dict) -> list[str]:
    rows = ["| variant | loss | family | sizes | optimum params | optimal loss | check | status |",
            "|---|---|---|---:|---:|---:|---|---|"]
    for name, f in fits.items():
        for metric, env in (("topk", f), ("causal", f.get("causal"))):
            if env is None:
                continue
            for fam, g in env["families"].items():
                ok = g["status"] == "ok"
                rows.append(f"| {name} | {_loss_label(f, metric)} | {fam} | {g['n_sizes']} | "
                            + (f"{compact(g['opt_params'])}{params_ci_text(g['opt_params_ci'])} | "
                               f"{g['opt_loss']:.4f}{ci_text(g['opt_loss_ci'])}" if ok else "- | -")
                            + f" | {_check(g)} | "
                            + ("ok" if ok else f"no verdict: {g['reason']}").replace("|", "/") + " |")
    return rows


def _optimum_line(tag: str, name: str, f: dict, metric: str) -> list[str]:
    env = f if metric == "topk" else f.get("causal")
    if env is None:
        return []
    label = f"{name} ({_loss_label(f, metric)} loss)"
    if env["status"] != "ok":
        lines = [f"- {tag} FLOPs, {label} optimum: no verdict: {env['reason']}"]
    else:
        lines = [f"- {tag} FLOPs, {label} optimum over families: {env['best_family']}, "
                 f"{compact(env['opt_params'])}{params_ci_text(env['opt_params_ci'])} params, "
                 f"loss {env['opt_loss']:.4f}{ci_text(env['opt_loss_ci'])}"
                 + (f" ({100 * env['bootstrap_interior']:.0f}% of refits interior)"
                    if env.get("bootstrap_interior") is not None else "")]
    return lines + [f"  {note}" for note in env.get("left_out", [])]


def _delta_text(d: dict | None, what: str) -> str:
    if d is None:
        return f"{what}: no verdict (a side has no optimum)"
    text = (f"{what} {d['delta_loss']:+.4f}{ci_text(d['delta_loss_ci'], '{:+.4f}')} "
            f"({d['draws']} draws): {d['reading']}")
    return text + (f" ({d['reason']})" if d.get("reason") else "")


def _gain_text(g: dict | None, name: str) -> str:
    if g is None:
        return f"compute-equivalent gain of {name}: no verdict"
    if g["status"] != "ok":
        return f"compute-equivalent gain of {name}: no verdict: {g['reason']}"
    ci = g["gain_ci"]
    lo, hi = g["read_between"]
    return (f"{name} is worth {g['gain']:.2f}x" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
            + f" the compute (vanilla would need {g['baseline_flops']:.3g} FLOPs to reach its loss, "
            f"read between the measured {budget_tag(lo)} and {budget_tag(hi)})"
            + (f"; {g['reason']}" if g.get("reason") else ""))


def _side_text(s: dict) -> str:
    label = "causal" if s["metric"] == "causal" else "eval"
    return (f"{s['variant']} ({s['family']}, {label} loss) "
            f"{compact(s['params'])}{params_ci_text(s['params_ci'])} params, "
            f"loss {s['loss']:.4f}{ci_text(s['loss_ci'])}, "
            f"{s['forward_flops_per_token']:.3g} fwd FLOPs/token")


def _budget_lines(b: dict) -> list[str]:
    tag, vd = budget_tag(b["budget"]), b["verdict"]
    lines = [f"### {tag} training FLOPs", "", *_family_rows(b["fits"]), ""]
    for name, f in b["fits"].items():
        lines += _optimum_line(tag, name, f, "topk") + _optimum_line(tag, name, f, "causal")
    if vd["status"] != "ok":
        lines.append(f"- **{tag} FLOPs: no verdict**: {vd['reason']}")
        lines += [f"  - {d}" for d in vd["details"]]
    else:
        lines += [f"- **{tag} FLOPs**: best MoD {_side_text(vd['mod'])}",
                  f"  vs best vanilla {_side_text(vd['vanilla'])}",
                  "  " + _delta_text(vd["mod_vs_vanilla"], "MoD - vanilla loss (MoD causal)")
                  + f"; MoD/vanilla params {vd['params_ratio']:.2f}x, "
                  f"fwd FLOPs/token {vd['fwd_flops_ratio']:.2f}x",
                  "  " + _delta_text(vd["mod_vs_vanilla_topk"], "beside it, on top-k:"),
                  "  " + _gain_text(vd["gain"], "MoD")]
    for name, t in vd["treatments"].items():
        if t.get("causal_minus_topk"):
            lines.append("  " + _delta_text(t["causal_minus_topk"], f"{name} causal - top-k loss"))
        if len(vd["treatments"]) > 1 and t["status"] == "ok":
            lines.append(f"  treatment {name}: " + _delta_text(t["vs_baseline"], "vs vanilla")
                         + "; " + _gain_text(t["gain"], name))
    for name, r in vd["random"].items():
        if r["status"] != "ok":
            lines.append(f"  random routing {name}: no verdict: {r['reason']}")
            continue
        for other in ("vs_mod", "vs_vanilla"):
            if r[other]:
                lines.append(f"  random routing {name} " + _delta_text(r[other], other.replace("_", " ")))
        for t, d in vd["controls"][name].get("vs_treatments_same_families", {}).items():
            if d:
                lines.append(f"  random routing {name} " + _delta_text(
                    d, f"vs {t} in the same families ({', '.join(d['families'])})"))
        lines.append(f"  random routing {name}: " + _gain_text(vd["controls"][name]["gain"], name))
    return lines + [""]


def verdict_markdown(v: dict) -> str:
    """The verdict per budget and the frontier as Markdown lines (95% bootstrap intervals)."""
    lines = ["", "## isoFLOP verdict (95% bootstrap intervals in brackets)", "",
             "MoD is scored on its causal eval loss (what sampling gets; top-k routing sees later "
             "tokens), reported beside its top-k loss. Each variant's optimum is the lowest over "
             "its shape families, chosen inside the bootstrap.", ""]
    for b in v["budgets"]:
        lines += _budget_lines(b)
    lines += ["## compute-optimal frontier (N_opt = A C^a over the optima above)", ""]
    for name, f in v["frontier"].items():
        if f["status"] != "ok":
            lines.append(f"- {name}: no verdict: {f['reason']}")
            continue
        n = f["params"]
        losses = ", ".join(f"{budget_tag(c)} {l_:.4f}{ci_text(ci)}"
                           for c, l_, ci in zip(f["budgets"], f["opt_loss"], f["opt_loss_ci"]))
        lines.append(f"- {name} ({f['n_budgets']} budgets, {METRIC[f['metric']]} loss): a = "
                     f"{n['exponent']:.3f}{ci_text(n['exponent_ci'], '{:.3f}')}"
                     + (f"; {f['note']}" if f["note"] else "") + f"; optimal loss {losses}")
    lines.append(f"- L_opt(C) is {LOSS_LAW}")
    return "\n".join(lines) + "\n"
