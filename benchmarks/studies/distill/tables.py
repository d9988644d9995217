"""The tables and comparison sentences of benchmarks/results/distill/full_model_distill.md, each from the records
(a dict unit name -> record, as full_model_distill_stats.load returns) and nothing else.

Every interval is a 95% bootstrap from full_model_distill_stats (test windows, questions stratified by task,
conversations); differences are paired over the same windows or questions.
"""

from __future__ import annotations

import math

import numpy as np

from benchmarks.studies.distill.stats import (
    MC_TASKS,
    METRIC,
    bbh_groups,
    best,
    bits,
    ci,
    kl_difference,
    kl_per_token,
    layers_of,
    mc_groups,
    model_rank,
    paired,
    ppl,
    ppl_boot,
    ppl_data,
    rel_err_boot,
    split_model,
    stratified_boot,
)


def fit_table(R: dict, arms: list[str], kind: str = "fit") -> tuple[str, dict]:
    """Per block: test relative error of every arm at its chosen lr [95% CI], and each arm minus linear;
    an arm without a record for a block shows "–" (a block is listed once any arm has it)."""
    head = "| block | " + " | ".join(f"{a}: params (width), lr, test rel. error [95%]" for a in arms)
    head += "".join(f" | {a} − linear [95%]" for a in arms if a != "linear") + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    diffs = {}
    for k in layers_of(R):
        runs = {a: R.get(f"{kind if kind == 'fit' or k != layers_of(R)[0] else 'fit'}__{a}__L{k}") for a in arms}
        have = [a for a in arms if runs[a] is not None]
        if not have:
            continue
        tests = {a: best(runs[a])["test"] for a in have}
        boot = dict(zip(have, rel_err_boot([tests[a]["err2"] for a in have], [tests[a]["y2"] for a in have]).T))
        cells = []
        for a in arms:
            if a not in tests:
                cells.append("–")
                continue
            lo, hi = ci(boot[a])
            cells.append(f"{runs[a]['params']:,} ({runs[a]['width']}), {runs[a]['best_lr']:g}, "
                         f"**{tests[a]['rel_err']:.3f}** [{lo:.3f}, {hi:.3f}]")
        if "linear" in arms:
            for a in arms:
                if a == "linear":
                    continue
                if a not in tests or "linear" not in tests:
                    cells.append("–")
                    continue
                lo, hi = ci(boot[a] - boot["linear"])
                d = tests[a]["rel_err"] - tests["linear"]["rel_err"]
                diffs.setdefault(a, {})[k] = (d, lo, hi)
                cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines), diffs


