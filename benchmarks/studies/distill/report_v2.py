"""benchmarks/results/distill/full_model_distill_v2.md and its curves, from the records of distillation
v2 (issue #42) and, for the original KAN arm ("kan_v1", not rerun), the v1 records.

    python -m benchmarks.studies.distill.report_v2 [--records benchmarks/results/distill/full_model_distill_v2_runs]

Sections: the diagnosis (the MLP inputs' range per block, the first-token activations), the fits (test
error per block with 95% bootstrap intervals over test windows, the lr grid), where each arm's error
sits (first token vs the rest, per output channel), end to end at equal budget (each fine-tune start's
parameters, validation-chosen lr and losses, and its fine-tuned model judged against the fine-tuned
pretrained MLPs: WikiText-2 test perplexity, multiple-choice sets, next-token KL, paired intervals),
and the verdicts of rules_v2.py. Parts whose units have not run yet say so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.studies.distill import rules_v2
from benchmarks.studies.distill.plan import (
    ARM_NOTES,
    CONTROL_WIDTHS,
    LRS,
    OPTIONAL_ARMS,
    PRETRAINED,
    SECOND_SEED,
    V1_RECORDS,
    V2,
    WARM_ARMS,
    finetune_starts,
    judged_arms,
    relearned_kan_arms,
)
from benchmarks.studies.distill.stats import (
    best,
    ci,
    kl_difference,
    kl_per_token,
    load,
    paired,
    ppl,
    ppl_boot,
    ppl_data,
    ppl_ratio_ci,
    rel_err_boot,
)
from benchmarks.studies.distill.tables import alone_table, fit_table, insitu_table, lr_table, score_cell
from benchmarks.studies.distill.verdicts_v2 import (  # noqa: F401 (the analysis lines, tested through report_v2)
    alone_text,
    block_gap,
    cause_text,
    edge_caveat,
    edge_text,
    partial_blocks,
    range_text,
    shortfall_lines,
    splice_shortfall_text,
    train_fit_text,
    trend_text,
    warm_fit_text,
    width_text,
)

COMPARATOR = f"{PRETRAINED}_ft"  # rule 3's linear MLP fine-tuned: the pretrained MLPs, fine-tuned
MISSING = "not measured yet"

REPO = Path(__file__).resolve().parents[3]
V1_ARM = "kan_v1"  # the original study's KAN arm, its v1 records (400 steps), relabelled


def with_v1_kan(R: dict, v1_records: Path) -> dict:
    """R plus v1's `kan` fit records as arm `kan_v1` (same recording windows and test split)."""
    out = dict(R)
    if v1_records.is_dir():
        for unit, r in load(v1_records).items():
            if r["kind"] == "fit" and r["arm"] == "kan":
                out[unit.replace("__kan__", f"__{V1_ARM}__")] = {**r, "arm": V1_ARM}
    return out


