"""benchmarks/results/agnews.md and its plots, from the AGNews study's records only.

    python benchmarks/agnews_report.py [--records benchmarks/results/agnews_runs] [--readme README.md]

Reads records/study (every arm over paired seeds), records/tune (the learning-rate grid) and
benchmarks/results/kan_layer.json (the idle-machine layer benchmark, for the speed claims). Every
verdict is computed here by the rule printed beside it, so rerunning the study rewrites the
conclusions with the numbers. README.md's headline is the report's summary and claim verdicts, written
between its agnews-headline markers by the same run, so the two cannot disagree.

Statistics. Seed k of every arm sees the same data order, so arms are compared by paired
differences over their common seeds: d_k = acc_A,k − acc_B,k (test accuracy on the same 7,600
texts). The 95% interval of the mean difference adds the seed variance and the test-set sampling
variance: d̄ ± t_{n−1} · sqrt(s_d² / n + var_j(e_j) / N), e_j the seed-mean difference on test text j
(1/0 correctness). Fewer than 2 common seeds: no interval. Runs that end at chance (test accuracy
< 30%; 4 balanced classes) are listed apart and left out of an arm's mean, but stay in every paired
difference, so a verdict never hides them.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import numpy as np

import agnews_study  # the arm list (it imports nothing heavy); run from benchmarks/ or with it on sys.path

REPO = Path(__file__).resolve().parents[1]
CLOSE = 1.0  # accuracy points: a difference whose 95% interval lies inside ±CLOSE is "close"
CHANCE_ACC = 0.30
CONVERGED = 0.5  # points: linear's largest gain over the last quarter for a budget to count as converged
SLOWER = 1.05  # forward+backward time ratio above which a layer counts as slower
BASE = "kan_chebyshev2"
# The families are run at degree 3 (centred, their degree-2 layers are Chebyshev-2's: agnews_study.py),
# so claim 2 compares Jacobi and Gegenbauer with Chebyshev-2 of that degree.
JACOBI, GEGENBAUER = (f"kan_{f}_deg{agnews_study.FAMILY_DEGREE[f]}" for f in ("jacobi", "gegenbauer"))
SAME_DEGREE_BASE = f"kan_chebyshev2_deg{agnews_study.FAMILY_DEGREE['jacobi']}"
HEADLINE_BEGIN = "<!-- agnews-headline: written by benchmarks/agnews_report.py from the study records -->"
HEADLINE_END = "<!-- /agnews-headline -->"


# ----------------------------------------------------------------------------- records


def load_records(folder: Path) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for path in sorted(Path(folder).glob("*.json")):
        r = json.loads(path.read_text())
        groups.setdefault(r["name"], []).append(r)
    for runs in groups.values():
        runs.sort(key=lambda r: r["seed"])
    return groups


correct_bits = agnews_study.correct_bits  # (N,) bool per test text, from a record


def at_chance(r: dict) -> bool:
    return r["test_accuracy"] < CHANCE_ACC


def _t975(dof: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def arm_stats(runs: list[dict]) -> dict:
    """Test accuracy in points over the runs that learned (not at chance), and the costs."""
    ok = [r for r in runs if not at_chance(r)]
    acc = [100.0 * r["test_accuracy"] for r in ok]
    n = len(acc)
    mean = statistics.fmean(acc) if acc else math.nan
    std = statistics.stdev(acc) if n >= 2 else math.nan
    return {"n": len(runs), "n_ok": n, "acc": acc, "mean": mean, "std": std,
            "chance": [(r["seed"], 100.0 * r["test_accuracy"]) for r in runs if at_chance(r)],
            "params": runs[0]["params"], "val": statistics.fmean(100.0 * r["final_val_accuracy"] for r in runs),
            "step_s": min(r["step_seconds_median"] for r in runs), "lr": runs[0]["lr"],
            "skipped": sum(r["skipped_steps"] for r in runs), "nonfinite": sum(bool(r["nonfinite"]) for r in runs)}


def paired_diff(a_runs: list[dict], b_runs: list[dict]) -> dict:
    """A − B in accuracy points over the common seeds, with the interval of the module docstring."""
    b_by_seed = {r["seed"]: r for r in b_runs}
    pairs = [(r, b_by_seed[r["seed"]]) for r in a_runs if r["seed"] in b_by_seed]
    n = len(pairs)
    if n == 0:
        return {"n": 0, "d": math.nan, "lo": math.nan, "hi": math.nan, "per_seed": []}
    per_seed = [100.0 * (a["test_accuracy"] - b["test_accuracy"]) for a, b in pairs]
    d = statistics.fmean(per_seed)
    if n < 2:
        return {"n": n, "d": d, "lo": math.nan, "hi": math.nan, "per_seed": per_seed}
    e = np.mean([correct_bits(a).astype(float) - correct_bits(b) for a, b in pairs], axis=0) * 100.0
    var = statistics.variance(per_seed) / n + float(np.var(e, ddof=1)) / e.size
    half = _t975(n - 1) * math.sqrt(var)
    return {"n": n, "d": d, "lo": d - half, "hi": d + half, "per_seed": per_seed}


def fmt(d: dict) -> str:
    if d["n"] == 0:
        return "no common seeds"
    if math.isnan(d["lo"]):
        return f"{d['d']:+.1f} pt (one seed: no interval)"
    return f"{d['d']:+.1f} pt (95% CI {d['lo']:+.1f} to {d['hi']:+.1f}, {d['n']} paired seeds)"


def closeness(d: dict) -> str:
    """within (interval inside ±CLOSE) | below | above (interval beyond −CLOSE / +CLOSE) | unclear."""
    if math.isnan(d["lo"]):
        return "unclear"
    if -CLOSE <= d["lo"] and d["hi"] <= CLOSE:
        return "within"
    if d["hi"] < -CLOSE:
        return "below"
    if d["lo"] > CLOSE:
        return "above"
    return "unclear"


def _verdict(parts: list[str]) -> str:
    if "refuted" in parts:
        return "refuted"
    return "confirmed" if parts and all(p == "confirmed" for p in parts) else "inconclusive"


# ----------------------------------------------------------------------------- speed


def load_speed(path: Path) -> dict:
    """{layer name: {"ratio", "lo", "hi"}}: forward+backward time against the Chebyshev-2 degree-2
    layer, from the layer benchmark's repeated interleaved measurements (kan_layer.json)."""
    if not path.exists():
        return {}
    return json.loads(path.read_text()).get("ratios_to_chebyshev2", {})


