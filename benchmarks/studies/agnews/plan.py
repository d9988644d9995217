"""The AGNews study's plan: the budget, the arms of its three phases, their seeds, and the rate choice.

Three phases, each a list of arms (name, config file, overrides, seeds):

* recipe: the diagnosis. Linear and KAN variants (the old defaults, then one fix at a time) with
  `train.diagnostics_every` on: per-projection statistics and loss curves for kan_recipe.md.
* tune: the same learning-rate grid for the linear baseline and the Chebyshev-2 KAN, the rate chosen on
  the validation accuracy of seeds 0-2 only. The study then trains every arm at the tuned rate of its
  kind (linear arms: linear's; KAN arms: the KAN's). Seeds 3-4 of the grid measure claim 7 (accuracy
  away from each kind's best rate) at five seeds; they never move the choice.
* study: every basis family and KAN variant against linear, seed k of every arm seeing the same
  data order (paired), with the claims of the original research judged in agnews.md.

Where a record lives, how it is read and which records are the same training (same_run: a run is
reused, never retrained, whatever its phase) are here too, so the reports (agnews_claims.py, agnews_report.py,
kan_recipe_report.py) and benchmarks/perf/kan_layer.py import the plan without the runner (agnews_study.py).
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import statistics
import time
from pathlib import Path

from benchmarks.common.records import read_json_folder

REPO = Path(__file__).resolve().parents[3]

# The budget every run gets. 80 tokens hold 93% of the shared AGNews training texts whole (the
# SmolLM2 tokenizer: median 53, 90th percentile 75 tokens; 94% of the test texts): text_coverage
# measures it at every study start, into the records (agnews.md states it from there).
SEQ_LEN = 80
BUDGET = {"data.seq_len": SEQ_LEN, "data.batch_size": 32, "train.steps": 600, "train.warmup": 30,
          "train.log_every": 10, "eval.every": 50, "eval.batch_size": 200,
          # A run cut short (a session's end) resumes from its last checkpoint, bitwise as if never stopped.
          "checkpoint.every": 100, "checkpoint.keep": 1}
QUICK = {"data.seq_len": 16, "data.batch_size": 8, "train.steps": 6, "train.warmup": 2,
         "train.log_every": 2, "eval.every": 3, "eval.batch_size": 64, "eval.limit": 64,
         "eval.test_limit": 256, "checkpoint.every": 0, "model.num_layers": 1, "model.vocab_size": 512}
DIAGNOSTICS_EVERY = 25
# 1e-4 joined after the first three rates chose 3e-4 for the KAN, the grid's lowest: a rate chosen at
# the grid's edge may not be the arm's best. Both arms get it (the same tuning budget).
LEARNING_RATES = (1e-4, 3e-4, 1e-3, 3e-3)
TUNED_KINDS = {"linear": "linear", "kan": "kan_chebyshev2"}  # kind -> the arm whose tuned LR it uses


@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    config: str  # configs/<config>.py
    overrides: dict
    seeds: int
    lr_of: str | None = None  # "linear" | "kan": train at that kind's tuned rate (study phase)


# The diagnosis: the KAN layer as it was before it (v1), both fixes, and both with each of the two
# candidate third steps, trained; each fix alone only initialised (INIT_ONLY: step-0 diagnostics, what
# tells the fixes apart, at no training cost). Every arm spells out all its settings, so it stays the
# same run when the defaults move; linear at the same rate and seeds is the tune phase's linear_lr0.001.
V1 = {"kan.coef_init": "random", "kan.bottleneck_init": "layerwise", "kan.center": "none", "kan.domain": "tanh"}
FIXED = {**V1, "kan.coef_init": "linear", "kan.bottleneck_init": "output"}
INIT_ONLY = {"train.steps": 1, "train.warmup": 0, "eval.every": 0, "eval.limit": 100, "eval.test_limit": 100}
RECIPE = [
    Arm("kan_v1_defaults", "kan_cheb2", V1, 3),
    Arm("kan_linear_bottleneck", "kan_cheb2", FIXED, 3),
    Arm("kan_linear_bottleneck_centred", "kan_cheb2", {**FIXED, "kan.center": "zero"}, 3),
    Arm("kan_linear_bottleneck_layernorm", "kan_cheb2", {**FIXED, "kan.domain": "layernorm"}, 2),
    # The recipe before centring became the default, over the learning-rate grid (its 0.001 is
    # kan_linear_bottleneck): the grid it was tuned on as the tune phase's KAN until then.
    *[Arm(f"kan_linear_bottleneck_lr{lr:g}", "kan_cheb2", {**FIXED, "train.lr": lr}, 3)
      for lr in LEARNING_RATES if lr != 1e-3],
    Arm("init_coef_linear_only", "kan_cheb2", {**V1, "kan.coef_init": "linear", **INIT_ONLY}, 3),
    Arm("init_bottleneck_only", "kan_cheb2", {**V1, "kan.bottleneck_init": "output", **INIT_ONLY}, 3),
]
# The rate is chosen on the validation accuracy of seeds 0..CHOICE_SEEDS-1 (the tuning budget, the same for
# both kinds), so it never moves under runs already trained at it; seeds 3 and 4 of the grid only measure
# claim 7 (accuracy off each kind's best rate) at as many seeds as the other claims (the two runs at the
# chosen rates are the study's seeds 3 and 4, reused).
CHOICE_SEEDS = 3
TUNE = [Arm(f"{arm}_lr{lr:g}", cfg, {"train.lr": lr}, 5)
        for arm, cfg in (("linear", "linear"), ("kan_chebyshev2", "kan_cheb2")) for lr in LEARNING_RATES]
# The other families at polynomial degree 3 (Fibonacci's F_4 is the cubic): with the recipe's centring
# and per-column normalisation every symmetric family's degree-2 columns are x and x² (the same layer as
# Chebyshev-2 degree 2); at degree 3 their odd columns mix x³ and x differently. Chebyshev-2 degree 3 is
# their reference (claim 2), with as many seeds as Jacobi and Gegenbauer.
FAMILY_DEGREE = {"chebyshev": 3, "legendre": 3, "hermite": 3, "laguerre": 3, "bessel": 3, "fibonacci": 4, "lucas": 3,
                 "jacobi": 3, "gegenbauer": 3}
FAMILY_SEEDS = {"jacobi": 5, "gegenbauer": 5}
OTHER_BASES = ["bspline", "rbf", "rational"]  # no polynomial degree: their own configs' grid / P/Q degree
BASIS_AND_DEGREE = [
    # Degree 3 is claim 2's reference; degree 1 is the one rival whose layer is not slower (kan_layer.md), so
    # claim 1 rests on it: both get the claim arms' five seeds.
    *[Arm(f"kan_chebyshev2_deg{d}", "kan_cheb2", {"kan.degree": d}, 5 if d in (1, 3) else 3, "kan")
      for d in (1, 3, 4, 5)],
    *[Arm(f"kan_{f}_deg{d}", f"kan_{f}", {"kan.degree": d}, FAMILY_SEEDS.get(f, 3), "kan")
      for f, d in FAMILY_DEGREE.items()],
    *[Arm(f"kan_{f}", f"kan_{f}", {}, 3, "kan") for f in OTHER_BASES],
]
FULL_WIDTH = {"kan.param_match": "none"}
STUDY = [
    Arm("linear", "linear", {}, 5, "linear"),
    Arm("linear_fp16", "linear", {"train.precision": "fp16"}, 5, "linear"),
    Arm("kan_chebyshev2", "kan_cheb2", {}, 5, "kan"),
    Arm("kan_chebyshev2_fp16", "kan_cheb2", {"train.precision": "fp16"}, 5, "kan"),
    Arm("kan_chebyshev2_nosilu", "kan_cheb2_nosilu", {}, 5, "kan"),
    # As the original: the full-width linear layer plus a KAN branch beside it or after it.
    Arm("kan_chebyshev2_parallel", "kan_cheb2_parallel", FULL_WIDTH, 5, "kan"),
    Arm("kan_chebyshev2_sequential", "kan_cheb2_sequential", FULL_WIDTH, 5, "kan"),
    Arm("kan_chebyshev2_parallel_matched", "kan_cheb2_parallel", {}, 3, "kan"),
    Arm("kan_chebyshev2_sequential_matched", "kan_cheb2_sequential", {}, 3, "kan"),
    Arm("kan_chebyshev2_half", "kan_cheb2", {"kan.param_ratio": 0.5}, 5, "kan"),  # claim 8 rests on it
    *BASIS_AND_DEGREE,
]
# The arms that differ from Chebyshev-2 degree 2 in basis or degree only: claim 1's rivals.
BASIS_DEGREE_ARMS = [a.name for a in BASIS_AND_DEGREE]
PHASES = {"recipe": RECIPE, "tune": TUNE, "study": STUDY}
# The run whose trained KAN agnews.md draws (kanjax.viz): the study's Chebyshev-2 seed 0.
FIGURE_RUN = ("study", "kan_chebyshev2", 0)


def records_dir(args, phase: str) -> Path:
    return Path(args.records) / phase


def record_path(args, phase: str, name: str, seed: int) -> Path:
    return records_dir(args, phase) / f"{name}__seed{seed}.json"


def read_records(folder: Path) -> list[dict]:
    return read_json_folder(folder)


def best_rate(by_lr: dict[float, list[dict]], choice_seeds: int = CHOICE_SEEDS) -> float | None:
    """The rate whose runs of seeds 0..choice_seeds-1 have the highest mean final validation accuracy
    (ties: the smaller rate); None until every rate of LEARNING_RATES has all those seeds."""
    val = {lr: {r["seed"]: r["final_val_accuracy"] for r in runs if r["seed"] < choice_seeds}
           for lr, runs in by_lr.items()}
    if set(val) != set(LEARNING_RATES) or any(len(v) < choice_seeds for v in val.values()):
        return None
    return max(val, key=lambda lr: (statistics.fmean(val[lr].values()), -lr))


def tuned_rates(tune_records: list[dict], quick: bool = False) -> dict[str, float]:
    """{kind: best_rate of its arm's grid} per kind of TUNED_KINDS; a kind whose choice is not ready is absent.
    --quick runs one seed per arm, and chooses on it."""
    out = {}
    for kind, arm in TUNED_KINDS.items():
        by_lr: dict[float, list[dict]] = {}
        for r in tune_records:
            if r["name"].startswith(f"{arm}_lr"):
                by_lr.setdefault(r["lr"], []).append(r)
        if (lr := best_rate(by_lr, 1 if quick else CHOICE_SEEDS)) is not None:
            out[kind] = lr
    return out


def run_overrides(phase: str, arm: Arm, seed: int, args, rates: dict[str, float]) -> dict | None:
    """Every override of one run, or None when it waits for the tuning phase (arm.lr_of not tuned yet)."""
    flags = dict(QUICK if args.quick else BUDGET)
    if args.steps:
        flags["train.steps"] = args.steps
    if phase in ("recipe", "tune"):  # the diagnosis reads both (kan_recipe.md)
        flags["train.diagnostics_every"] = 2 if args.quick else DIAGNOSTICS_EVERY
    if arm.lr_of is not None and getattr(args, "lr", 0):
        flags["train.lr"] = args.lr  # given on the command line: no wait for the tuning phase
    elif arm.lr_of is not None:
        if arm.lr_of not in rates:
            return None
        flags["train.lr"] = rates[arm.lr_of]
    flags.update(arm.overrides)
    work = Path(args.workdirs) / phase / f"{arm.name}__seed{seed}"
    flags.update({"seed": seed, "workdir": str(work),
                  "data.path": str(Path(args.data_dir) / "ag_news"),
                  "data.tokenizer": str(Path(args.data_dir) / "smollm2_tokenizer"),
                  # One tokenisation cache for every run of the same data settings.
                  "data.cache_dir": str(Path(args.workdirs) / "cache" / f"L{flags['data.seq_len']}"
                                        f"_V{flags.get('model.vocab_size', 'default')}")})
    return flags


def planned_runs(args, rates: dict[str, float]) -> list[tuple[str, Arm, int, dict | None]]:
    """(phase, arm, seed, overrides) in order: phase by phase, seed 0 of every arm first, so a study
    cut short still has every row; after it, the arms with the most planned seeds (those the claims
    rest on) run one seed ahead of the others: their paired intervals, at t_{n-1}, narrow most from
    a third seed (t_1 = 12.7, t_2 = 4.3)."""
    pattern = re.compile(args.only) if args.only else None
    out = []
    for phase in args.phase.split(","):
        arms = [a for a in PHASES[phase] if not pattern or pattern.search(a.name)]
        seeds = {a.name: ([int(s) for s in args.seeds.split(",")] if args.seeds else
                          list(range(1 if args.quick else a.seeds))) for a in arms}
        most = max((a.seeds for a in arms), default=0)
        behind = {a.name: int(a.seeds < most) for a in arms}
        runs = [((k + behind[a.name], behind[a.name]) if k else (0, 0), i, k, a)
                for i, a in enumerate(arms) for k in range(len(seeds[a.name]))]
        out += [(phase, a, seeds[a.name][k], run_overrides(phase, a, seeds[a.name][k], args, rates))
                for *_, k, a in sorted(runs, key=lambda r: r[:2])]
    return out


@functools.cache
def _config_json(module: str, flags_json: str) -> str:
    import importlib

    from kanjax.training import config as config_lib

    config = config_lib.apply_overrides(importlib.import_module(f"configs.{module}").get_config(),
                                        json.loads(flags_json))
    return json.dumps(config_lib.config_to_json(config))


def resolved_config(arm: Arm, flags: dict) -> dict:
    """The run's whole config (the arm's config file with the overrides) as JSON-able dict."""
    return json.loads(_config_json(arm.config, json.dumps(flags, sort_keys=True)))


def training_key(config: dict) -> str:
    """What decides a run's training, whatever its phase or its arm's name: the whole resolved
    config but the folders, the diagnostics (which read the model, never change it) and, for a model
    without KAN layers (kan.targets empty), the KAN settings."""
    c = json.loads(json.dumps(config))
    c.pop("workdir", None)
    c["data"].pop("cache_dir", None)
    c["train"].pop("diagnostics_every", None)
    c.pop("checkpoint", None)  # resume is exact: how often a run saves never changes what it learns
    if not c.get("kan", {}).get("targets"):  # no KAN layer: the rest of the kan section is never read
        c["kan"] = {"targets": []}
    return json.dumps(c, sort_keys=True)


def same_run(args, phase: str, arm: Arm, seed: int, flags: dict) -> Path | None:
    """A record (of any phase) that trained exactly this configuration: it is reused, not rerun."""
    key = training_key(resolved_config(arm, flags))
    for other in PHASES:
        for path in records_dir(args, other).glob(f"*__seed{seed}.json"):
            rec = json.loads(path.read_text())
            if "resolved_config" in rec and "reused_from" not in rec and \
                    training_key(with_new_defaults(rec)) == key:
                return path
    return None


def _overlay(base: dict, top: dict) -> dict:
    return {**base, **{k: _overlay(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                       for k, v in top.items()}}


def with_new_defaults(rec: dict) -> dict:
    """A record's resolved config with the keys added since its commit at their defaults (a new key's
    default keeps the old behaviour), so a record stays comparable as the config schema grows."""
    return _overlay(json.loads(_config_json(Path(rec["config"]).stem, "{}")), rec["resolved_config"])


def expected_seconds(args, device: str | None = None) -> dict[str, float]:
    """{arm name: median wall seconds of its finished runs on `device` (a record's jax device_kind,
    e.g. "cpu"; None: any)}, as timed where they ran (concurrent runs included; a reused record counts
    with the time of the training it reuses)."""
    walls: dict[str, list[float]] = {}
    for phase in PHASES:
        for rec in read_records(records_dir(args, phase)):
            if "wall_seconds" in rec and device in (None, rec.get("device")):
                walls.setdefault(rec["name"], []).append(rec["wall_seconds"])
    return {name: statistics.median(w) for name, w in walls.items()}


def todo_lines(args, device: str | None = None) -> list[str]:
    """The runs still to do, in the order run_plan starts them, each with what it costs: the record
    it will reuse, or its arm's expected_seconds on `device`, so the rest of a study can be split into
    lanes (--only, --seeds) sized to a session."""
    walls = expected_seconds(args, device)
    rates = tuned_rates(read_records(records_dir(args, "tune")), args.quick)
    lines, timed, untimed = [], 0.0, 0
    for phase, arm, seed, flags in planned_runs(args, rates):
        if record_path(args, phase, arm.name, seed).exists():
            continue
        if flags is None:
            cost = "waits for the tuned learning rates"
        elif (twin := same_run(args, phase, arm, seed, flags)) is not None:
            cost = f"reuses {twin.parent.name}/{twin.name}"
        elif arm.name in walls:
            timed += walls[arm.name]
            cost = f"~{walls[arm.name] / 60:.0f} min"
        else:
            untimed += 1
            cost = "not timed yet (no finished run of this arm" + (f" on {device})" if device else ")")
        lines.append(f"{phase} {arm.name} seed {seed}: {cost}")
    lines.append(f"{len(lines)} run(s) to do: ~{timed / 3600:.1f} h of timed runs one after another"
                 + (f" on {device}" if device else "") + (f", {untimed} not timed yet" if untimed else ""))
    return lines


def fits_before(args, run: tuple, walls: dict[str, float]) -> bool:
    """Whether a planned run can end before --until: it reuses a record, or now plus its arm's expected
    time (walls: expected_seconds on the machine it will run on; an arm never timed there: the slowest
    timed arm's) is before the deadline. A run that cannot end in time is never started, so a session
    that ends at a known time loses no training. With nothing timed on this kind of machine yet there
    is no estimate to refuse on: the run starts."""
    phase, arm, seed, flags = run
    if not walls:
        return True
    need = walls.get(arm.name, max(walls.values()))
    return time.time() + need <= args.until or same_run(args, phase, arm, seed, flags) is not None


def correct_bits(record: dict):
    """(N,) bool: per test text, whether the run classified it right (the record's test_correct_hex)."""
    import numpy as np

    bits = np.unpackbits(np.frombuffer(bytes.fromhex(record["test_correct_hex"]), np.uint8))
    return bits[: record["test_n"]].astype(bool)