def diagnosis_table(R: dict, layers: list[int]) -> str:
    rows = [R.get(f"diagnose__L{k}") for k in layers]
    if not any(rows):
        return "_No diagnosis records yet (`diagnose__L<k>` units)._"
    cols = ["block", "tokens", "median / p99 / p99.9 / max \\|x\\| (not first)", "share \\|x\\| > 2 (not first / first)",
            "channels p99 > 1 / > 3", "top outlier channels (p99, max)", "first-token \\|x\\| median / max",
            "first-token share of ‖y‖²", "first-token max \\|y\\| vs others' p99"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for k, r in zip(layers, rows):
        if r is None:
            continue
        p = r["abs_x_percentiles_rest"]
        top = ", ".join(f"{c['channel']} ({c['p99']:.1f}, {c['max']:.0f})" for c in r["outlier_channels"][:3])
        lines.append(f"| {k} | {r['tokens']:,} | {p['p50']:.2f} / {p['p99']:.2f} / {p['p99.9']:.2f} / "
                     f"{r['abs_x_max_rest']:.1f} | {100 * r['saturated_share_rest']:.2f}% / "
                     f"{100 * r['saturated_share_first']:.1f}% | {r['channels_p99_over_1']} / "
                     f"{r['channels_p99_over_3']} | {top} | {r['first_abs_x_median']:.2f} / "
                     f"{r['first_abs_x_max']:.1f} | {100 * r['first_y_energy_share']:.0f}% | "
                     f"{r['first_abs_y_max']:,.0f} vs {r['rest_abs_y_p99']:.2f} |")
    return "\n".join(lines)


def diagnosis_text(R: dict, layers: list[int]) -> str:
    """Causes, each sentence computed from the diagnosis records."""
    rows = {k: R[f"diagnose__L{k}"] for k in layers if f"diagnose__L{k}" in R}
    if not rows:
        return ""
    med = [r["abs_x_percentiles_rest"]["p50"] for r in rows.values()]
    sat = [r["saturated_share_rest"] for r in rows.values()]
    share = {k: r["first_y_energy_share"] for k, r in rows.items()}
    top = max(share, key=share.get)
    return "\n".join([
        f"- Ordinary tokens: the median |x| is {min(med):.2f}–{max(med):.2f}, so on `tanh`'s interval a "
        f"degree-2 edge is nearly linear there (x² is ~{min(med):.2f}× x); {100 * min(sat):.2f}–{100 * max(sat):.2f}% "
        "of entries exceed |x| = 2, where tanh flattens them.",
        f"- First tokens: they carry {100 * min(share.values()):.0f}–{100 * max(share.values()):.0f}% of the blocks' "
        f"output energy ‖y‖² (block {top}: {100 * share[top]:.0f}%), from inputs up to |x| = "
        f"{max(r['first_abs_x_max'] for r in rows.values()):.0f}: a squashing domain clips exactly these.",
    ])


def errmap_table(R: dict, arms: list[str], layers: list[int]) -> str:
    maps = {a: R[f"errmap__{a}"] for a in arms if f"errmap__{a}" in R}
    if not maps:
        return "_No error-map records yet (`errmap__<arm>` units)._"
    cols = ["block"] + [f"{a}: first / other tokens (top-1% channels' share)" for a in maps]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for k in layers:
        cells = []
        for a, m in maps.items():
            b = m["blocks"].get(str(k))
            cells.append("–" if b is None else f"{b['rel_err_first']:.3f} / {b['rel_err_rest']:.3f} "
                                               f"({100 * b['rest_error_share_top1pct_channels']:.0f}%)")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seed_section(R: dict, layers: list[int]) -> str:
    """The second seed (seedfit records) beside the first (fit records) for linear and each other arm
    that has one: test errors per seed, each seed's paired gap to linear with its 95% bootstrap
    interval over test windows, and the gap's mean over the two seeds."""
    seeded = {(r["arm"], r["layer"]): r for r in R.values() if r.get("kind") == "seedfit"}
    arms = [a for a in dict.fromkeys(a for a, _ in seeded) if a != "linear"]
    if not seeded or not arms:
        return ("_Not measured yet (units `seedfit__<arm>__L<k>`: linear and the best re-learned KAN arm refitted "
                f"with seed {SECOND_SEED} at their kept lr)._")
    seed = next(iter(seeded.values()))["seed"]
    cols = ["block", "linear: seed 0 / seed " + str(seed)]
    for a in arms:
        cols += [f"{a}: seed 0 / seed {seed}", f"{a} − linear, seed 0 / seed {seed} [95%]", "mean of the two seeds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for k in layers:
        first = {a: R.get(f"fit__{a}__L{k}") for a in ["linear", *arms]}
        second = {a: seeded.get((a, k)) for a in ["linear", *arms]}
        if first["linear"] is None or second["linear"] is None:
            continue
        test = {(a, i): best(r)["test"] for a in first for i, r in ((0, first[a]), (1, second[a])) if r is not None}
        cells = [str(k), f"{test['linear', 0]['rel_err']:.3f} / {test['linear', 1]['rel_err']:.3f}"]
        for a in arms:
            if (a, 0) not in test or (a, 1) not in test:
                cells += ["–"] * 3
                continue
            gaps = [test[a, i]["rel_err"] - test["linear", i]["rel_err"] for i in (0, 1)]
            boot = rel_err_boot([test[a, 1]["err2"], test["linear", 1]["err2"]], [test[a, 1]["y2"], test["linear", 1]["y2"]])
            lo, hi = ci(boot[:, 0] - boot[:, 1])
            cells += [f"{test[a, 0]['rel_err']:.3f} / {test[a, 1]['rel_err']:.3f}",
                      f"{gaps[0]:+.3f} / {gaps[1]:+.3f} [{lo:+.3f}, {hi:+.3f}]", f"{sum(gaps) / 2:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([f"Linear and the best re-learned KAN arm fitted again from a fresh draw with seed {seed} (its "
                      "initialisation and its training-token order, the same order for both arms), at the lr and budget "
                      "their seed-0 fits kept; the target (rule 2) reads seed 0, as written before the runs, and this "
                      "says whether a second draw would have moved it.", "", *lines])


def finetune_records(R: dict) -> dict[str, dict]:
    return {r["start"]: r for r in R.values() if r.get("kind") == "finetune" and "start" in r}


def warm_start_verdicts(R: dict) -> dict[str, tuple]:
    """Rule 3 per warm start: {start: (verdict, ratio − 1, lo, hi)}, the paired 95% interval of
    ppl(<start>_ft) / ppl(pretrained_ft) − 1 on WikiText-2 test (None's when either is missing)."""
    out = {}
    for start in WARM_ARMS:
        point, lo, hi = ppl_ratio_ci(R, f"{start}_ft", COMPARATOR)
        out[start] = (rules_v2.warm_start_verdict(lo, hi), point, lo, hi)
    return out


def warm_start_text(R: dict) -> str:
    v = warm_start_verdicts(R)
    if all(word == MISSING for word, *_ in v.values()):
        return "- Warm start fine-tuned vs linear fine-tuned: not measured yet."
    def side(lo, hi):  # the margin decides the verdict; the sign says whether it hides a loss within it
        return ("worse than the linear fine-tune, by less than the margin" if lo > 0 and hi < rules_v2.PPL_TARGET else
                "better than the linear fine-tune" if hi < 0 else "")

    parts = [f"`{s}` {MISSING}" if word == MISSING else
             f"`{s}` **{word}** ({100 * p:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"
             + (f": {side(lo, hi)})" if side(lo, hi) else ")") for s, (word, p, lo, hi) in v.items()]
    return ("- Warm start fine-tuned vs linear fine-tuned: " + "; ".join(parts) + f" (rule 3: WikiText-2 test "
            f"perplexity of `<start>_ft` over `{COMPARATOR}` − 1, paired 95% interval, against "
            f"+{100 * rules_v2.PPL_TARGET:.0f}%).")


def finetune_section(R: dict, arms: list[str], best_kan: str | None = None) -> str:
    """End to end at equal budget: one row per fine-tune start, from the finetune, eval_ppl, eval_mc and
    insitu records of its `<start>_ft` model."""
    recs = finetune_records(R)
    if not recs:
        return (f"_{MISSING[0].upper() + MISSING[1:]} (`--v2 --finetune_steps N`: units `finetune__<start>`, then "
                "`insitu`, `eval_ppl`, `eval_mc` of the `<start>_ft` models)._")
    planned = finetune_starts(arms, best_kan)
    starts = planned + [s for s in recs if s not in planned]
    any_rec = next(iter(recs.values()))
    b = any_rec["budget"]
    grid = ", ".join(f"{lr:g}" for lr in any_rec["grid"])
    intro = (f"Each start's MLPs of blocks {', '.join(map(str, any_rec['layers']))} are trained end to end by next-token "
             f"loss on the recorded windows (run from the recorded residual; {any_rec['train_windows']} training "
             f"windows): {b['steps']} AdamW steps of {b['batch_windows']} windows × {any_rec['seq_len']} tokens "
             f"(warmup {b['warmup']}, cosine), seed {b['seed']}, at each lr of {grid}; the lr with the lowest "
             f"next-token loss on the {any_rec['val_windows']} validation windows is kept. The fine-tuned model "
             f"`<start>_ft` is judged against `{COMPARATOR}` (the pretrained linear MLPs, fine-tuned the same way), "
             "paired over the same WikiText-2 test windows, questions and recorded test windows (95% bootstrap).")
    cols = ["start", "MLP params (blocks)", "extra vs pretrained", "lr kept", "val loss: start → fine-tuned",
            "WikiText-2 test ppl [95%]", f"ppl / {COMPARATOR} − 1 [95%]", f"MC mean − {COMPARATOR} (pt) [95%]",
            f"next-token KL to the pretrained model (nats/token), − {COMPARATOR} [95%]", "rule 3"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    verdicts = warm_start_verdicts(R)
    for start in starts:
        r, model = recs.get(start), f"{start}_ft"
        label = f"`{start}`" + (" (comparator)" if start == PRETRAINED else
                                " (best re-learned KAN arm)" if start == best_kan and start not in WARM_ARMS else "")
        rule_3 = ("–" if start not in verdicts else
                  verdicts[start][0] if verdicts[start][0] == MISSING else f"**{verdicts[start][0]}**")
        if r is None:
            lines.append(f"| {label} | " + " | ".join([MISSING] * (len(cols) - 2) + [rule_3]) + " |")
            continue
        best = r["lrs"][f"{r['best_lr']:g}"]
        cells = [f"{r['params']:,}", f"{r['extra_params']:+,} ({100 * r['extra_params'] / r['pretrained_params']:+.1f}%)",
                 f"{r['best_lr']:g}" + (" (grid edge)" if len(r["grid"]) > 1 and r["best_lr"] in (min(r["grid"]),
                                                                                     max(r["grid"])) else ""),
                 f"{r['val_loss_start']:.4f} → {best['val_loss']:.4f}"]
        d = ppl_data(R, [model], "wikitext")
        cells.append(score_cell(ppl(d[0][0], d[1][0]), ppl_boot(*d)[:, 0], "{:.2f}") if d else MISSING)
        diff = paired(R, model, COMPARATOR) if start != PRETRAINED else {}
        w, mc = diff.get("wikitext"), diff.get("mc")
        cells.append("–" if start == PRETRAINED else
                     f"{100 * w[0]:+.1f}% [{100 * w[1]:+.1f}, {100 * w[2]:+.1f}]" if w else MISSING)
        cells.append("–" if start == PRETRAINED else f"{mc[0]:+.1f} [{mc[1]:+.1f}, {mc[2]:+.1f}]" if mc else MISSING)
        cells.append(kl_cell(R, model))
        cells.append(rule_3)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join([intro, "", *lines])


def kl_cell(R: dict, model: str, ref: str = COMPARATOR) -> str:
    """model's next-token KL to the pretrained model, and its paired difference to ref's [95%]."""
    a, b = R.get(f"insitu__{model}"), R.get(f"insitu__{ref}")
    if a is None:
        return MISSING
    ka = kl_per_token(a)
    if model == ref or b is None or len(a["kl"]) != len(b["kl"]):
        return f"{ka:.4f}"
    return f"{ka:.4f}, " + "{:+.4f} [{:+.4f}, {:+.4f}]".format(*kl_difference(a, b))


def spliced_section(R: dict, arms: list[str]) -> str:
    """Every studied block replaced at once by each re-learned arm's kept fit (insitu and eval_ppl of the
    judged model `<arm>`): per block the error on its own drifted inputs, the next-token KL to the
    pretrained model and WikiText-2 test perplexity, each KAN arm paired against the linear splice."""
    re_learned = [a for a in judged_arms(arms) if a not in WARM_ARMS]
    models = [m for m in ["reference"] + re_learned if f"insitu__{m}" in R or f"eval_ppl__{m}" in R]
    if not models:
        return "_No spliced-model records yet (`insitu__<arm>`, `eval_ppl__<arm>`)._"
    lines = [insitu_table({k: r for k, r in R.items() if r.get("kind") != "insitu" or r["model"] in models}), "",
             "| model | next-token KL to pretrained (nats/token), − linear's [95%] | WikiText-2 test perplexity | "
             "÷ linear splice − 1 [95%] |", "|---|---|---:|---|"]
    for m in models:
        kl = kl_cell(R, m, "linear") if f"insitu__{m}" in R else "–"
        d = ppl_data(R, [m], "wikitext")
        p = f"{ppl(d[0][0], d[1][0]):.2f}" if d else "–"
        point, lo, hi = ppl_ratio_ci(R, m, "linear") if m not in ("linear", "reference") else (None, None, None)
        ratio = "–" if point is None else f"{100 * point:+.1f}% [{100 * lo:+.1f}, {100 * hi:+.1f}]"
        lines.append(f"| {m} | {kl} | {p} | {ratio} |")
    layers = sorted({r["layer"] for r in R.values() if r["kind"] == "fit"})
    best = rules_v2.best_kan_arm(R, relearned_kan_arms(arms), layers)
    alone = alone_table(R, best, layers) if best else ""
    if alone:
        lines += ["", "Each block spliced alone (linear and rule 1's choice, `alone` units): which block the "
                  "splice's next-token KL comes from.", "", alone]
    return "\n".join(lines)


def verdict_text(R: dict, kan_arms: list[str], layers: list[int]) -> str:
    best = rules_v2.best_kan_arm(R, kan_arms, layers)
    if best is None:
        return ("- Best re-learned KAN arm: not chosen yet (no KAN arm has fits on every block).\n"
                "- Target (fit within +0.05 of linear on every block, spliced perplexity within 5%): not measured yet.\n"
                + warm_start_text(R))
    t = rules_v2.target(R, best, "linear", layers)
    gaps = ", ".join(f"{k}: {g:+.3f}" for k, g in sorted(t["fit"].items()))
    ppl = "not measured yet" if t["ppl"] is None else f"{100 * t['ppl']:+.1f}%"
    partial = {a: partial_blocks(R, a, layers) for a in kan_arms}
    partial = ", ".join(f"{a} (blocks {', '.join(map(str, ks))} not fitted yet)" for a, ks in partial.items() if ks)
    lines = [f"- Best re-learned KAN arm (lowest mean validation error over the blocks): **{best}**"
             + (f"; not candidates until every block is fitted: {partial}." if partial else "."),
             f"- Target: **{t['status']}**. Test error − linear's per block: {gaps}; spliced WikiText-2 "
             f"perplexity vs the linear splice: {ppl}."]
    lines += shortfall_lines(R, best, layers)
    if not t["missed_blocks"] and t["status"] == "missed":  # the fits pass, the splice does not
        lines += [text for text in (splice_shortfall_text(R, best, layers),) if text]
    # the other complete arms whose errors were mapped: why they fall short too, when they do
    for arm in [a for a in kan_arms if a != best and f"errmap__{a}" in R and not partial_blocks(R, a, layers)]:
        lines += shortfall_lines(R, arm, layers, header=True)
    lines += [t for t in (warm_fit_text(R, layers), edge_text(R, ["linear", *CONTROL_WIDTHS, *kan_arms, *WARM_ARMS],
                                                                  layers)) if t]
    lines.append(warm_start_text(R))
    return "\n".join(lines)


def plot_curves(R: dict, arms: list[str], layers: list[int], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = [k for k in layers if any(f"fit__{a}__L{k}" in R for a in arms)]
    if not have:
        return False
    fig, axes = plt.subplots(1, len(have), figsize=(3.2 * len(have), 3), squeeze=False)
    for ax, k in zip(axes[0], have):
        for a in arms:
            r = R.get(f"fit__{a}__L{k}")
            if r is not None:
                mse = rules_v2.chosen(r)["train_mse"]
                ax.plot(range(1, len(mse) + 1), mse, label=a)
        ax.set_yscale("log")
        ax.set_title(f"block {k}")
        ax.set_xlabel("fit progress (sixteenths)")
    axes[0][0].set_ylabel("train MSE (kept lr)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write_report(records: Path, out_dir: Path, quick: bool = False,
                 v1_records: Path | None = None) -> Path | None:
    R = load(records) if Path(records).is_dir() else {}
    if not R:
        return None
    v1 = v1_records or REPO / "benchmarks" / "results" / "distill" / V1_RECORDS
    R = with_v1_kan(R, Path(v1)) if not quick else R
    layers = sorted({r["layer"] for r in R.values() if r["kind"] == "fit"})
    arms = [a for a in V2["arms"] if any(r.get("arm") == a for r in R.values() if r["kind"] == "fit")]
    shown = arms + ([V1_ARM] if any(r.get("arm") == V1_ARM for r in R.values()) else [])
    # Rule 1's candidates are the re-learned KAN arms: a warm start keeps the pretrained projections
    # (its fit starts at the answer), so it is judged by rule 3, not chosen as "best re-learned"
    kan_arms = relearned_kan_arms(arms)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "full_model_distill_v2"
    ranges = range_text(R, kan_arms, layers)
    curves = plot_curves(R, ["linear"] + kan_arms, layers, out_dir / f"{stem}_curves.png")
    fits, _ = fit_table(R, shown)
    steps = {r["fit"]["steps"] for r in R.values() if r["kind"] == "fit" and r["arm"] != V1_ARM}
    specs = "\n".join(f"- `{a}`: " + (f"the GLU MLP of width {CONTROL_WIDTHS[a]} (a fit-only control: the width of the "
                                       "base-branch KAN, whose edges spend 3 parameters where the GLU spends 1)"
                                       if a in CONTROL_WIDTHS else str(OPTIONAL_ARMS.get(a) or 'the GLU MLP of width 1536'))
                      + (f" ({ARM_NOTES[a]})" if a in ARM_NOTES else "")
                      for a in arms)
    lines = [f"# Distillation v2: KAN MLPs re-learned inside SmolLM2-135M-Instruct{' (--quick: not results)' if quick else ''}",
             "", "Command (resumable; records in `benchmarks/results/distill/full_model_distill_v2_runs/`):", "",
             "```", f"python -m benchmarks.studies.distill.study --v2{' --quick' if quick else ''}", "```", "",
             f"Records in: {len(R)} units. Fit budget: {', '.join(map(str, sorted(steps)))} AdamW steps of 1,024 "
             f"recorded tokens per fit (v1: 400), each lr of {', '.join(f'{lr:g}' for lr in LRS)} for every arm, "
             "the lr with the lowest validation error kept. Arms:", "", specs,
             f"- `{V1_ARM}`: v1's KAN arm (random coefficients, no centring, tanh; v1 records, 400 steps, not rerun)",
             "", "## Diagnosis: what the late MLPs see", "", diagnosis_table(R, layers), "",
             diagnosis_text(R, layers), "",
             "## Fits: test relative error ‖ŷ−y‖/‖y‖ at the validation-chosen lr", "", fits, "",
             "Validation error at every lr, and the kept fit's train MSE:", "", lr_table(R, shown), "",
             *([f"![train MSE curves]({stem}_curves.png)", ""] if curves else []),
             "### A second seed", "", seed_section(R, layers), "",
             "## Where the error sits (test windows)", "", errmap_table(R, shown, layers), "",
             *([ranges, ""] if ranges else []),
             "## Spliced back: the five blocks replaced at once", "", spliced_section(R, arms), "",
             "## End to end at equal budget", "", finetune_section(R, arms, rules_v2.best_kan_arm(R, kan_arms, layers)),
             "",
             "## Verdicts (rules in `benchmarks/studies/distill/rules_v2.py`, written before the runs)", "",
             verdict_text(R, kan_arms, layers), ""]
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", default=str(REPO / "benchmarks" / "results" / "distill" / V2["records"]))
    p.add_argument("--out_dir", default=str(REPO / "benchmarks" / "results" / "distill"))
    args = p.parse_args(argv)
    write_report(Path(args.records), Path(args.out_dir))


if __name__ == "__main__":
    main()