def lr_table(R: dict, arms: list[str]) -> str:
    lrs = sorted({float(lr) for r in R.values() if r["kind"] == "fit" for lr in r["lrs"]})
    # val error at step 0, where the records have it: a warm start's fit must beat where it began
    starts = any("start" in r for r in R.values() if r["kind"] == "fit" and r.get("arm") in arms)
    head = ("| arm | block | " + "val at step 0 | " * starts + " | ".join(f"val @ {lr:g}" for lr in lrs)
            + " | train MSE first → last (best lr) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for a in arms:
        for k in layers_of(R):
            r = R.get(f"fit__{a}__L{k}")
            if r is None:
                continue
            vals = [f"{r['lrs'][f'{lr:g}']['val']['rel_err']:.3f}" if f"{lr:g}" in r["lrs"] else "–" for lr in lrs]
            vals = ([f"{r['start']:.3g}" if "start" in r else "–"] if starts else []) + vals
            mse = best(r)["train_mse"]
            lines.append(f"| {a} | {k} | " + " | ".join(vals) + f" | {mse[0]:.4g} → {mse[-1]:.4g} |")
    return "\n".join(lines)


def first_token_table(R: dict, arms: list[str]) -> str:
    """Per block: the share of the target's ‖y‖² at each window's first token, each arm's test error there
    and on the other tokens, and each arm − linear on the other tokens (paired over test windows)."""
    runs = {a: R.get(f"firsttoken__{a}") for a in arms}
    if not runs or any(r is None for r in runs.values()):
        return "_No first-token records yet._"
    head = ("| block | ‖y‖² at first tokens | " + " | ".join(f"{a}: first token / other tokens" for a in arms) +
            "".join(f" | {a} − linear, other tokens [95%]" for a in arms if a != "linear") + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for k in sorted(int(k) for k in runs[arms[0]]["blocks"]):
        b = {a: runs[a]["blocks"][str(k)] for a in arms}
        rest = {a: (np.subtract(b[a]["err2"], b[a]["first_err2"]), np.subtract(b[a]["y2"], b[a]["first_y2"]))
                for a in arms}
        rest_err = {a: math.sqrt(e.sum() / y.sum()) for a, (e, y) in rest.items()}
        y0 = b[arms[0]]
        cells = [f"{100 * sum(y0['first_y2']) / sum(y0['y2']):.0f}%"]
        for a in arms:
            first = math.sqrt(sum(b[a]["first_err2"]) / max(sum(b[a]["first_y2"]), 1e-30))
            cells.append(f"{first:.3f} / {rest_err[a]:.3f}")
        if "linear" in arms:
            boot = rel_err_boot([rest[a][0] for a in arms], [rest[a][1] for a in arms])
            j = arms.index("linear")
            for i, a in enumerate(arms):
                if a != "linear":
                    lo, hi = ci(boot[:, i] - boot[:, j])
                    cells.append(f"{rest_err[a] - rest_err['linear']:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def insitu_table(R: dict) -> str:
    """Per spliced model and block: isolated test error, in-situ MLP error, residual drift; final KL / top-1."""
    rows = [r for r in R.values() if r["kind"] == "insitu"]
    if not rows:
        return "_No in-situ records yet._"
    layers = sorted(int(k) for k in rows[0]["blocks"])
    head = ("| model | " + " | ".join(f"block {k}: isolated / in situ / residual drift" for k in layers) +
            " | next-token KL (nats/token) | top-1 agreement |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in sorted(rows, key=lambda r: model_rank(r["model"])):
        arm, variant = split_model(r["model"])
        cells = []
        for k in layers:
            b = r["blocks"][str(k)]
            fit_unit = f"{'seqfit' if variant == 'seq' and k != layers[0] else 'fit'}__{arm}__L{k}"
            iso = f"{best(R[fit_unit])['test']['rel_err']:.3f}" if fit_unit in R and variant != "ft" else "–"
            cells.append(f"{iso} / {math.sqrt(sum(b['mlp_err2']) / sum(b['y2'])):.3f} / "
                         f"{math.sqrt(sum(b['h_err2']) / sum(b['h2'])):.3f}")
        lines.append(f"| {r['model']} | " + " | ".join(cells) +
                     f" | {sum(r['kl']) / sum(r['tokens']):.3f} | {100 * sum(r['top1']) / sum(r['tokens']):.1f}% |")
    return "\n".join(lines)


def insitu_comparisons(R: dict) -> str:
    """Paired differences of the spliced models' next-token KL to the pretrained model (KAN vs linear;
    each arm's sequential fit vs its independent fit), with the sentence each interval supports."""
    runs = {r["model"]: r for r in R.values() if r["kind"] == "insitu"}
    pairs = [("kan", "linear")] if {"kan", "linear"} <= set(runs) else []
    pairs += [(f"{a}_seq", a) for a in sorted(runs, key=model_rank) if f"{a}_seq" in runs]
    if not pairs:
        return ""
    lines = ["Next-token KL to the pretrained model, paired over the test windows (95% bootstrap):", ""]
    for a, b in pairs:
        if len(runs[a]["kl"]) != len(runs[b]["kl"]):
            continue
        ka, kb = kl_per_token(runs[a]), kl_per_token(runs[b])
        _, lo, hi = kl_difference(runs[a], runs[b])
        word = "lower" if hi < 0 else "higher" if lo > 0 else "no different (the interval covers 0)"
        what = ("fitting each block on the spliced model's own activations " +
                ("helps" if hi < 0 else "hurts" if lo > 0 else "makes no clear difference")
                if a.endswith("_seq") else f"{a}'s KL is {word} than {b}'s")
        lines.append(f"- {a} − {b}: {ka:.3f} − {kb:.3f} = {ka - kb:+.3f} nats/token [{lo:+.3f}, {hi:+.3f}]: {what}.")
    if not any(m.endswith("_seq") for m in runs):
        lines.append("- Sequential fitting (`--sequential`) was not run: whether it helps is not measured here.")
    return "\n".join(lines)


def score_cell(point: float, boot: np.ndarray, fmt: str = "{:.1f}") -> str:
    lo, hi = ci(boot)
    return f"{fmt.format(point)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def benchmark_table(R: dict, names: list[str]) -> str:
    first = next((R[f"eval_ppl__{n}"] for n in names if f"eval_ppl__{n}" in R), None)
    n_conv = len(first["mt_bench"]["nll"]) if first else 0
    n_v1 = sum(first["mt_bench"].get("v1_heldout", [])) if first else 0
    head = (f"| model | WikiText-2 test ppl | MT-Bench ppl ({n_conv} conv.) | MT-Bench ppl (v1's held-out {n_v1}) | "
            "BBH exact match | " + " | ".join(f"{t} ({METRIC[t]})" for t in MC_TASKS) + " | MC mean |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for n in names:
        cells = []
        for key, subset in (("wikitext", False), ("mt_bench", False), ("mt_bench", True)):
            d = ppl_data(R, [n], key, subset)
            cells.append(score_cell(ppl(d[0][0], d[1][0]), ppl_boot(*d)[:, 0], "{:.2f}") if d and d[0][0] else "–")
        g = bbh_groups(R, [n])
        cells.append(score_cell(100 * float(np.mean([x.mean() for x in g])), stratified_boot(g)[:, 0]) if g else "–")
        g = mc_groups(R, [n])
        if g:
            cells += [f"{100 * x.mean():.1f}" for x in g]
            cells.append(score_cell(100 * float(np.mean([x.mean() for x in g])), stratified_boot(g)[:, 0]))
        else:
            cells += ["–"] * (len(MC_TASKS) + 1)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    floor = R.get("bbh_floor")
    if floor:
        g = [bits(floor["tasks"][t]["correct"])[None] for t in sorted(floor["tasks"])]
        mean = 100 * float(np.mean([x.mean() for x in g]))
        lines.append("| no model: each BBH task's most frequent answer | – | – | – | "
                     f"{score_cell(mean, stratified_boot(g)[:, 0])} | " + " | ".join("–" for _ in MC_TASKS) + " | – |")
    return "\n".join(lines)


def bbh_floor_text(R: dict, names: list[str]) -> str:
    """Each judged model's BBH minus the no-model floor, paired over the same questions."""
    floor = R.get("bbh_floor")
    if not floor:
        return ""
    parts, side = [], {"above": [], "not distinguishable from": [], "below": []}
    for n in names:
        runs = R.get(f"eval_bbh__{n}")
        if runs is None or set(runs["tasks"]) != set(floor["tasks"]):
            continue
        groups = [np.stack([bits(runs["tasks"][t]["correct"]), bits(floor["tasks"][t]["correct"])])
                  for t in sorted(floor["tasks"])]
        boot = stratified_boot(groups)
        point = 100 * float(np.mean([g[0].mean() - g[1].mean() for g in groups]))
        lo, hi = ci(boot[:, 0] - boot[:, 1])
        parts.append(f"{n} {point:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        side["above" if lo > 0 else "below" if hi < 0 else "not distinguishable from"].append(n)
    if not parts:
        return ""
    where = "; ".join(f"{k} it: {', '.join(v)}" for k, v in side.items() if v)
    return ("BBH minus the no-model floor (points, paired over the same questions): " + "; ".join(parts) +
            f". {where[0].upper() + where[1:]}. BBH can only separate models that score above this floor; "
            + ("none does here, so the BBH part of the verdict says little at this model size."
               if not side["above"] else "read the BBH comparisons with that in mind."))


def comparisons_table(R: dict, pairs: list[tuple[str, str]]) -> str:
    lines = ["| comparison | BBH (pt) | MC mean (pt) | WikiText-2 ppl | MT-Bench ppl |", "|---|---|---|---|---|"]
    for a, b in pairs:
        d = paired(R, a, b)
        cells = [f"{d[k][0]:+.1f} [{d[k][1]:+.1f}, {d[k][2]:+.1f}]" if k in d else "–" for k in ("bbh", "mc")]
        cells += [f"{100 * d[k][0]:+.1f}% [{100 * d[k][1]:+.1f}, {100 * d[k][2]:+.1f}]" if k in d else "–"
                  for k in ("wikitext", "mt_bench")]
        lines.append(f"| {a} − {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def alone_table(R: dict, arm: str, layers: list[int]) -> str:
    """Per block, that block's MLP alone replaced by linear's and by `arm`'s kept fit (alone units): the
    next-token KL to the pretrained model (nats/token, test windows) and arm − linear paired [95%]; a last
    row with every block at once (the insitu units). "" when no alone record exists."""
    rows = [k for k in layers if f"alone__{arm}__L{k}" in R and f"alone__linear__L{k}" in R]
    if not rows:
        return ""
    lines = [f"| block spliced | linear: KL | {arm}: KL | {arm} − linear [95%] |", "|---|---:|---:|---|"]
    pairs = [(str(k), R[f"alone__linear__L{k}"], R[f"alone__{arm}__L{k}"]) for k in rows]
    if f"insitu__{arm}" in R and "insitu__linear" in R:
        pairs.append((f"all {len(layers)} at once", R["insitu__linear"], R[f"insitu__{arm}"]))
    for label, lin, kan in pairs:
        lines.append(f"| {label} | {kl_per_token(lin):.4f} | {kl_per_token(kan):.4f} | " + "{:+.4f} [{:+.4f}, {:+.4f}]".format(
            *kl_difference(kan, lin)) + " |")
    return "\n".join(lines)