def speed_of(speed: dict, arm: str) -> dict | None:
    return speed.get(arm[len("kan_"):] if arm.startswith("kan_") else arm)


def fmt_speed(s: dict | None) -> str:
    if s is None:
        return "no layer-benchmark timing"
    return f"time ×{s['ratio']:.2f} (95% CI ×{s['lo']:.2f}–×{s['hi']:.2f})"


# ----------------------------------------------------------------------------- the eight claims

RIVALS = agnews_study.BASIS_DEGREE_ARMS


def claim_best_tradeoff(G: dict, speed: dict) -> tuple[str, str]:
    """1. Chebyshev-2 degree 2 is a best speed/accuracy trade-off among families and degrees."""
    dominated_by, unsettled, settled = [], [], []
    for name in (n for n in RIVALS if n in G):
        d, s = paired_diff(G[name], G[BASE]), speed_of(speed, name)
        more_acc = not math.isnan(d["lo"]) and d["lo"] > 0
        less_acc = not math.isnan(d["hi"]) and d["hi"] < 0
        slower = s is not None and s["lo"] > 1.0
        line = f"{name}: {fmt(d)}, {fmt_speed(s)}"
        if more_acc and s is not None and not slower:
            dominated_by.append(line)
        elif less_acc or slower:
            settled.append(line)
        else:
            unsettled.append(line)
    rule = ("Rule: refuted if a rival is more accurate (interval of the paired difference above 0) without being "
            "slower (its measured time-ratio interval not wholly above 1); confirmed if every rival is less accurate "
            "(interval below 0) or slower; inconclusive otherwise (a rival without a layer timing stays open).")
    text = [rule]
    if dominated_by:
        text.append("More accurate and not slower: " + "; ".join(dominated_by) + ".")
    if unsettled:
        text.append("Not separated from Chebyshev-2 degree 2 on either axis: " + "; ".join(unsettled) + ".")
    if settled:
        text.append("Worse on accuracy or slower: " + "; ".join(settled) + ".")
    verdict = "refuted" if dominated_by else ("confirmed" if not unsettled and settled else "inconclusive")
    return verdict, "\n\n".join(text)


def claim_jacobi_gegenbauer(G: dict, speed: dict) -> tuple[str, str]:
    """2. Jacobi and Gegenbauer are slightly more accurate than Chebyshev-2 but train more slowly: all at
    degree 3, the speed their layer's time ÷ Chebyshev-2 degree 3's in the same benchmark rounds."""
    parts, text = [], []
    for name in (JACOBI, GEGENBAUER):
        d, s = paired_diff(G[name], G[SAME_DEGREE_BASE]), (speed_of(speed, name) or {}).get("vs_same_degree")
        acc = "confirmed" if d["lo"] > 0 else "refuted" if d["hi"] < 0 else "inconclusive"
        if s is None:
            slow = "inconclusive"
        else:
            slow = "confirmed" if s["lo"] > SLOWER else "refuted" if s["hi"] < SLOWER else "inconclusive"
        parts += [acc, slow]
        text.append(f"{name[4:]} − {SAME_DEGREE_BASE[4:]}: {fmt(d)} (more accurate: {acc}); {fmt_speed(s)} "
                    f"(slower, ≥ ×{SLOWER}: {slow})")
    return _verdict(parts), "; ".join(text) + (
        f". At degree 2 the centred Jacobi(α=β) and Gegenbauer layers are Chebyshev-2's (columns x and x²), so "
        f"neither can differ there; the claim is tested at degree 3. Rule: 'more accurate' confirmed if the "
        f"interval lies above 0, refuted if below; 'slower' confirmed if the layer's forward+backward time ratio "
        f"to Chebyshev-2 degree 3 has its interval above ×{SLOWER}, refuted if below.")


