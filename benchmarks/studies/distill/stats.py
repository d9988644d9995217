"""The distillation study's statistics, on its records only (full_model_distill_report.py renders them).

Intervals are 95% percentile bootstraps (BOOTSTRAP draws, fixed seed) over the units each number is
measured on: test windows for fit errors (the arms are scored on the same windows: paired), questions
for benchmark scores (stratified by task: each task's questions are resampled, the score is the
unweighted mean over tasks; paired across models, which answer the same questions), WikiText-2 windows
and MT-Bench conversations for perplexities (paired for ratios).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from benchmarks.common.records import read_json_folder
from benchmarks.studies.distill.judge import MC_TASKS

METRIC = {"arc_easy": "acc_norm", "arc_challenge": "acc_norm", "openbook_qa": "acc_norm", "copa": "acc",
          "winogrande": "acc"}  # the harnesses' headline metric, as in full_model_report.py
BITS = {"acc": "correct", "acc_norm": "correct_norm"}
BOOTSTRAP = 4000
ORDER_SUFFIX = ("", "_seq", "_ft")  # judged models: the arm's fit, its sequential fit, its fine-tune


def load(records: Path) -> dict[str, dict]:
    return {r["unit"]: r for r in read_json_folder(records)}


def _rng():
    return np.random.default_rng(0)


def ci(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def bits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), np.uint8).astype(np.float64) - ord("0")


def rel_err_boot(err2: list[list[float]], y2: list[list[float]], n_boot: int = BOOTSTRAP) -> np.ndarray:
    """(n_boot, arms): sqrt(Σ err2 / Σ y2) over test windows resampled together for every arm."""
    e, y = np.asarray(err2, np.float64), np.asarray(y2, np.float64)  # (arms, windows)
    idx = _rng().integers(0, e.shape[1], (n_boot, e.shape[1]))
    return np.sqrt(e[:, idx].sum(-1) / y[:, idx].sum(-1)).T


def stratified_boot(groups: list[np.ndarray], n_boot: int = BOOTSTRAP) -> np.ndarray:
    """groups: per task an (models, questions) 0/1 array -> (n_boot, models) of the mean over tasks of
    each task's accuracy, the questions of every task resampled (one draw shared by all models)."""
    rng, out = _rng(), 0.0
    for g in groups:
        idx = rng.integers(0, g.shape[1], (n_boot, g.shape[1]))
        out = out + g[:, idx].mean(-1).T
    return 100.0 * out / len(groups)


def ratio_boot(num: list[list[float]], den: list[list[float]], n_boot: int = BOOTSTRAP) -> np.ndarray:
    """(n_boot, models): Σ num / Σ den over windows / conversations resampled together."""
    a, t = np.asarray(num, np.float64), np.asarray(den, np.float64)
    idx = _rng().integers(0, a.shape[1], (n_boot, a.shape[1]))
    return (a[:, idx].sum(-1) / t[:, idx].sum(-1)).T


def ppl_boot(nll: list[list[float]], tokens: list[list[int]], n_boot: int = BOOTSTRAP) -> np.ndarray:
    """(n_boot, models): exp(Σ nll / Σ tokens) over windows / conversations resampled together."""
    return np.exp(ratio_boot(nll, tokens, n_boot))


def kl_per_token(r: dict) -> float:
    """Next-token KL to the pretrained model per token (nats) of an in-situ record (insitu, alone)."""
    return sum(r["kl"]) / sum(r["tokens"])


def kl_difference(a: dict, b: dict) -> tuple[float, float, float]:
    """kl_per_token of in-situ record `a` minus `b`'s, with its 95% interval; the test windows are
    resampled together (both models ran on the same windows)."""
    boot = ratio_boot([a["kl"], b["kl"]], [a["tokens"], b["tokens"]])
    lo, hi = ci(boot[:, 0] - boot[:, 1])
    return kl_per_token(a) - kl_per_token(b), lo, hi


