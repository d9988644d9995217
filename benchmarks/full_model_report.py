"""benchmarks/results/full_model.md and its plot, from the full-model study's records only.

    python benchmarks/full_model_report.py [--records benchmarks/results/full_model_runs]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TASKS = ("arc_easy", "arc_challenge", "openbook_qa", "copa", "winogrande")
# The harnesses' headline metric per task: length-normalised where answers differ in length.
METRIC = {"arc_easy": "acc_norm", "arc_challenge": "acc_norm", "openbook_qa": "acc_norm", "copa": "acc",
          "winogrande": "acc"}
ORDER = ["reference", "d_before_finetuning", "a_linear", "b_linear_reinit", "c_kan_reinit", "d_kan_from_linear"]
MATCH = 2.0  # points: a mean benchmark difference whose 95% interval lies inside ±MATCH "matches"
PRESERVED = 0.5  # points: the conversion check of arm (d) before fine-tuning


def load(records: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for path in sorted(records.glob("*.json")):
        r = json.loads(path.read_text())
        rows.setdefault(r["row"], []).append(r)
    return rows


def score(r: dict, task: str) -> float:
    return 100.0 * r["tasks"][task][METRIC[task]]


def summarise(runs: list[dict]) -> dict:
    """Mean per task over seeds, and the spread: seed std if ≥ 2 seeds, else the binomial SE."""
    out = {"n_seeds": len(runs), "tasks": {}}
    for t in TASKS:
        vals = [score(r, t) for r in runs]
        n_q = runs[0]["tasks"][t]["n"]
        mean = statistics.fmean(vals)
        spread = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) >= 2 else \
            math.sqrt(max(mean * (100 - mean), 1e-9) / n_q)
        out["tasks"][t] = {"mean": mean, "se": spread, "n": n_q}
    out["avg"] = statistics.fmean(out["tasks"][t]["mean"] for t in TASKS)
    for key in ("params", "trainable_params", "tokens", "train_seconds", "chat_perplexity", "skipped_steps"):
        out[key] = statistics.fmean(float(r[key]) for r in runs)
    out["nonfinite"] = sum(bool(r["nonfinite"]) for r in runs)
    return out


def difference(a: dict, b: dict) -> tuple[float, float]:
    """Mean-over-tasks a − b (points) and its 95% half-width (normal, independent errors)."""
    d = a["avg"] - b["avg"]
    se = math.sqrt(sum(a["tasks"][t]["se"] ** 2 + b["tasks"][t]["se"] ** 2 for t in TASKS)) / len(TASKS)
    return d, 1.96 * se


def table(S: dict[str, dict]) -> str:
    head = ("| row | seeds | params | trainable | chat tokens | train s | " +
            " | ".join(f"{t} ({METRIC[t]})" for t in TASKS) + " | mean | chat ppl | non-finite |")
    lines = [head, "|" + "---|" * (len(TASKS) + 9)]
    for name in [n for n in ORDER if n in S]:
        s = S[name]
        cells = " | ".join(f"{s['tasks'][t]['mean']:.1f} ± {s['tasks'][t]['se']:.1f}" for t in TASKS)
        lines.append(f"| {name} | {s['n_seeds']} | {s['params']:,.0f} | {s['trainable_params']:,.0f} | "
                     f"{s['tokens']:,.0f} | {s['train_seconds']:.0f} | {cells} | {s['avg']:.1f} | "
                     f"{s['chat_perplexity']:.2f} | {s['nonfinite']} runs, {s['skipped_steps']:.0f} skipped steps |")
    return "\n".join(lines)


def conversion_check(S) -> tuple[bool, str]:
    ref, d0 = S["reference"], S["d_before_finetuning"]
    diffs = {t: d0["tasks"][t]["mean"] - ref["tasks"][t]["mean"] for t in TASKS}
    ok = all(abs(v) <= PRESERVED for v in diffs.values())
    text = ", ".join(f"{t} {v:+.2f}" for t, v in diffs.items())
    ppl = d0["chat_perplexity"] / ref["chat_perplexity"] - 1
    return ok, (f"Arm (d) right after `from_linear` conversion minus the pretrained model, in points: {text}; "
                f"chat perplexity {100 * ppl:+.3f}%. Within ±{PRESERVED} on every benchmark: "
                f"**{'yes' if ok else 'no'}**.")


def verdict(S) -> str:
    parts = []
    for kan, lin, what in (("c_kan_reinit", "b_linear_reinit", "re-initialised KAN vs re-initialised linear "
                            "(the original study's comparison)"),
                           ("d_kan_from_linear", "a_linear", "converted KAN vs pretrained linear")):
        if kan not in S or lin not in S:
            parts.append(f"- {what}: not yet measured.")
            continue
        d, h = difference(S[kan], S[lin])
        if -MATCH <= d - h and d + h <= MATCH:
            v = "matches"
        elif d - h > MATCH or d + h < -MATCH:
            v = "does not match"
        else:
            v = "inconclusive"
        ppl = S[kan]["chat_perplexity"] / S[lin]["chat_perplexity"] - 1
        per_task = ", ".join(f"{t} {S[kan]['tasks'][t]['mean'] - S[lin]['tasks'][t]['mean']:+.1f}" for t in TASKS)
        parts.append(f"- {what}: mean benchmark difference {d:+.1f} pt (95% ±{h:.1f}; per task {per_task}); "
                     f"held-out chat perplexity {100 * ppl:+.1f}% → **{v}** (rule: the interval inside "
                     f"±{MATCH:.0f} pt matches, entirely outside does not).")
    return "\n".join(parts)


def plot(S, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ORDER if n in S]
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for k, n in enumerate(names):
        xs = [i + k * width for i in range(len(TASKS))]
        ax.bar(xs, [S[n]["tasks"][t]["mean"] for t in TASKS], width,
               yerr=[S[n]["tasks"][t]["se"] for t in TASKS], capsize=2, label=n)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(TASKS))], [f"{t}\n({METRIC[t]})" for t in TASKS])
    ax.set_ylabel("score, % (± 1 SE)")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("SmolLM2-135M-Instruct: last-5 MLPs linear vs KAN")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(records: Path, out_dir: Path, quick: bool = False) -> Path | None:
    rows = load(records)
    if not rows:
        print(f"no records in {records}")
        return None
    S = {n: summarise(r) for n, r in rows.items()}
    stem = "full_model_quick" if quick else "full_model"
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(S, out_dir / f"{stem}.png")
    any_run = next(iter(rows.values()))[0]
    o = any_run["overrides"]
    commits = sorted({r["commit"] for runs in rows.values() for r in runs})
    lines = [f"# Full-model study: KAN MLPs in SmolLM2-135M-Instruct{' (--quick: not results)' if quick else ''}",
             "", "```", f"python benchmarks/full_model_study.py{' --quick' if quick else ''}", "```", "",
             f"Source weights `{o['model.source']}`; fine-tuning budget per arm: {o['train.steps']} steps × "
             f"{o['data.batch_size']} rows × {o['data.seq_len']} tokens of the shared chat data (packed, loss on "
             f"assistant turns), AdamW lr {any_run['lr']}, only the MLPs of the last blocks train. "
             f"Benchmarks: first {any_run['tasks']['arc_easy']['n']} questions of each shared set (fewer where "
             "the set is smaller); ± is the binomial standard error (one seed) or the standard error over seeds. "
             f"Commit(s): {', '.join('`' + c + '`' for c in commits)}; machine: {any_run['device']} "
             f"({any_run['cpus']} CPUs), jax {any_run['jax']}.", "", table(S), "", f"![scores]({stem}.png)", ""]
    if "reference" in S and "d_before_finetuning" in S:
        ok, text = conversion_check(S)
        lines += ["## Conversion check", "", text, ""]
    lines += ["## Does a KAN SmolLM2 match the linear one?", "", verdict(S), ""]
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--records", default=str(REPO / "benchmarks" / "results" / "full_model_runs"))
    p.add_argument("--out_dir", default=str(REPO / "benchmarks" / "results"))
    a = p.parse_args()
    write_report(Path(a.records), Path(a.out_dir))