def claim_close_to_linear(G: dict, speed: dict) -> tuple[str, str]:
    """3. A parameter-matched KAN in place of every linear layer comes close to linear."""
    d = paired_diff(G[BASE], G["linear"])
    c = closeness(d)
    verdict = {"within": "confirmed", "below": "refuted", "above": "refuted"}.get(c, "inconclusive")
    return verdict, (f"chebyshev2 (param-matched, every projection) − linear: {fmt(d)}; the original: −0.5 pt. "
                     f"Rule: confirmed if the interval lies within ±{CLOSE:.0f} pt, refuted if it lies wholly beyond "
                     f"−{CLOSE:.0f} or +{CLOSE:.0f} pt (a clear loss or a clear gain), inconclusive otherwise.")


def claim_parallel_sequential(G: dict, speed: dict) -> tuple[str, str]:
    """4. KAN beside (parallel) or after (sequential) the full linear layer adds little."""
    parts, text = [], []
    for name in ("kan_chebyshev2_parallel", "kan_chebyshev2_sequential"):
        d = paired_diff(G[name], G["linear"])
        c = closeness(d)
        parts.append({"within": "confirmed", "below": "refuted", "above": "refuted"}.get(c, "inconclusive"))
        what = {"below": " (it costs accuracy)", "above": " (it adds a lot)"}.get(c, "")
        text.append(f"{name[len('kan_chebyshev2_'):]} ({G[name][0]['params']:,} params vs linear's "
                    f"{G['linear'][0]['params']:,}) − linear: {fmt(d)}{what}")
    return _verdict(parts), "; ".join(text) + (
        f". Rule: 'adds little' confirmed if the interval lies within ±{CLOSE:.0f} pt; refuted if it lies wholly "
        f"above +{CLOSE:.0f} pt (it adds a lot) or wholly below −{CLOSE:.0f} pt (it costs accuracy).")


def claim_fp16(G: dict, speed: dict) -> tuple[str, str]:
    """5. KANs train stably in float16."""
    fp16 = G["kan_chebyshev2_fp16"]
    s = arm_stats(fp16)
    d = paired_diff(fp16, G[BASE])
    broken = s["nonfinite"] + len(s["chance"])
    if broken:
        verdict = "refuted"
    else:
        verdict = "confirmed" if d["lo"] > -CLOSE else "refuted" if d["hi"] < -CLOSE else "inconclusive"
    lin = paired_diff(G["linear_fp16"], G["linear"]) if "linear_fp16" in G else None
    return verdict, (f"KAN fp16 − fp32: {fmt(d)}; {s['nonfinite']} run(s) with NaN/inf in parameters or loss, "
                     f"{len(s['chance'])} at chance, {s['skipped']} skipped (overflowing) steps over {s['n']} runs"
                     + (f"; linear fp16 − fp32 for reference: {fmt(lin)}" if lin else "") +
                     f". Rule: refuted by any non-finite or at-chance fp16 run or an interval wholly below −{CLOSE:.0f} pt;"
                     f" confirmed if the interval lies above −{CLOSE:.0f} pt.")


def claim_no_silu(G: dict, speed: dict) -> tuple[str, str]:
    """6. KANs learn well without SiLU."""
    d = paired_diff(G["kan_chebyshev2_nosilu"], G[BASE])
    lin = paired_diff(G["kan_chebyshev2_nosilu"], G["linear"])
    verdict = "confirmed" if d["lo"] > -CLOSE else "refuted" if d["hi"] < -CLOSE else "inconclusive"
    return verdict, (f"KAN MLPs without SiLU − with SiLU: {fmt(d)}; − linear: {fmt(lin)}. Rule: confirmed if the "
                     f"interval against the SiLU KAN lies above −{CLOSE:.0f} pt, refuted if wholly below it.")


def tune_grid(T: dict) -> dict[str, dict[float, list[dict]]]:
    """{arm: {lr: runs}} from the tune records (names <arm>_lr<lr>)."""
    grid: dict[str, dict[float, list[dict]]] = {}
    for name, runs in T.items():
        grid.setdefault(name.rsplit("_lr", 1)[0], {})[runs[0]["lr"]] = runs
    return grid