def ppl_ratio_ci(R: dict, a: str, b: str, key: str = "wikitext") -> tuple:
    """ppl(a) / ppl(b) − 1 and its paired 95% bootstrap interval (paired's, this part alone);
    (None, None, None) when either eval_ppl record is missing."""
    d = ppl_data(R, [a, b], key)
    if not d:
        return None, None, None
    boot = ppl_boot(*d)
    return (ppl(d[0][0], d[1][0]) / ppl(d[0][1], d[1][1]) - 1, *ci(boot[:, 0] / boot[:, 1] - 1))


def ppl(nll, tokens) -> float:
    return math.exp(sum(nll) / sum(tokens))


def rule(lo: float, hi: float, margin: float) -> str:
    """inside ±margin: matches; entirely outside: does not match; else inconclusive."""
    if -margin <= lo and hi <= margin:
        return "matches"
    if lo > margin or hi < -margin:
        return "does not match"
    return "inconclusive"


def arms_of(R: dict) -> list[str]:
    out = []
    for u, r in R.items():
        if r["kind"] == "fit" and r["arm"] not in out:
            out.append(r["arm"])
    return sorted(out, key=lambda a: (a != "linear", a != "kan", a))  # linear, kan, then other families


def layers_of(R: dict) -> list[int]:
    return sorted({r["layer"] for r in R.values() if r["kind"] == "fit"})


def best(r: dict) -> dict:
    return r["lrs"][f"{r['best_lr']:g}"]


def split_model(name: str) -> tuple[str, str]:
    return tuple(name.rsplit("_", 1)) if name.endswith(("_seq", "_ft")) else (name, "")


def model_rank(name: str) -> tuple:
    if name == "reference":
        return (0, "")
    arm, variant = split_model(name)
    return (1 + ORDER_SUFFIX.index("_" + variant if variant else ""), arm != "linear", arm)


def judged(R: dict) -> list[str]:
    names = {r["model"] for r in R.values() if r["kind"].startswith("eval_")}
    return sorted(names, key=model_rank)


def mc_groups(R: dict, names: list[str]) -> list[np.ndarray] | None:
    runs = [R.get(f"eval_mc__{n}") for n in names]
    if any(r is None for r in runs):
        return None
    return [np.stack([bits(r["tasks"][t][BITS[METRIC[t]]]) for r in runs]) for t in MC_TASKS]


def bbh_groups(R: dict, names: list[str]) -> list[np.ndarray] | None:
    runs = [R.get(f"eval_bbh__{n}") for n in names]
    if any(r is None for r in runs):
        return None
    return [np.stack([bits(r["tasks"][t]["correct"]) for r in runs]) for t in sorted(runs[0]["tasks"])]


def ppl_data(R: dict, names: list[str], key: str, subset: bool = False):
    runs = [R.get(f"eval_ppl__{n}") for n in names]
    if any(r is None for r in runs):
        return None
    keep = [bool(v) for v in runs[0][key].get("v1_heldout", [])] if subset else None
    pick = (lambda xs: [x for x, k in zip(xs, keep) if k]) if subset else (lambda xs: xs)
    return [pick(r[key]["nll"]) for r in runs], [pick(r[key]["tokens"]) for r in runs]


def paired(R: dict, a: str, b: str) -> dict:
    """a minus b: BBH and MC mean differences (points) and perplexity ratios − 1, with 95% intervals."""
    out = {}
    for key, groups in (("bbh", bbh_groups(R, [a, b])), ("mc", mc_groups(R, [a, b]))):
        if groups:
            boot = stratified_boot(groups)
            point = 100 * float(np.mean([g[0].mean() - g[1].mean() for g in groups]))
            out[key] = (point, *ci(boot[:, 0] - boot[:, 1]))
    for key in ("wikitext", "mt_bench"):
        d = ppl_data(R, [a, b], key)
        if d:
            boot = ppl_boot(*d)
            out[key] = (ppl(d[0][0], d[1][0]) / ppl(d[0][1], d[1][1]) - 1, *ci(boot[:, 0] / boot[:, 1] - 1))
    return out
