"""benchmarks/results/agnews/agnews.md, its plots and README.md's headline, from the AGNews study's records only.

    python -m benchmarks.studies.agnews.report [--records benchmarks/results/agnews/agnews_runs] [--readme README.md]

Reads records/study (every arm over paired seeds), records/tune (the learning-rate grid) and
benchmarks/results/perf/kan_layer.json (the idle-machine layer benchmark, for the speed claims). Every
verdict is computed by agnews_claims.py by the rule printed beside it, so rerunning the study rewrites
the conclusions with the numbers. README.md's headline is the report's summary and claim verdicts,
written between its agnews-headline markers by the same run, so the two cannot disagree.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from benchmarks.studies.agnews import claims as agnews_claims
from benchmarks.studies.agnews import plan as agnews_plan
from benchmarks.studies.agnews.claims import (
    BASE,
    arm_stats,
    fmt,
    load_records,
    load_speed,
    paired_diff,
    speed_of,
    verdicts,
)

REPO = Path(__file__).resolve().parents[3]
CONVERGED = 0.5  # points: linear's largest gain over the last quarter for a budget to count as converged
HEADLINE_BEGIN = "<!-- agnews-headline: written by benchmarks/studies/agnews/report.py from the study records -->"
HEADLINE_END = "<!-- /agnews-headline -->"


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
        mean = f"{s['mean']:.1f}{std}" if s["n_ok"] else "– (every run at chance)"
        lines.append(f"| {name} | {seeds} | {s['params']:,} | {s['lr']:g} | {mean} | {per_seed} | "
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
    return (f"Budget check: linear's mean validation accuracy (over {_seeds(c['seeds'])}) goes from "
            f"{c['from']:.1f}% at step {c['from_step']} to {c['to']:.1f}% at step {c['to_step']}: {c['gain']:+.1f} pt "
            f"over the last quarter ({'under' if c['converged'] else 'NOT under'} the {CONVERGED}-point "
            f"convergence criterion).")


def planned_seeds(quick: bool, phase: str = "study") -> dict[str, int]:
    """{arm: seeds the runner plans for it} in one phase (agnews_plan.PHASES; --quick runs one seed per arm)."""
    return {a.name: 1 if quick else a.seeds for a in agnews_plan.PHASES[phase]}


def progress(G: dict, quick: bool = False, T: dict | None = None) -> dict:
    """How much of the plan the records hold: runs done of planned, and the arms short of seeds; the
    study's arms, and with T the learning-rate grid's too (claim 7 reads its seeds 3-4)."""
    phases = [(G, planned_seeds(quick))] + ([(T, planned_seeds(quick, "tune"))] if T is not None else [])
    done, planned, short = 0, 0, []
    for records, plan in phases:
        for name, k in plan.items():
            d = len({r["seed"] for r in records.get(name, [])} & set(range(k)))
            done, planned = done + d, planned + k
            if d < k:
                short.append((name, d, k))
    return {"done": done, "planned": planned, "short": short,
            "what": "runs (study and learning-rate grid)" if T is not None else "study runs"}


def progress_line(P: dict) -> str:
    if not P["short"]:
        return f"Progress: all {P['planned']} planned {P['what']} are in."
    return (f"Progress: **interim**, {P['done']} of {P['planned']} planned {P['what']}; arms short of their planned "
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
        ax.plot(steps, curve, color=colour, lw=2, label=f"{name} (mean of {_seeds(len(G[name]))})")
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
            "Legendre). tests/test_agnews_plan.py checks that every pair of study arms computes different "
            "functions from the same initial random numbers.")


def machines_note(G: dict) -> str:
    """Which seeds of each arm trained on which kind of machine, when the study used more than one
    (an accelerator session may train the seeds left): '' when every run shares one."""
    kinds = sorted({r["device"] for runs in G.values() for r in runs})
    if len(kinds) < 2:
        return ""
    rows = []
    for name, runs in sorted(G.items()):
        by_kind: dict[str, list[str]] = {}
        for r in sorted(runs, key=lambda r: r["seed"]):
            by_kind.setdefault(r["device"], []).append(str(r["seed"]))
        rows.append(f"{name}: " + "; ".join(f"{k} seed(s) {', '.join(s)}" for k, s in sorted(by_kind.items())))
    precision = sorted({f"{r['device']} {r.get('matmul_precision', 'default')}" for runs in G.values() for r in runs})
    return ("**Machines.** The runs trained on " + ", ".join(f"`{k}`" for k in kinds) + " (float32 matmul "
            f"precision: {', '.join(precision)}). Seed k has the same data order and initialisation on every "
            "machine, so differences stay paired, but a pair whose two runs trained on different machines also "
            "carries the machines' rounding differences; step times are compared on the machine of each arm's "
            "seed 0 only. Seeds by machine: " + " · ".join(rows) + ".")


def write_report(records: Path, results: Path, quick: bool = False, readme: Path | None = None) -> Path | None:
    G, T = load_records(records / "study"), load_records(records / "tune")
    if not G:
        print(f"no study records in {records / 'study'}")
        return None
    speed = load_speed(REPO / "benchmarks" / "results" / "perf" / "kan_layer.json")
    o = next(iter(G.values()))[0]["overrides"]
    stem = "agnews_quick" if quick else "agnews"
    results.mkdir(parents=True, exist_ok=True)
    plot_curves(G, results / f"{stem}_curves.png")
    plot_scatter(G, speed, results / f"{stem}_scatter.png")
    V = verdicts(G, T, speed)
    P = progress(G, quick, T)
    cover_path = records / "text_coverage.json"
    cover = json.loads(cover_path.read_text()) if cover_path.exists() else None
    commits = sorted({r["commit"][:12] for runs in G.values() for r in runs})
    devices = sorted({f"{r['device']} ({r['cpus']} CPUs), jax {r['jax']}" for runs in G.values() for r in runs})
    counts = {v: sum(x[1] == v for x in V) for v in ("confirmed", "refuted", "inconclusive", "not yet measured")}
    chance = [(n, s, a) for n, runs in G.items() for s, a in arm_stats(runs)["chance"]]
    summary = summary_sentence(G, V, counts, P)
    machines = machines_note(G)
    out = [f"# AGNews study (v2){' (--quick: tiny budgets, not results)' if quick else ''}", "",
           "Command (resumable; records in `benchmarks/results/agnews/agnews_runs/{recipe,tune,study}/`, one JSON per run):",
           "", "```", f"python -m benchmarks.studies.agnews.study{' --quick' if quick else ''}", "```", "",
           summary, "", progress_line(P), "",
           f"Budget per run: {o['train.steps']} steps × batch {o['data.batch_size']} × {o['data.seq_len']} tokens, "
           f"AdamW (warmup {o['train.warmup']}, cosine decay), every arm at the tuned learning rate of its kind "
           f"(kan_recipe.md), validation every {o['eval.every']} steps on the 500 texts held out of train, test "
           f"accuracy on the official 7,600-text test split at the end. Records: commit(s) "
           f"{', '.join('`' + c + '`' for c in commits)}; {'; '.join(devices)}.", "",
           *([machines, ""] if machines else []),
           convergence(G), "", f"![validation accuracy against steps]({stem}_curves.png)", "",
           "### How this differs from the original study", "", differences(o, G, cover), "", family_note(), "",
           "## Results", "", agnews_claims.__doc__.split("Statistics. ", 1)[1].strip(), "", results_table(G, speed, quick), "",
           f"Runs at chance ({len(chance)}): " + (", ".join(f"{n} seed {s} ({a:.1f}%)" for n, s, a in chance)
                                                   if chance else "none") + ".", "",
           "Layer time: forward + backward of one KAN layer at the study's MLP shape, relative to Chebyshev-2 degree "
           "2, from `benchmarks/perf/kan_layer.py` on an idle machine (`kan_layer.md`); step s: the fastest seed's median "
           "train step inside the study, on the kind of machine that trained the arm's seed 0 (other work may have "
           "shared the machine).", "",
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
        write_headline(readme, headline(summary, V))
    print(f"wrote {path} ({sum(len(r) for r in G.values())} study runs in {len(G)} arms; "
          f"{', '.join(f'{k}: {v}' for k, v in counts.items() if v)})")
    return path


def _seeds(n: int) -> str:
    return f"{n} seed{'' if n == 1 else 's'}"


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
            f"claims: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) + f". {chance_sentence(G)}")


def chance_sentence(G: dict) -> str:
    """How many runs ended at chance, by arm: they are left out of the means, so the summary names them."""
    total = sum(len(runs) for runs in G.values())
    hit = {n: k for n, runs in G.items() if (k := len(arm_stats(runs)["chance"]))}
    if not hit:
        return f"No run ended at chance (of {total})."
    return (f"{sum(hit.values())} of {total} runs ended at chance and are listed apart: "
            + ", ".join(f"{n} {k} of {len(G[n])}" for n, k in hit.items()) + ".")


def headline(summary: str, V: list) -> str:
    """README's block: the report's summary sentence and one line per claim with its verdict."""
    return "\n".join([f"From the AGNews study v2 ([`agnews.md`](benchmarks/results/agnews/agnews.md)). {summary}", "",
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
    p.add_argument("--records", default=str(REPO / "benchmarks" / "results" / "agnews" / "agnews_runs"))
    p.add_argument("--out_dir", default=str(REPO / "benchmarks" / "results" / "agnews"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--readme", default=str(REPO / "README.md"),
                   help="file whose agnews-headline block gets the summary ('' or --quick: none)")
    a = p.parse_args()
    write_report(Path(a.records), Path(a.out_dir), quick=a.quick,
                 readme=Path(a.readme) if a.readme and not a.quick else None)
