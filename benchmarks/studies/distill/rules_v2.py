"""The verdict rules of distillation v2 (issue #42), written before its runs and tested on made-up
records (tests/benchmarks/test_distill_v2_rules.py). Every rule reads records only.

1. The best re-learned KAN arm is chosen on *validation* error (mean over blocks of each block's
   error at its validation-chosen lr), never on test, so the choice cannot flatter the test numbers.
2. Target (the issue's bar for that arm): test relative fit error within +FIT_TARGET of linear's on
   every block, and spliced WikiText-2 test perplexity within PPL_TARGET of the linear splice's.
   Point estimates decide; the intervals are reported beside them. A missing block or perplexity
   record makes the target "not measured yet", never "met".
3. Warm start after fine-tuning ("a KAN warm start fine-tuned matches or beats the linear MLP
   fine-tuned at equal budget"): on WikiText-2 test perplexity, the paired 95% interval of
   ppl(KAN) / ppl(linear) − 1 must lie wholly below +PPL_TARGET for "matches or beats"; wholly above
   it is "does not"; otherwise "inconclusive". A loss bigger than the margin cannot hide in it.
"""

from __future__ import annotations

import math

FIT_TARGET = 0.05  # relative error ‖ŷ−y‖/‖y‖, KAN − linear, on every block
PPL_TARGET = 0.05  # relative WikiText-2 test perplexity
_EPS = 1e-12  # a difference at the margin, up to float rounding, is within it


def blocks_of(R: dict, arm: str) -> dict[int, dict]:
    return {r["layer"]: r for r in R.values() if r.get("kind") == "fit" and r.get("arm") == arm}


def chosen(r: dict) -> dict:
    """The lr entry a fit record kept (its lowest validation error)."""
    return r["lrs"][f"{r['best_lr']:g}"]


def best_kan_arm(R: dict, kan_arms: list[str], layers: list[int]) -> str | None:
    """The KAN arm with the lowest mean validation error over `layers`; arms missing a block are not
    candidates (None when no arm has every block)."""
    scores = {}
    for a in kan_arms:
        b = blocks_of(R, a)
        if all(k in b for k in layers):
            scores[a] = sum(chosen(b[k])["val"]["rel_err"] for k in layers) / len(layers)
    return min(scores, key=scores.get) if scores else None


def fit_gaps(R: dict, kan: str, lin: str, layers: list[int]) -> dict[int, float]:
    """{block: test error of kan − test error of lin} for the blocks both have."""
    a, b = blocks_of(R, kan), blocks_of(R, lin)
    return {k: chosen(a[k])["test"]["rel_err"] - chosen(b[k])["test"]["rel_err"] for k in layers if k in a and k in b}


def ppl_ratio(R: dict, model: str, ref: str, key: str = "wikitext") -> float | None:
    """ppl(model) / ppl(ref) − 1 on `key` from the eval_ppl records (None if either is missing)."""
    a, b = R.get(f"eval_ppl__{model}"), R.get(f"eval_ppl__{ref}")
    if a is None or b is None:
        return None
    def ppl(r):
        return math.exp(sum(r[key]["nll"]) / sum(r[key]["tokens"]))
    return ppl(a) / ppl(b) - 1


def target(R: dict, kan: str, lin: str, layers: list[int]) -> dict:
    """The target check of rule 2: {"status": met | missed | not measured yet, "fit": gaps, "ppl": ratio − 1}."""
    gaps = fit_gaps(R, kan, lin, layers)
    ratio = ppl_ratio(R, kan, lin)
    missed = [k for k, g in gaps.items() if g > FIT_TARGET + _EPS]
    if missed or (ratio is not None and ratio > PPL_TARGET + _EPS):
        status = "missed"
    elif len(gaps) < len(layers) or ratio is None:
        status = "not measured yet"
    else:
        status = "met"
    return {"status": status, "fit": gaps, "missed_blocks": missed, "ppl": ratio}


def warm_start_verdict(lo: float | None, hi: float | None) -> str:
    """Rule 3 on the paired 95% interval of ppl(KAN warm start, fine-tuned) / ppl(linear, fine-tuned) − 1."""
    if lo is None or hi is None:
        return "not measured yet"
    if hi < PPL_TARGET:
        return "matches or beats"
    if lo > PPL_TARGET:
        return "does not match"
    return "inconclusive"


