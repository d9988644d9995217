"""The distillation study's plan (full_model_distill.py runs it): the blocks and arms, the fit budget
and its learning-rate grid, the --quick budget, and which units are still to do given the records.
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.common.records import read_json_folder

LAYERS = (25, 26, 27, 28, 29)
# configs/full_kan_reinit.py's KAN MLP (the other fields: KANSpec defaults; center spelled out, as the
# records were made before centring became the default)
_KAN = {"targets": ("mlp",), "basis": "chebyshev2", "degree": 2, "domain": "tanh", "param_match": "width",
        "init": "random", "center": "none"}
ARMS = {"linear": None, "kan": _KAN}
# Version 2 (issue #42): the KAN of the project's recipe (kan_recipe.md: linear coefficient init,
# centring; KANSpec defaults), with tanh, with the linear base branch, and on raw inputs.
_RECIPE = {"targets": ("mlp",), "basis": "chebyshev2", "degree": 2, "domain": "tanh", "param_match": "width"}
OPTIONAL_ARMS = {"kan_layernorm": {**_KAN, "domain": "layernorm"},  # standardise, then tanh
                 "kan_legendre3": {**_KAN, "basis": "legendre", "degree": 3},
                 "kan_recipe": _RECIPE, "kan_recipe_base": {**_RECIPE, "base": "linear"},
                 "kan_recipe_none": {**_RECIPE, "domain": "none"},
                 # KAT's GR-KAN: a parameter-matched group-rational KAN MLP re-learned from scratch ...
                 "gr_kan": {"targets": ("mlp",), "basis": "group_rational", "degree": 5, "den_degree": 4,
                            "num_groups": 8, "domain": "none", "param_match": "width"},
                 # ... and the warm start: the pretrained projections kept, SiLU -> group-rational fit of it
                 "gr_warm": {"targets": ("gate",), "strategy": "activation", "basis": "group_rational",
                             "mlp_activation": "none", "degree": 9, "den_degree": 8, "num_groups": 8,
                             "init": "from_linear"},
                 # ... and the exact form of it: SiLU + a group-rational residual that starts at 0
                 "gr_warm_exact": {"targets": ("gate",), "strategy": "activation", "basis": "group_rational",
                                   "mlp_activation": "none", "degree": 9, "den_degree": 8, "num_groups": 8,
                                   "init": "from_linear", "activation_init": "silu_residual"},
                 # the exact KAN form of the pretrained MLP: every projection a full-width Chebyshev-2 KAN that
                 # starts as the linear map it replaces (exact on raw inputs); centred degree 2 keeps 2
                 # coefficients per edge (x, x²), so twice the MLP's parameters
                 "kan_exact": {"targets": ("mlp",), "basis": "chebyshev2", "degree": 2, "domain": "none",
                               "init": "from_linear"}}
# What an arm's spec means, where the dict alone does not say it (the report prints it beside the spec)
ARM_NOTES = {"gr_kan": "each projection's input through a learnable group-rational function (8 groups), then a "
                       "linear map: KAT's GR-KAN, the GLU's width and SiLU kept, +240 parameters",
             "kan_recipe_base": "3 parameters per edge (the base branch's and 2 coefficients): a third of the GLU's "
                                "width at its parameter count",
             "kan_recipe": "2 coefficients per edge: half the GLU's width", "kan_recipe_none": "2 coefficients per "
             "edge: half the GLU's width"}
# Fit-only controls (issue #42: "which cause stands in the way, measured"): the linear GLU at a KAN arm's
# width (512: the recipe with the base branch spends 3 parameters per edge where the GLU spends 1), so
# the fit table says how much of the width the KAN gives up its edge functions win back. A narrower
# function class than linear's, not a candidate of rule 1, not spliced or fine-tuned.
CONTROL_WIDTHS = {"linear_w512": 512}
# Arms that start from the pretrained block (units.warm_mlps: the teacher KAN-ified by the arm's spec), not
# a fresh one, in their fits and as fine-tune starts.
WARM_ARMS = ("gr_warm", "gr_warm_exact", "kan_exact")
# v2's fine-tune starts (issue #42 item 4), named by what the studied blocks' MLPs are before fine-tuning:
# the teacher's own ("pretrained", rule 3's linear comparator), each re-learned arm's kept fits, each warm arm.
PRETRAINED = "pretrained"
EXACT_STARTS = (PRETRAINED, "gr_warm_exact", "kan_exact")  # reproduce the pretrained model at step 0
# max |logit − the teacher's| an exact start may show: float32 rounding, 3e-5 (gr_warm_exact) and 4e-5 (kan_exact)
# in the --quick run; gr_warm's SiLU fit moves them by 7e-2 there
EXACT_LOGIT_TOL = 1e-3
SECOND_SEED = 1  # v2: seedfit units refit linear and the best KAN arm at their kept lr with this seed
FINETUNE_LRS = (1e-4, 3e-4, 1e-3, 3e-3)  # v2: the same grid for every start, chosen by validation loss
# v2: 4x v1's fit tokens (linear's validation error still fell at 400 steps), the same grid for every arm.
V2 = {"arms": ("linear", "linear_w512", "kan_recipe_none", "kan_recipe_base", "kan_recipe", "gr_kan", "gr_warm", "gr_warm_exact"),
      "fit_steps": 1600,
      "finetune_steps": 100,  # the committed records' end-to-end budget (--finetune_steps overrides it)
      "records": "full_model_distill_v2_runs"}
V1_RECORDS = "full_model_distill_runs"
SEQ_LEN = 256
SOURCES = {"tinyshakespeare": 160, "wikitext2_valid": 160, "ag_news_train": 160, "fastchat": 160}  # windows
FIT_STEPS, FIT_BATCH, LRS = 400, 1024, (1e-3, 3e-3, 1e-2, 3e-2)  # linear's val error still fell at 1e-2
PPL_WINDOWS, PPL_SEQ_LEN = 48, 1024
QUICK = {"layers": (4, 5), "num_layers": 6, "seq_len": 64, "windows": 8, "fit_steps": 20, "fit_batch": 256,
         "lrs": (3e-3, 1e-2), "ppl_windows": 2, "ppl_seq_len": 128, "chat": 3, "bbh_tasks": ("bbh_boolean_expressions",
         "bbh_sports_understanding"), "bbh_limit": 2, "mc_limit": 4, "finetune_steps": 2,
         "finetune_lrs": (1e-4, 1e-3)}  # finetune_lrs: v2 only


def settings(args) -> dict:
    """The budget this run uses (QUICK overrides for --quick; command-line values win)."""
    s = {"layers": LAYERS, "num_layers": 0, "seq_len": SEQ_LEN, "windows": None, "fit_steps": FIT_STEPS,
         "fit_batch": FIT_BATCH, "lrs": LRS, "ppl_windows": PPL_WINDOWS, "ppl_seq_len": PPL_SEQ_LEN, "chat": None,
         "bbh_tasks": ("bbh",), "bbh_limit": args.bbh_limit, "mc_limit": args.mc_limit,
         "finetune_steps": args.finetune_steps}
    s["v2"] = bool(getattr(args, "v2", False))
    if s["v2"]:
        s["fit_steps"], s["finetune_lrs"] = V2["fit_steps"], FINETUNE_LRS
        s["finetune_steps"] = args.finetune_steps or V2["finetune_steps"]
    if args.quick:
        s.update(QUICK)
        if not s["v2"]:  # v1 fine-tunes at --finetune_lr; its records keep their settings
            del s["finetune_lrs"]
    if args.fit_steps:
        s["fit_steps"] = args.fit_steps
    if args.lrs:
        s["lrs"] = tuple(float(v) for v in args.lrs.split(","))
    if s["v2"] and getattr(args, "finetune_lrs", ""):
        s["finetune_lrs"] = tuple(float(v) for v in args.finetune_lrs.split(","))
    s["arms"] = tuple(a for a in args.arms.split(",") if a)
    for arm in s["arms"]:
        if arm not in ARMS and arm not in OPTIONAL_ARMS and arm not in CONTROL_WIDTHS:
            known = list(ARMS) + list(OPTIONAL_ARMS) + list(CONTROL_WIDTHS)
            raise ValueError(f"--arms: unknown arm {arm!r}; known: {', '.join(known)}")
    return s


def arm_spec(arm: str):
    from kanjax.llama.kan_spec import KANSpec

    if arm == PRETRAINED or arm in CONTROL_WIDTHS:  # the teacher's own linear MLPs; a narrower GLU
        return None
    spec = {**ARMS, **OPTIONAL_ARMS}[arm]
    return None if spec is None else KANSpec.from_dict(spec)


def finetune_starts(arms, best_kan: str | None) -> list[str]:
    """v2's fine-tune starts (issue #42 item 4): the pretrained MLPs, the best re-learned KAN arm's kept
    fits (rule 1's choice among `arms`, once it is made), every warm arm (from the teacher)."""
    return [PRETRAINED] + [a for a in [best_kan] if a in arms and a not in WARM_ARMS] + list(WARM_ARMS)


def best_relearned(args, s) -> str | None:
    """Rule 1's best re-learned KAN arm of `s["arms"]` from the fit records (None until every block of the
    arms it compares is fitted: the driver plans again after each pass)."""
    from benchmarks.studies.distill import rules_v2

    R = {r["unit"]: r for r in read_json_folder(args.records, "fit__*.json")}
    return rules_v2.best_kan_arm(R, relearned_kan_arms(s["arms"]), list(s["layers"]))


def relearned_kan_arms(arms) -> list[str]:
    """Rule 1's candidates: the KAN arms fitted from a fresh block (not linear, its controls, or a warm arm)."""
    return [a for a in arms if a != "linear" and a not in CONTROL_WIDTHS and a not in WARM_ARMS]


def judged_arms(arms) -> list[str]:
    """The arms whose splices are judged (the fit-only controls are not)."""
    return [a for a in arms if a not in CONTROL_WIDTHS]


def finetuned(args, s) -> list[str]:
    """What is fine-tuned: v1 each arm's splice at one lr, v2 each start of finetune_starts at a grid."""
    if not s["finetune_steps"]:
        return []
    return finetune_starts(s["arms"], best_relearned(args, s)) if s["v2"] else list(s["arms"])


def finetune_budget(args, s) -> dict:
    """What a v2 fine-tune lr's result depends on besides its start and lr (a record's lrs are kept by
    a rerun only at the same budget)."""
    return {"steps": s["finetune_steps"], "batch_windows": args.finetune_batch, "seed": args.seed,
            "warmup": max(1, s["finetune_steps"] // 10)}


def models(args, s) -> list[str]:
    """The judged models: the pretrained reference, then each arm (+ its _seq / _ft variants; v2's _ft
    models are the fine-tune starts')."""
    out = ["reference"] + judged_arms(s["arms"])
    if args.sequential:
        out += [f"{a}_seq" for a in judged_arms(s["arms"])]
    out += [f"{a}_ft" for a in finetuned(args, s)]
    return out


def seed_arms(args, s) -> list[str]:
    """v2's second-seed fits (issue #42 item 3: 2 seeds for linear and the best KAN arm) and one-block
    splices (alone units: which block a splice's extra next-token KL comes from): linear and the best
    re-learned KAN arm (best_relearned); before rule 1 can choose, linear alone."""
    if not s["v2"] or "linear" not in s["arms"]:
        return []
    best = best_relearned(args, s)
    return ["linear"] + ([best] if best else [])


def plan(args, s) -> list[str]:
    """Units in dependency order; the cheap comparisons come before the long benchmark runs."""
    units = ["record"] + [f"diagnose__L{k}" for k in s["layers"] if s["v2"]]
    units += [f"fit__{a}__L{k}" for a in s["arms"] for k in s["layers"]]
    units += [f"errmap__{a}" for a in judged_arms(s["arms"]) if s["v2"]]
    units += [f"seedfit__{a}__L{k}" for a in seed_arms(args, s) for k in s["layers"]]
    if args.sequential:
        units += [f"seqfit__{a}__L{k}" for a in judged_arms(s["arms"]) for k in s["layers"][1:]]
    units += [f"finetune__{a}" for a in finetuned(args, s)]
    judged = models(args, s)
    units += [f"firsttoken__{a}" for a in judged_arms(s["arms"])] + ["bbh_floor"]
    units += [f"insitu__{m}" for m in judged if m != "reference"]
    units += [f"alone__{a}__L{k}" for a in seed_arms(args, s) for k in s["layers"]]  # v2 only, as seed_arms
    # v2 judges its fine-tuned models on perplexity, KL and the multiple-choice sets (issue #42), not BBH
    units += [f"eval_{part}__{m}" for part in ("ppl", "bbh", "mc") for m in judged
              if not (s["v2"] and part == "bbh" and m.endswith("_ft"))]
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


def missing_finetune_lrs(args, s, unit: str) -> list[float]:
    """v2: the fine-tune grid's lrs that the unit's record does not hold at this budget (all of them if
    there is no record or it was made at another budget)."""
    path = Path(args.records) / f"{unit}.json"
    r = json.loads(path.read_text()) if path.is_file() else None
    same = r is not None and r.get("budget") == finetune_budget(args, s)
    return [lr for lr in s["finetune_lrs"] if not same or f"{lr:g}" not in r["lrs"]]


def pending(args, s) -> list[str]:
    """The plan's units without a record, and fit (v2: fine-tune) units whose record lacks an lr of the
    grid. Records of units built on a fit or fine-tune that a wider grid may change (in situ,
    evaluations of that model) stop the run: they would no longer describe what is kept."""
    records = Path(args.records)
    units = plan(args, s)

    def widens(u):
        return ((u.startswith(("fit__", "seqfit__")) and missing_lrs(args, s, u))
                or (s["v2"] and u.startswith("finetune__") and missing_finetune_lrs(args, s, u)))

    todo = [u for u in units if not (records / f"{u}.json").exists() or widens(u)]
    redone = [u for u in todo if (records / f"{u}.json").exists()]
    widened = {u.split("__")[1] for u in redone if not u.startswith("finetune__")}  # arms whose fits change
    tuned = {u.split("__")[1] for u in redone if u.startswith("finetune__")}  # starts whose fine-tune changes

    def depends(u):
        name = u.split("__")[1]
        if u.startswith(("insitu__", "eval_")) and name.endswith("_ft") and name[:-3] in tuned:
            return True
        start = re.sub(r"_(seq|ft)$", "", name)
        if s["v2"] and (u.startswith("finetune__") or name.endswith("_ft")) and start in (PRETRAINED, *WARM_ARMS):
            return False  # v2 starts from the teacher: no fit in it
        return start in widened

    stale = [u for u in units if u.startswith(("firsttoken__", "insitu__", "alone__", "eval_", "finetune__"))
             and u not in todo and (records / f"{u}.json").exists() and depends(u)]
    if stale:
        changed = [f"the fits of {', '.join(sorted(widened))}"] * bool(widened)
        changed += [f"the fine-tunes of {', '.join(sorted(tuned))}"] * bool(tuned)
        raise SystemExit(f"--lrs / --finetune_lrs widen {' and '.join(changed)}, but these records were made from "
                         f"the narrower ones: {', '.join(stale)}. Delete them from {records} to redo them.")
    return todo