def best_lr(by_lr: dict[float, list[dict]]) -> float:
    """The rate with the highest mean final validation accuracy (ties: the smaller rate)."""
    return max(by_lr, key=lambda lr: (statistics.fmean(r["final_val_accuracy"] for r in by_lr[lr]), -lr))


def grid_drop(by_lr: dict[float, list[dict]]) -> list[dict]:
    """Pseudo-runs whose test accuracy is, per seed, the mean over the grid minus the best rate's:
    how much an arm loses on average when its learning rate is not tuned."""
    best = {r["seed"]: r for r in by_lr[best_lr(by_lr)]}
    out = []
    for seed, top in best.items():
        others = [r for runs in by_lr.values() for r in runs if r["seed"] == seed]
        mean_acc = statistics.fmean(r["test_accuracy"] for r in others)
        bits = np.mean([correct_bits(r) for r in others], axis=0) - correct_bits(top)
        out.append({"seed": seed, "test_accuracy": mean_acc - top["test_accuracy"], "test_n": top["test_n"],
                    "_bits": bits})
    return out


def _diff_of_drops(a: list[dict], b: list[dict]) -> dict:
    """Paired difference of two grid_drop lists (their `_bits` are real-valued per-text drops)."""
    b_by = {r["seed"]: r for r in b}
    pairs = [(x, b_by[x["seed"]]) for x in a if x["seed"] in b_by]
    per_seed = [100.0 * (x["test_accuracy"] - y["test_accuracy"]) for x, y in pairs]
    n = len(per_seed)
    if n < 2:
        return {"n": n, "d": statistics.fmean(per_seed) if per_seed else math.nan, "lo": math.nan, "hi": math.nan,
                "per_seed": per_seed}
    e = np.mean([x["_bits"] - y["_bits"] for x, y in pairs], axis=0) * 100.0
    d = statistics.fmean(per_seed)
    half = _t975(n - 1) * math.sqrt(statistics.variance(per_seed) / n + float(np.var(e, ddof=1)) / e.size)
    return {"n": n, "d": d, "lo": d - half, "hi": d + half, "per_seed": per_seed}


def claim_less_tuning(T: dict) -> tuple[str, str]:
    """7. KANs adapt well to existing hyperparameters: less fine-tuning needed."""
    grid = tune_grid(T)
    if "linear" not in grid or BASE not in grid:
        return "inconclusive", "The learning-rate grid has not run."
    lin, kan = grid["linear"], grid[BASE]
    lr_l, lr_k = best_lr(lin), best_lr(kan)
    at_lin = paired_diff(kan[lr_l], kan[lr_k])  # KAN at linear's rate − KAN at its own (≤ 0 expected)
    lin_at_kan = paired_diff(lin[lr_k], lin[lr_l])
    drop = _diff_of_drops(grid_drop(kan), grid_drop(lin))  # KAN's mean loss off its best − linear's
    part1 = "confirmed" if at_lin["lo"] > -CLOSE else "refuted" if at_lin["hi"] < -CLOSE else "inconclusive"
    # drop: (mean over grid − best) per arm, ≤ 0; KAN − linear > 0 means the KAN loses less off its best rate.
    part2 = "confirmed" if drop["lo"] > -CLOSE else "refuted" if drop["hi"] < -CLOSE else "inconclusive"
    text = (f"Best rates on validation: linear {lr_l:g}, KAN {lr_k:g}. KAN at linear's best rate − at its own: "
            f"{fmt(at_lin)} (test accuracy; linear at the KAN's rate − its own: {fmt(lin_at_kan)}). Mean over the "
            f"grid minus the best rate, KAN − linear: {fmt(drop)} (positive: the KAN loses less away from its best "
            f"rate). Rule: confirmed if the KAN at linear's rate stays within −{CLOSE:.0f} pt of its best (interval) "
            f"and its loss away from the best rate is not larger than linear's by more than {CLOSE:.0f} pt "
            f"(interval above −{CLOSE:.0f}); refuted if either interval lies wholly below −{CLOSE:.0f} pt.")
    return _verdict([part1, part2]), text


def claim_fewer_params(G: dict, speed: dict) -> tuple[str, str]:
    """8. KANs do well with fewer or similarly sized layers."""
    half, full = G["kan_chebyshev2_half"], G[BASE]
    d = paired_diff(half, G["linear"])
    d_full = paired_diff(half, full)
    verdict = "confirmed" if d["lo"] > -CLOSE else "refuted" if d["hi"] < -CLOSE else "inconclusive"
    return verdict, (f"half-size KAN ({half[0]['params']:,} params; the matched KAN {full[0]['params']:,}, linear "
                     f"{G['linear'][0]['params']:,}; the embedding is not halved) − linear: {fmt(d)}; − the matched "
                     f"KAN: {fmt(d_full)}. Rule: confirmed if the interval against linear lies above −{CLOSE:.0f} pt, "
                     f"refuted if wholly below.")


