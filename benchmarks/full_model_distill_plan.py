"""The distillation study's plan (full_model_distill.py runs it): the blocks and arms, the fit budget
and its learning-rate grid, the --quick budget, and which units are still to do given the records.
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

LAYERS = (25, 26, 27, 28, 29)
# configs/full_kan_reinit.py's KAN MLP (the other fields: KANSpec defaults; center spelled out, as the
# records were made before centring became the default)
_KAN = {"targets": ("mlp",), "basis": "chebyshev2", "degree": 2, "domain": "tanh", "param_match": "width",
        "init": "random", "center": "none"}
ARMS = {"linear": None, "kan": _KAN}
# Distillation v2 (issue #42): the KAN of the project's recipe (kan_recipe.md: linear coefficient init,
# centring; KANSpec defaults), with tanh, with the linear base branch, and on raw inputs.
_RECIPE = {"targets": ("mlp",), "basis": "chebyshev2", "degree": 2, "domain": "tanh", "param_match": "width"}
OPTIONAL_ARMS = {"kan_layernorm": {**_KAN, "domain": "layernorm"},  # standardise, then tanh
                 "kan_legendre3": {**_KAN, "basis": "legendre", "degree": 3},
                 "kan_recipe": _RECIPE, "kan_recipe_base": {**_RECIPE, "base": "linear"},
                 "kan_recipe_none": {**_RECIPE, "domain": "none"}}
SEQ_LEN = 256
SOURCES = {"tinyshakespeare": 160, "wikitext2_valid": 160, "ag_news_train": 160, "fastchat": 160}  # windows
FIT_STEPS, FIT_BATCH, LRS = 400, 1024, (1e-3, 3e-3, 1e-2, 3e-2)  # linear's val error still fell at 1e-2
PPL_WINDOWS, PPL_SEQ_LEN = 48, 1024
QUICK = {"layers": (4, 5), "num_layers": 6, "seq_len": 64, "windows": 8, "fit_steps": 20, "fit_batch": 256,
         "lrs": (3e-3, 1e-2), "ppl_windows": 2, "ppl_seq_len": 128, "chat": 3, "bbh_tasks": ("bbh_boolean_expressions",
         "bbh_sports_understanding"), "bbh_limit": 2, "mc_limit": 4, "finetune_steps": 2}


def settings(args) -> dict:
    """The budget this run uses (QUICK overrides for --quick; command-line values win)."""
    s = {"layers": LAYERS, "num_layers": 0, "seq_len": SEQ_LEN, "windows": None, "fit_steps": FIT_STEPS,
         "fit_batch": FIT_BATCH, "lrs": LRS, "ppl_windows": PPL_WINDOWS, "ppl_seq_len": PPL_SEQ_LEN, "chat": None,
         "bbh_tasks": ("bbh",), "bbh_limit": args.bbh_limit, "mc_limit": args.mc_limit,
         "finetune_steps": args.finetune_steps}
    if args.quick:
        s.update(QUICK)
    if args.fit_steps:
        s["fit_steps"] = args.fit_steps
    if args.lrs:
        s["lrs"] = tuple(float(v) for v in args.lrs.split(","))
    s["arms"] = tuple(a for a in args.arms.split(",") if a)
    for arm in s["arms"]:
        if arm not in ARMS and arm not in OPTIONAL_ARMS:
            raise ValueError(f"--arms: unknown arm {arm!r}; known: {', '.join(list(ARMS) + list(OPTIONAL_ARMS))}")
    return s


def arm_spec(arm: str):
    from kanjax.kanify import KANSpec

    spec = {**ARMS, **OPTIONAL_ARMS}[arm]
    return None if spec is None else KANSpec.from_dict(spec)


def models(args, s) -> list[str]:
    """The judged models: the pretrained reference, then each arm (+ its _seq / _ft variants)."""
    out = ["reference"] + list(s["arms"])
    if args.sequential:
        out += [f"{a}_seq" for a in s["arms"]]
    if s["finetune_steps"]:
        out += [f"{a}_ft" for a in s["arms"]]
    return out


def plan(args, s) -> list[str]:
    """Units in dependency order; the cheap comparisons come before the long benchmark runs."""
    units = ["record"] + [f"fit__{a}__L{k}" for a in s["arms"] for k in s["layers"]]
    if args.sequential:
        units += [f"seqfit__{a}__L{k}" for a in s["arms"] for k in s["layers"][1:]]
    if s["finetune_steps"]:
        units += [f"finetune__{a}" for a in s["arms"]]
    judged = models(args, s)
    units += [f"firsttoken__{a}" for a in s["arms"]] + ["bbh_floor"]
    units += [f"insitu__{m}" for m in judged if m != "reference"]
    units += [f"eval_{part}__{m}" for part in ("ppl", "bbh", "mc") for m in judged]
    return [u for u in units if not args.only or re.search(args.only, u)]


def earlier_fit(args, s, unit: str) -> dict | None:
    """The unit's record from a run with the same fit budget, whose lrs (with saved parameters) a wider
    grid keeps instead of refitting; None if there is none."""
    path = Path(args.records) / f"{unit}.json"
    if not path.is_file():
        return None
    r = json.loads(path.read_text())
    same = r["fit"]["steps"] == s["fit_steps"] and r["fit"]["batch_tokens"] == s["fit_batch"]
    return r if same else None


def missing_lrs(args, s, unit: str) -> list[float]:
    """The grid's lrs that the unit's record does not hold yet (all of them if there is no record)."""
    r = earlier_fit(args, s, unit)
    return [lr for lr in s["lrs"] if r is None or f"{lr:g}" not in r["lrs"]]


def pending(args, s) -> list[str]:
    """The plan's units without a record, and fit units whose record lacks an lr of the grid. Records
    of units built on a fit that a wider grid may change (in situ, evaluations of that arm) stop the
    run: they would no longer describe the fit that is kept."""
    records = Path(args.records)
    units = plan(args, s)
    todo = [u for u in units if not (records / f"{u}.json").exists()
            or (u.startswith(("fit__", "seqfit__")) and missing_lrs(args, s, u))]
    widened = {u.split("__")[1] for u in todo if u.startswith(("fit__", "seqfit__")) and (records / f"{u}.json").exists()}
    stale = [u for u in units if u.startswith(("firsttoken__", "insitu__", "eval_", "finetune__"))
             and (records / f"{u}.json").exists()
             and re.sub(r"_(seq|ft)$", "", u.split("__")[1]) in widened]
    if stale:
        raise SystemExit(f"--lrs widens the fits of {', '.join(sorted(widened))}, but these records were made from "
                         f"the narrower fits: {', '.join(stale)}. Delete them from {records} to redo them.")
    return todo
