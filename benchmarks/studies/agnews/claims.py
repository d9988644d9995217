"""The AGNews study's statistics and its eight claim rules, on study records (agnews_study.py) only.

A record is one run's JSON (name, seed, test_accuracy, test_correct_hex, final_val_accuracy, lr, params,
...); G maps a study arm to its runs sorted by seed, T the same for the tune phase's learning-rate grid.
Each claim returns (verdict, text): the verdict by the rule the text prints beside the numbers.
agnews_report.py renders them.

Statistics. Seed k of every arm sees the same data order, so arms are compared by paired
differences over their common seeds: d_k = acc_A,k − acc_B,k (test accuracy on the same 7,600
texts). The 95% interval of the mean difference adds the seed variance and the test-set sampling
variance: d̄ ± t_{n−1} · sqrt(s_d² / n + var_j(e_j) / N), e_j the seed-mean difference on test text j
(1/0 correctness). Fewer than 2 common seeds: no interval. Runs that end at chance (test accuracy
< 30%; 4 balanced classes) are listed apart and left out of an arm's mean, but stay in every paired
difference, so a verdict never hides them.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np

from benchmarks.common.records import group_records, read_json_folder
from benchmarks.studies.agnews import plan as agnews_plan  # the arm list and the rate choice

CLOSE = 1.0  # accuracy points: a difference whose 95% interval lies inside ±CLOSE is "close"
CHANCE_ACC = 0.30
SLOWER = 1.05  # forward+backward time ratio above which a layer counts as slower
BASE = "kan_chebyshev2"
# The families are run at degree 3 (centred, their degree-2 layers are Chebyshev-2's: agnews_plan.py),
# so claim 2 compares Jacobi and Gegenbauer with Chebyshev-2 of that degree.
JACOBI, GEGENBAUER = (f"kan_{f}_deg{agnews_plan.FAMILY_DEGREE[f]}" for f in ("jacobi", "gegenbauer"))
SAME_DEGREE_BASE = f"kan_chebyshev2_deg{agnews_plan.FAMILY_DEGREE['jacobi']}"


# ----------------------------------------------------------------------------- records


def load_records(folder: Path) -> dict[str, list[dict]]:
    return group_records(read_json_folder(folder), "name", order="seed")


correct_bits = agnews_plan.correct_bits  # (N,) bool per test text, from a record


def at_chance(r: dict) -> bool:
    return r["test_accuracy"] < CHANCE_ACC


def _t975(dof: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.975, dof))


def arm_stats(runs: list[dict]) -> dict:
    """Test accuracy in points over the runs that learned (not at chance), and the costs."""
    ok = [r for r in runs if not at_chance(r)]
    first = min(runs, key=lambda r: r["seed"])
    acc = [100.0 * r["test_accuracy"] for r in ok]
    n = len(acc)
    mean = statistics.fmean(acc) if acc else math.nan
    std = statistics.stdev(acc) if n >= 2 else math.nan
    return {"n": len(runs), "n_ok": n, "acc": acc, "mean": mean, "std": std,
            "chance": [(r["seed"], 100.0 * r["test_accuracy"]) for r in runs if at_chance(r)],
            "params": runs[0]["params"], "val": statistics.fmean(100.0 * r["final_val_accuracy"] for r in runs),
            # Step times compare across arms only on one kind of machine: the one that trained seed 0.
            "step_s": min(r["step_seconds_median"] for r in runs if r.get("device") == first["device"]),
            "lr": runs[0]["lr"],
            "skipped": sum(r["skipped_steps"] for r in runs), "nonfinite": sum(bool(r["nonfinite"]) for r in runs)}


def paired_diff(a_runs: list[dict], b_runs: list[dict]) -> dict:
    """A − B in accuracy points over the common seeds, with the interval of the module docstring."""
    b_by_seed = {r["seed"]: r for r in b_runs}
    pairs = [(r, b_by_seed[r["seed"]]) for r in a_runs if r["seed"] in b_by_seed]
    n = len(pairs)
    if n == 0:
        return {"n": 0, "d": math.nan, "lo": math.nan, "hi": math.nan, "per_seed": []}
    per_seed = [100.0 * (a["test_accuracy"] - b["test_accuracy"]) for a, b in pairs]
    return _interval(per_seed, lambda: [correct_bits(a).astype(float) - correct_bits(b) for a, b in pairs])


def _interval(per_seed: list[float], per_text_diffs) -> dict:
    """Mean of the per-seed differences (points) and its 95% interval (module docstring);
    per_text_diffs() gives, per seed, the (N,) per-text difference in [−1, 1], only needed for n ≥ 2."""
    n = len(per_seed)
    d = statistics.fmean(per_seed)
    if n < 2:
        return {"n": n, "d": d, "lo": math.nan, "hi": math.nan, "per_seed": per_seed}
    e = np.mean(per_text_diffs(), axis=0) * 100.0
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

RIVALS = agnews_plan.BASIS_DEGREE_ARMS


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


def grid_drop(by_lr: dict[float, list[dict]], best: float) -> list[dict]:
    """Pseudo-runs whose test accuracy is, per seed, the mean over the grid minus the best rate's:
    how much an arm loses on average when its learning rate is not tuned. Only seeds run at every
    rate count (a seed half-way through the grid would average over fewer rates)."""
    seeds = set.intersection(*({r["seed"] for r in runs} for runs in by_lr.values()))
    out = []
    for top in (r for r in by_lr[best] if r["seed"] in seeds):
        others = [r for runs in by_lr.values() for r in runs if r["seed"] == top["seed"]]
        mean_acc = statistics.fmean(r["test_accuracy"] for r in others)
        bits = np.mean([correct_bits(r) for r in others], axis=0) - correct_bits(top)
        out.append({"seed": top["seed"], "test_accuracy": mean_acc - top["test_accuracy"], "test_n": top["test_n"],
                    "_bits": bits})
    return out


def _diff_of_drops(a: list[dict], b: list[dict]) -> dict:
    """Paired difference of two grid_drop lists (their `_bits` are real-valued per-text drops)."""
    b_by = {r["seed"]: r for r in b}
    pairs = [(x, b_by[x["seed"]]) for x in a if x["seed"] in b_by]
    if not pairs:
        return {"n": 0, "d": math.nan, "lo": math.nan, "hi": math.nan, "per_seed": []}
    per_seed = [100.0 * (x["test_accuracy"] - y["test_accuracy"]) for x, y in pairs]
    return _interval(per_seed, lambda: [x["_bits"] - y["_bits"] for x, y in pairs])


def claim_less_tuning(T: dict) -> tuple[str, str]:
    """7. KANs adapt well to existing hyperparameters: less fine-tuning needed."""
    grid = tune_grid(T)
    if "linear" not in grid or BASE not in grid:
        return "inconclusive", "The learning-rate grid has not run."
    lin, kan = grid["linear"], grid[BASE]
    lr_l, lr_k = agnews_plan.best_rate(lin), agnews_plan.best_rate(kan)
    if lr_l is None or lr_k is None:
        return "inconclusive", (f"The learning-rate grid is not complete for the seeds the rate is chosen on "
                                f"(0–{agnews_plan.CHOICE_SEEDS - 1}): no best rate yet.")
    at_lin = paired_diff(kan[lr_l], kan[lr_k])  # KAN at linear's rate − KAN at its own (≤ 0 expected)
    lin_at_kan = paired_diff(lin[lr_k], lin[lr_l])
    drop = _diff_of_drops(grid_drop(kan, lr_k), grid_drop(lin, lr_l))  # KAN's mean loss off its best − linear's
    part1 = "confirmed" if at_lin["lo"] > -CLOSE else "refuted" if at_lin["hi"] < -CLOSE else "inconclusive"
    # drop: (mean over grid − best) per arm, ≤ 0; KAN − linear > 0 means the KAN loses less off its best rate.
    part2 = "confirmed" if drop["lo"] > -CLOSE else "refuted" if drop["hi"] < -CLOSE else "inconclusive"
    text = (f"Best rates on validation (seeds 0–{agnews_plan.CHOICE_SEEDS - 1}): linear {lr_l:g}, KAN {lr_k:g}. "
            f"KAN at linear's best rate − at its own: "
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