CLAIMS = [
    ("1. Chebyshev 2nd kind at degree 2 gives the best speed/accuracy trade-off", claim_best_tradeoff, [BASE]),
    ("2. Jacobi and Gegenbauer are slightly more accurate but train more slowly", claim_jacobi_gegenbauer,
     [SAME_DEGREE_BASE, JACOBI, GEGENBAUER]),
    ("3. A parameter-matched KAN everywhere comes close to linear (linear slightly better)", claim_close_to_linear,
     ["linear", BASE]),
    ("4. KAN beside (parallel) or after (sequential) the linear layer adds little", claim_parallel_sequential,
     ["linear", "kan_chebyshev2_parallel", "kan_chebyshev2_sequential"]),
    ("5. KANs train stably in fp16", claim_fp16, [BASE, "kan_chebyshev2_fp16"]),
    ("6. KANs learn well without SiLU", claim_no_silu, ["linear", BASE, "kan_chebyshev2_nosilu"]),
    ("7. KANs adapt well to existing hyperparameters: less fine-tuning needed", None, []),
    ("8. KANs do well with fewer or similarly sized layers", claim_fewer_params,
     ["linear", BASE, "kan_chebyshev2_half"]),
]


def verdicts(G: dict, T: dict, speed: dict) -> list[tuple[str, str, str]]:
    """[(title, verdict or 'not yet measured', text)] for the eight claims."""
    out = []
    for title, fn, needs in CLAIMS:
        if fn is None:
            out.append((title, *claim_less_tuning(T)))
            continue
        missing = [n for n in needs if n not in G]
        if missing:
            out.append((title, "not yet measured", f"Missing arms: {', '.join(missing)}."))
            continue
        out.append((title, *fn(G, speed)))
    return out


# ----------------------------------------------------------------------------- tables and plots


def results_table(G: dict, speed: dict, quick: bool = False) -> str:
    lines = ["| arm | seeds (done/planned) | params | lr | test % (mean ± std, runs that learned) | per seed | at chance "
             "| − linear (paired) | layer time × cheb2 | step s | skipped / non-finite |",
             "|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|"]
    order = sorted(G, key=lambda n: -arm_stats(G[n])["mean"] if not math.isnan(arm_stats(G[n])["mean"]) else 1e9)
    plan = planned_seeds(quick)
    for name in order:
        s = arm_stats(G[name])
        std = f" ± {s['std']:.1f}" if s["n_ok"] >= 2 else ""
        chance = ", ".join(f"seed {k}: {a:.1f}" for k, a in s["chance"]) or "0"
        vs = fmt(paired_diff(G[name], G["linear"])) if "linear" in G and name != "linear" else "–"
        sp = speed_of(speed, name)
        sp_s = f"{sp['ratio']:.2f}" if sp else "–"
        per_seed = ", ".join(f"{100 * r['test_accuracy']:.1f}" for r in G[name])
        seeds = f"{s['n']}/{plan[name]}" if name in plan else str(s["n"])
        lines.append(f"| {name} | {seeds} | {s['params']:,} | {s['lr']:g} | {s['mean']:.1f}{std} | {per_seed} | "
                     f"{chance} | {vs} | {sp_s} | {s['step_s']:.2f} | {s['skipped']} / {s['nonfinite']} |")
    return "\n".join(lines)


def mean_val_curve(runs: list[dict]) -> tuple[list[int], list[float]]:
    steps = sorted({s for r in runs for s, _, _ in r["val_curve"]})
    curve = []
    for step in steps:
        vals = [a for r in runs for s, a, _ in r["val_curve"] if s == step]
        curve.append(100.0 * statistics.fmean(vals))
    return steps, curve


def last_quarter_gain(G: dict) -> dict | None:
    """Linear's gain in mean validation accuracy (points) over the last quarter of the budget."""
    if "linear" not in G:
        return None
    steps, curve = mean_val_curve(G["linear"])
    q = min(range(len(steps)), key=lambda i: abs(steps[i] - 0.75 * steps[-1]))
    return {"from_step": steps[q], "to_step": steps[-1], "from": curve[q], "to": curve[-1],
            "gain": curve[-1] - curve[q], "seeds": len(G["linear"]), "converged": curve[-1] - curve[q] < CONVERGED}