def best_finetune_lr(lrs: dict, grid) -> float | None:
    """The fine-tune lr kept for a start (as rule 1, on validation, never test): the lr of `grid` whose
    entry in `lrs` ({f"{lr:g}": {"val_loss": ...}}) has the lowest validation next-token loss. An lr
    without an entry, or whose loss is missing or not finite (a diverged run), is never chosen; None
    when no lr qualifies."""
    scores = {}
    for lr in grid:
        v = (lrs.get(f"{lr:g}") or {}).get("val_loss")
        if v is not None and math.isfinite(v):
            scores[float(lr)] = v
    return min(scores, key=scores.get) if scores else None


def gap_location(errmaps: dict, kan: str, lin: str, block: int, firsttokens: dict | None = None) -> dict | None:
    """Where kan's extra error over lin sits on one block: first tokens (attention sink) or the rest.
    Relative errors per part from the errmap records; which part the gap *sits on* is decided by each
    part's share of the gap in squared error, Σ‖ŷ−y‖² (from the firsttoken records, when given): a part
    with ~0% of the output energy cannot carry the gap however large its relative error ("share_first":
    the first tokens' share of that gap). None when either errmap record is missing."""
    a, b = errmaps.get(kan), errmaps.get(lin)
    if a is None or b is None or str(block) not in a["blocks"] or str(block) not in b["blocks"]:
        return None
    ea, eb = a["blocks"][str(block)], b["blocks"][str(block)]
    out = {"first": ea["rel_err_first"] - eb["rel_err_first"], "rest": ea["rel_err_rest"] - eb["rel_err_rest"],
           "kan_first": ea["rel_err_first"], "lin_first": eb["rel_err_first"],
           "kan_rest": ea["rel_err_rest"], "lin_rest": eb["rel_err_rest"], "share_first": None}
    ft = firsttokens or {}
    if kan in ft and lin in ft and str(block) in ft[kan]["blocks"] and str(block) in ft[lin]["blocks"]:
        fa, fb = ft[kan]["blocks"][str(block)], ft[lin]["blocks"][str(block)]
        first = sum(fa["first_err2"]) - sum(fb["first_err2"])
        rest = (sum(fa["err2"]) - sum(fa["first_err2"])) - (sum(fb["err2"]) - sum(fb["first_err2"]))
        out["share_first"] = first / (first + rest) if first + rest > 0 else None
    return out


def gap_sits_on_first_tokens(loc: dict) -> bool:
    """The first tokens carry more of the squared-error gap than the rest (relative errors decide only
    when the energies are unknown)."""
    if loc["share_first"] is not None:
        return loc["share_first"] > 0.5
    return loc["first"] > loc["rest"]


def train_mse_ratios(R: dict, kan: str, lin: str, block: int) -> list[float] | None:
    """kan's train MSE ÷ lin's at each logged point of the two kept fits (same steps, same data order),
    None when either fit is missing or their curves differ in length."""
    a, b = R.get(f"fit__{kan}__L{block}"), R.get(f"fit__{lin}__L{block}")
    if a is None or b is None:
        return None
    ka, lb = chosen(a)["train_mse"], chosen(b)["train_mse"]
    return [x / y for x, y in zip(ka, lb)] if len(ka) == len(lb) and all(y > 0 for y in lb) else None


def quarter_points(curve: list[float]) -> list[float]:
    """The curve's logged values at a quarter, half and all of the fit (never its step-0 point)."""
    return [curve[max(1, round(f * len(curve)) - 1)] for f in (0.25, 0.5, 1.0)]


def kept_at_grid_end(r: dict) -> bool:
    """A fit record's kept lr is the smallest or the largest of the lrs it tried (more than one)."""
    grid = [float(lr) for lr in r["lrs"]]
    return len(grid) > 1 and r["best_lr"] in (min(grid), max(grid))


def train_gap_trend(ratios: list[float]) -> str:
    """Whether more steps look likely to close a fitting gap, from the train-MSE ratio (kan ÷ lin) at a
    quarter, a half and the end of the fit: "widening" when it rises at each of the three, "closing"
    when it falls at each, "flat" otherwise (the first point, before any step counts, is left out)."""
    q = quarter_points(ratios)
    if q[0] < q[1] < q[2]:
        return "widening"
    if q[0] > q[1] > q[2]:
        return "closing"
    return "flat"