def convergence(G: dict) -> str:
    c = last_quarter_gain(G)
    if c is None:
        return "Linear has not run yet."
    return (f"Budget check: linear's mean validation accuracy (over {c['seeds']} seeds) goes from "
            f"{c['from']:.1f}% at step {c['from_step']} to {c['to']:.1f}% at step {c['to_step']}: {c['gain']:+.1f} pt "
            f"over the last quarter ({'under' if c['converged'] else 'NOT under'} the {CONVERGED}-point "
            f"convergence criterion).")


def planned_seeds(quick: bool) -> dict[str, int]:
    """{study arm: seeds the study plans for it} (agnews_study.STUDY; --quick runs one seed per arm)."""
    return {a.name: 1 if quick else a.seeds for a in agnews_study.STUDY}


def progress(G: dict, quick: bool = False) -> dict:
    """How much of the planned study the records hold: runs done of planned, and the arms short of seeds."""
    plan = planned_seeds(quick)
    done = {name: len({r["seed"] for r in G.get(name, [])} & set(range(k))) for name, k in plan.items()}
    return {"done": sum(done.values()), "planned": sum(plan.values()),
            "short": [(name, done[name], k) for name, k in plan.items() if done[name] < k]}


def progress_line(P: dict) -> str:
    if not P["short"]:
        return f"Progress: all {P['planned']} planned study runs are in."
    return (f"Progress: **interim**, {P['done']} of {P['planned']} planned study runs; arms short of their planned "
            f"seeds (done/planned): " + ", ".join(f"{n} {d}/{k}" for n, d, k in P["short"]) + ".")


def plot_curves(G: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, colour in (("linear", "k"), (BASE, "C3")):
        if name not in G:
            continue
        for r in G[name]:
            s, a, _ = zip(*r["val_curve"])
            ax.plot(s, [100 * v for v in a], color=colour, alpha=0.25, lw=0.8)
        steps, curve = mean_val_curve(G[name])
        ax.plot(steps, curve, color=colour, lw=2, label=f"{name} (mean of {len(G[name])} seeds)")
    c = last_quarter_gain(G)
    if c is not None:
        ax.axvspan(c["from_step"], c["to_step"], color="0.92", zorder=0,
                   label=f"last quarter: linear {c['gain']:+.1f} pt (converged if < {CONVERGED})")
    ax.set_xlabel("step")
    ax.set_ylabel("validation accuracy %")
    ax.set_title("AGNews: validation accuracy against steps (thin: single seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scatter(G: dict, speed: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name in G:
        s, sp = arm_stats(G[name]), speed_of(speed, name)
        if sp is None or math.isnan(s["mean"]):
            continue
        colour = "C3" if name.startswith("kan_chebyshev2") else "C0"
        ax.errorbar(sp["ratio"], s["mean"], yerr=0 if s["n_ok"] < 2 else s["std"],
                    xerr=[[sp["ratio"] - sp["lo"]], [sp["hi"] - sp["ratio"]]], fmt="o", color=colour, capsize=3, ms=5)
        ax.annotate(name[4:], (sp["ratio"], s["mean"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("KAN layer forward+backward time ÷ Chebyshev-2 degree 2 (idle machine, 95% CI)")
    ax.set_ylabel("AGNews test accuracy % (mean ± std over seeds)")
    ax.set_title("AGNews study: accuracy against layer speed")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- the report


def coverage_text(cover: dict | None, seq_len: int) -> str:
    """How many texts fit whole, from the records' text_coverage.json (agnews_study.text_coverage)."""
    if not cover or cover["seq_len"] != seq_len:
        return "how many texts fit whole is not measured yet: agnews_study.py measures it"
    parts = [f"{100 * cover[s]['whole']:.0f}% of the {cover[s]['texts']:,} {s} texts" for s in ("train", "validation", "test")]
    return (f"{', '.join(parts)} fit whole; training texts: median {cover['train']['median']:.0f}, 90th percentile "
            f"{cover['train']['p90']:.0f} tokens")


def differences(o: dict, G: dict, cover: dict | None = None) -> str:
    steps, batch, seq = o["train.steps"], o["data.batch_size"], o["data.seq_len"]
    return (f"The original trained its 3-block SmolLM2 on AGNews and reports 60.8% (linear) vs 60.3% (KAN) test "
            f"accuracy; its number of training rows, steps and vocabulary size are not given in the material we "
            f"have. Here: the shared AGNews sample (5,000 training rows, of which 500 are held out for validation, "
            f"vs 120,000 in the full release), {steps} steps of {batch} examples ≈ {steps * batch / 4500:.1f} epochs, "
            f"texts cut to {seq} tokens ({coverage_text(cover, seq)}), "
            f"vocabulary trimmed to {o.get('model.vocab_size', 8192):,} tokens, float32 unless a row says fp16, "
            f"CPU. The KAN layers use this project's recipe (kan_recipe.md): coefficients start as a random "
            f"linear map of the squashed input, rank bottlenecks start at the replaced layer's output scale, and "
            f"every basis column is centred to vanish at input 0.")


def family_note() -> str:
    return ("Function classes: every polynomial family of degree d spans the same space on its interval (all "
            "polynomials of degree ≤ d), so the polynomial arms at one degree differ in how that space is "
            "parametrised (which columns the coefficients multiply: their init and the optimisation geometry), "
            "not in what an edge can compute. Arms whose layers are identical even in that sense are not run "
            "twice. With the recipe's centring (every column minus its value at input 0) and per-column "
            "normalisation, a symmetric family's degree-2 columns are x and x², whatever the family: Chebyshev, "
            "Legendre, Hermite, Lucas, Jacobi(α=β) and Gegenbauer at degree 2 are all the Chebyshev-2 degree-2 "
            "layer. The families therefore run at degree 3 (Fibonacci at 4: its F_4 is the cubic), where a "
            "symmetric family's cubic column is x³ − c·x with its own c (Gegenbauer λ: c = 3/(2(λ + 2))), "
            "against Chebyshev-2 at degree 3. Jacobi(α=β=1) equals Gegenbauer(λ=3/2), and at degree 3 Hermite "
            "on [−2, 2] equals Gegenbauer(λ=2), so the Gegenbauer arm uses λ=3 (λ=1 is Chebyshev-2, λ=1/2 "
            "Legendre). tests/test_agnews_study.py checks that every pair of study arms computes different "
            "functions from the same initial random numbers.")


def write_report(records: Path, results: Path, quick: bool = False, readme: Path | None = None) -> Path | None:
    G, T = load_records(records / "study"), load_records(records / "tune")
    if not G:
        print(f"no study records in {records / 'study'}")
        return None
    speed = load_speed(REPO / "benchmarks" / "results" / "kan_layer.json")
    o = next(iter(G.values()))[0]["overrides"]
    stem = "agnews_quick" if quick else "agnews"
    results.mkdir(parents=True, exist_ok=True)
    plot_curves(G, results / f"{stem}_curves.png")
    plot_scatter(G, speed, results / f"{stem}_scatter.png")
    V = verdicts(G, T, speed)
    P = progress(G, quick)
    cover_path = records / "text_coverage.json"
    cover = json.loads(cover_path.read_text()) if cover_path.exists() else None
    commits = sorted({r["commit"][:12] for runs in G.values() for r in runs})
    devices = sorted({f"{r['device']} ({r['cpus']} CPUs), jax {r['jax']}" for runs in G.values() for r in runs})
    counts = {v: sum(x[1] == v for x in V) for v in ("confirmed", "refuted", "inconclusive", "not yet measured")}
    chance = [(n, s, a) for n, runs in G.items() for s, a in arm_stats(runs)["chance"]]
    out = [f"# AGNews study (v2){' (--quick: tiny budgets, not results)' if quick else ''}", "",
           "Command (resumable; records in `benchmarks/results/agnews_runs/{recipe,tune,study}/`, one JSON per run):",
           "", "```", f"python benchmarks/agnews_study.py{' --quick' if quick else ''}", "```", "",
           summary_sentence(G, V, counts, P), "", progress_line(P), "",
           f"Budget per run: {o['train.steps']} steps × batch {o['data.batch_size']} × {o['data.seq_len']} tokens, "
           f"AdamW (warmup {o['train.warmup']}, cosine decay), every arm at the tuned learning rate of its kind "
           f"(kan_recipe.md), validation every {o['eval.every']} steps on the 500 texts held out of train, test "
           f"accuracy on the official 7,600-text test split at the end. Records: commit(s) "
           f"{', '.join('`' + c + '`' for c in commits)}; {'; '.join(devices)}.", "",
           convergence(G), "", f"![validation accuracy against steps]({stem}_curves.png)", "",
           "### How this differs from the original study", "", differences(o, G, cover), "", family_note(), "",
           "## Results", "", __doc__.split("Statistics. ", 1)[1].strip(), "", results_table(G, speed, quick), "",
           f"Runs at chance ({len(chance)}): " + (", ".join(f"{n} seed {s} ({a:.1f}%)" for n, s, a in chance)
                                                   if chance else "none") + ".", "",
           "Layer time: forward + backward of one KAN layer at the study's MLP shape, relative to Chebyshev-2 degree "
           "2, from `benchmarks/kan_layer.py` on an idle machine (`kan_layer.md`); step s: the fastest seed's median "
           "train step inside the study (other work may have shared the machine).", "",
           f"![accuracy vs layer speed]({stem}_scatter.png)", "", "## The claims of the original research", ""]
    for title, verdict, text in V:
        out += [f"### {title}: **{verdict}**", "", text, ""]
    figure_run = next((r for r in G.get(BASE, []) if r["seed"] == 0), None)
    if (results / "agnews_learned_functions.png").exists() and figure_run is not None and not quick:
        out += ["## What the Chebyshev-2 KAN learned", "",
                f"Nine edges (inputs 0–2 → outputs 0–2) of one KAN layer (named in the title) of `{BASE}` seed 0 after "
                "training, drawn with `kanjax.viz.plot_functions` (x is the layer input before the tanh; the bias is "
                f"left out).{replay_note(records / 'replays' / f'study__{BASE}__seed0.json')}", "",
                "![learned functions](agnews_learned_functions.png)", ""]
    path = results / f"{stem}.md"
    path.write_text("\n".join(out))
    if readme is not None:
        write_headline(readme, headline(summary_sentence(G, V, counts, P), V))
    print(f"wrote {path} ({sum(len(r) for r in G.values())} study runs in {len(G)} arms; "
          f"{', '.join(f'{k}: {v}' for k, v in counts.items() if v)})")
    return path


def _std(s: dict) -> str:
    return f"seed std {s['std']:.1f}" if s["n_ok"] >= 2 else "one seed"


def replay_note(path: Path) -> str:
    """What the figure's replay (agnews_study.py --replay) says about the run it drew, if it came from one."""
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    how = ("classifies every test text as the record does, with the same test loss" if r["identical"] else
           f"is not bitwise the recorded run (XLA's CPU code follows the processor: recorded on "
           f"{(r['record_machine'] or {}).get('cpu') or 'an unrecorded machine'}, replayed on {r['machine']['cpu']}): "
           f"test accuracy {100 * r['test_accuracy']:.2f}% against {100 * r['record_test_accuracy']:.2f}% recorded, the "
           f"same right/wrong on {100 * r['same_outcome_fraction']:.1f}% of the test texts")
    return (f" The run's trained weights were not kept (its record is the same training in another phase), so the "
            f"figure comes from `agnews_study.py --replay study {r['name']} {r['seed']}`, which trains it again; the "
            f"replay {how}.")


def summary_sentence(G: dict, V: list, counts: dict, P: dict) -> str:
    head = "**Summary:**" if not P["short"] else \
        f"**Interim summary** ({P['done']} of {P['planned']} planned runs; verdicts can still change):"
    if "linear" not in G or BASE not in G:
        return f"{head} the study has not run its linear and Chebyshev-2 arms yet."
    lin, kan = arm_stats(G["linear"]), arm_stats(G[BASE])
    c = last_quarter_gain(G)
    budget = (f"at a budget where linear has converged ({c['gain']:+.1f} pt of validation accuracy over the last "
              f"quarter)" if c["converged"] else
              f"at a budget where linear has NOT converged ({c['gain']:+.1f} pt over the last quarter)")
    return (f"{head} {budget}, the parameter-matched Chebyshev-2 KAN reaches {kan['mean']:.1f}% ({_std(kan)}) against "
            f"linear's {lin['mean']:.1f}% ({_std(lin)}): {fmt(paired_diff(G[BASE], G['linear']))}. Of the eight "
            f"claims: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + ".")


def headline(summary: str, V: list) -> str:
    """README's block: the report's summary sentence and one line per claim with its verdict."""
    return "\n".join([f"From the AGNews study v2 ([`agnews.md`](benchmarks/results/agnews.md)). {summary}", "",
                      "| Claim of the original research | Verdict |", "|---|---|",
                      *[f"| {title} | **{verdict}** |" for title, verdict, _ in V]])


def write_headline(readme: Path, block: str) -> None:
    """Replace what lies between README's headline markers by `block`; the rest of the file is untouched."""
    text = readme.read_text()
    if text.count(HEADLINE_BEGIN) != 1 or text.count(HEADLINE_END) != 1 or \
            text.index(HEADLINE_BEGIN) > text.index(HEADLINE_END):
        raise ValueError(f"{readme}: needs exactly one line {HEADLINE_BEGIN!r} followed by one line "
                         f"{HEADLINE_END!r} around the study's headline; not rewriting it")
    head, rest = text.split(HEADLINE_BEGIN)
    _, tail = rest.split(HEADLINE_END)
    readme.write_text(f"{head}{HEADLINE_BEGIN}\n{block}\n{HEADLINE_END}{tail}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", default=str(REPO / "benchmarks" / "results" / "agnews_runs"))
    p.add_argument("--out_dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--readme", default=str(REPO / "README.md"),
                   help="file whose agnews-headline block gets the summary ('' or --quick: none)")
    a = p.parse_args()
    write_report(Path(a.records), Path(a.out_dir), quick=a.quick,
                 readme=Path(a.readme) if a.readme and not a.quick else None)
