"""The AGNews study (v2): does a KAN pay off in the mini SmolLM2, at a budget where linear has converged?

    python benchmarks/agnews_study.py                    # every phase (many hours on a 2-core CPU), then both reports
    python benchmarks/agnews_study.py --phase recipe     # one phase: recipe | tune | study
    python benchmarks/agnews_study.py --only '^linear$' --seeds 0,1
    python benchmarks/agnews_study.py --quick            # minutes: tiny budgets, records kept apart
    python benchmarks/agnews_study.py --phase study --only '^linear$' --lr 1e-3   # one arm, a given rate
    python benchmarks/agnews_study.py --report_only      # agnews.md and kan_recipe.md from the records
    python benchmarks/agnews_study.py --workers 8        # an accelerator host: 8 runs at once, one GPU shared
    python benchmarks/agnews_study.py --replay study kan_chebyshev2 0   # train a recorded run again, compare

Three phases, each a list of arms (name, config file, overrides, seeds):

* recipe: the diagnosis. Linear and KAN variants (the old defaults, then one fix at a time) with
  `train.diagnostics_every` on: per-projection statistics and loss curves for kan_recipe.md.
* tune: the same learning-rate grid for the linear baseline and the Chebyshev-2 KAN, the rate chosen on
  the validation accuracy of seeds 0-2 only. The study then trains every arm at the tuned rate of its
  kind (linear arms: linear's; KAN arms: the KAN's). Seeds 3-4 of the grid measure claim 7 (accuracy
  away from each kind's best rate) at five seeds; they never move the choice.
* study: every basis family and KAN variant against linear, seed k of every arm seeing the same
  data order (paired), with the claims of the original research judged in agnews.md.

Each (arm, seed) trains in its own subprocess (its peak memory is its own) and writes one JSON
record; a run whose record exists is not redone, so the study resumes where it stopped, also
across machines when the records are committed. A run cut short resumes from its last checkpoint
(every 100 steps), bitwise as if never stopped. Records carry the commit, the full overrides
(steps, sequence length, batch, learning rate, ...), the curves and the per-example test results;
the reports (agnews_report.py with agnews_claims.py, kan_recipe_report.py) read nothing else.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

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
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


def best_rate(by_lr: dict[float, list[dict]], choice_seeds: int = CHOICE_SEEDS) -> float | None:
    """The rate whose runs of seeds 0..choice_seeds-1 have the highest mean final validation accuracy
    (ties: the smaller rate); None until every rate of LEARNING_RATES has all those seeds."""
    import statistics

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
    cut short still has every row."""
    pattern = re.compile(args.only) if args.only else None
    out = []
    for phase in args.phase.split(","):
        arms = [a for a in PHASES[phase] if not pattern or pattern.search(a.name)]
        seeds = {a.name: ([int(s) for s in args.seeds.split(",")] if args.seeds else
                          list(range(1 if args.quick else a.seeds))) for a in arms}
        for k in range(max((len(s) for s in seeds.values()), default=0)):
            for a in arms:
                if k < len(seeds[a.name]):
                    out.append((phase, a, seeds[a.name][k], run_overrides(phase, a, seeds[a.name][k], args, rates)))
    return out


def _finite(values) -> bool:
    return all(v == v and abs(v) != float("inf") for v in values)


def _params_finite(state) -> bool:
    import jax
    import numpy as np

    return all(bool(np.all(np.isfinite(np.asarray(x, np.float32)))) for x in jax.tree.leaves(state["params"]))


def _plot_learned_functions(summary, path: Path) -> None:
    """kanjax.viz pictures of a few edges of the first KAN layer of the trained model."""
    from flax import nnx

    from kanjax import viz
    from kanjax.kan import KANLinear

    model = nnx.merge(summary["trainer"].graphdef, summary["state"]["params"])
    layers = [(p, m) for p, m in nnx.iter_graph(model) if isinstance(m, KANLinear)]
    if layers:
        where, layer = layers[0]
        viz.plot_functions(layer, path, [(i, o) for i in (0, 1, 2) for o in (0, 1, 2)],
                           title=f"trained {layer.basis} deg {layer.basis_params.get('degree')}: "
                                 f"{'/'.join(map(str, where))}")


def run_one(phase: str, name: str, seed: int, flags: dict, args, learned_functions: Path | None = None) -> dict:
    """Train one (arm, seed) in this process and return its record; draw the learned functions of its
    first KAN layer to `learned_functions` when given."""
    import importlib
    import resource
    import statistics

    import jax
    import numpy as np

    from kanjax import config as config_lib
    from kanjax import experiment
    from kanjax import metrics as metrics_lib
    from kanjax.train_loop import run

    arm = next(a for a in PHASES[phase] if a.name == name)
    config = config_lib.apply_overrides(importlib.import_module(f"configs.{arm.config}").get_config(), flags)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    summary = run(config, per_example_test=True)
    wall = time.perf_counter() - t0
    rows = metrics_lib.read_metrics(Path(config.workdir) / "metrics.jsonl")
    train = [r for r in rows if r["split"] == "train"]
    val = [r for r in rows if r["split"] == "validation"]
    # The first logging window holds the compilation; the step time is the median of the rest.
    step_times = [r["step_time"] for r in train[1:]] or [r["step_time"] for r in train]
    losses = [r["loss"] for r in train]
    if learned_functions is not None:
        _plot_learned_functions(summary, learned_functions)
    correct = np.asarray(summary["test_correct"], bool)
    return {
        "phase": phase, "name": name, "seed": seed, "config": f"configs/{arm.config}.py", "overrides": flags,
        "resolved_config": config_lib.config_to_json(config),
        "commit": experiment.git_commit(REPO), "quick": bool(args.quick),
        "steps": int(summary["steps"]), "seq_len": config.data.seq_len, "batch_size": config.data.batch_size,
        "lr": config.train.lr, "precision": config.train.precision, "params": int(summary["params"]),
        "test_accuracy": summary["test_accuracy"], "test_loss": summary["test_loss"],
        "test_n": int(correct.size), "test_correct_hex": np.packbits(correct).tobytes().hex(),
        "final_val_accuracy": summary["val_accuracy"], "final_val_loss": summary["val_loss"],
        "best_val_accuracy": max(r["accuracy"] for r in val),
        "val_curve": [[r["step"], r["accuracy"], r["loss"]] for r in val],
        "train_curve": [[r["step"], r["loss"], r["grad_norm"]] for r in train],
        "diagnostics": [r for r in rows if r["split"] == "diagnostics"],
        "step_seconds_median": statistics.median(step_times), "train_seconds": summary["train_seconds"],
        "wall_seconds": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # Skipped steps: the non-finite gradients the train step dropped (fp16 loss-scale back-off
        # included); nonfinite: a NaN/inf reached the parameters or the logged loss.
        "skipped_steps": int(summary["skipped_steps"]),
        "nonfinite": not (_params_finite(summary["state"]) and _finite(losses)),
        "device": jax.devices()[0].device_kind, "jax": jax.__version__, "cpus": os.cpu_count(), "machine": machine(),
        # 1-minute load averages before and after: other work on the machine inflates the times.
        "load_before": load_before, "load_after": os.getloadavg()[0],
    }


@functools.cache
def _config_json(module: str, flags_json: str) -> str:
    import importlib

    from kanjax import config as config_lib

    config = config_lib.apply_overrides(importlib.import_module(f"configs.{module}").get_config(),
                                        json.loads(flags_json))
    return json.dumps(config_lib.config_to_json(config))


def resolved_config(arm: Arm, flags: dict) -> dict:
    """The run's whole config (the arm's config file with the overrides) as JSON-able dict."""
    return json.loads(_config_json(arm.config, json.dumps(flags, sort_keys=True)))


def training_key(config: dict) -> str:
    """What decides a run's training, whatever its phase or its arm's name: the whole resolved
    config but the folders and the diagnostics (which read the model, never change it)."""
    c = json.loads(json.dumps(config))
    c.pop("workdir", None)
    c["data"].pop("cache_dir", None)
    c["train"].pop("diagnostics_every", None)
    c.pop("checkpoint", None)  # resume is exact: how often a run saves never changes what it learns
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


def text_coverage(data_dir: str, seq_len: int) -> dict:
    """{"seq_len", split: {"texts", "whole" (fraction of texts that fit in seq_len tokens untruncated),
    "median", "p90" (tokens)}} for the train, validation and test splits of <data_dir>/ag_news, counted
    as the classification data encodes them (kanjax.data_arrays.encode_classify: the tokenizer's ids)."""
    import importlib

    import numpy as np

    from kanjax import config as config_lib
    from kanjax import data as data_lib

    config = config_lib.apply_overrides(importlib.import_module("configs.linear").get_config(),
                                        {"data.path": str(Path(data_dir) / "ag_news")})
    tokenizer = data_lib.load_tokenizer(str(Path(data_dir) / "smollm2_tokenizer"))
    out = {"seq_len": seq_len}
    for split in ("train", "validation", "test"):
        ids = tokenizer(list(data_lib.load_raw(config.data, split)["text"]))["input_ids"]
        n = np.array([len(x) for x in ids])
        out[split] = {"texts": int(n.size), "whole": float(np.mean(n <= seq_len)),
                      "median": float(np.median(n)), "p90": float(np.percentile(n, 90))}
    return out


def learned_functions_path(args) -> Path:
    return Path(args.records).parent / f"agnews{'_quick' if args.quick else ''}_learned_functions.png"


def machine() -> dict:
    """Which machine a run trained on: XLA's CPU code, hence the float rounding, follows the processor,
    so runs repeat bitwise on one machine (boot) and agree only statistically across machines."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "") if Path("/proc/cpuinfo").exists() else ""
    boot = Path("/proc/sys/kernel/random/boot_id")
    return {"cpu": cpu, "boot_id": boot.read_text().strip() if boot.exists() else ""}


def correct_bits(record: dict):
    """(N,) bool: per test text, whether the run classified it right (the record's test_correct_hex)."""
    import numpy as np

    bits = np.unpackbits(np.frombuffer(bytes.fromhex(record["test_correct_hex"]), np.uint8))
    return bits[: record["test_n"]].astype(bool)


def replay_path(args, phase: str, name: str, seed: int) -> Path:
    return Path(args.records) / "replays" / f"{phase}__{name}__seed{seed}.json"


def replay(args, phase: str, name: str, seed: int) -> bool:
    """Train a recorded run again from its record's overrides (in <workdirs>/replay/), compare it with the
    record and write the comparison to records/replays/ (agnews.md states it). Returns whether it is
    identical: every test text classified as the record says and the same test loss, which holds on the
    machine the record was made on. The replay of FIGURE_RUN draws agnews.md's learned-functions figure
    (its record may come from another phase, whose trained weights were not kept)."""
    import numpy as np

    rec = json.loads(record_path(args, phase, name, seed).read_text())
    flags = {**rec["overrides"], "workdir": str(Path(args.workdirs) / "replay" / f"{name}__seed{seed}")}
    shutil.rmtree(flags["workdir"], ignore_errors=True)  # from scratch: no checkpoint to resume
    figure = learned_functions_path(args) if (phase, name, seed) == FIGURE_RUN else None
    again = run_one(phase, name, seed, flags, args, learned_functions=figure)
    bits = [correct_bits(r) for r in (again, rec)]
    same = again["test_correct_hex"] == rec["test_correct_hex"] and again["test_loss"] == rec["test_loss"]
    out = {"phase": phase, "name": name, "seed": seed, "identical": same,
           "test_accuracy": again["test_accuracy"], "record_test_accuracy": rec["test_accuracy"],
           "test_loss": again["test_loss"], "record_test_loss": rec["test_loss"],
           "same_outcome_fraction": float(np.mean(bits[0] == bits[1])), "commit": again["commit"],
           "record_commit": rec["commit"], "machine": again["machine"], "record_machine": rec.get("machine")}
    write_atomic(replay_path(args, phase, name, seed), json.dumps(out, indent=1))
    print(f"replay of {phase} {name} seed {seed}: test accuracy {again['test_accuracy']} (record "
          f"{rec['test_accuracy']}), test loss {again['test_loss']} (record {rec['test_loss']}), the same "
          f"right/wrong on {100 * out['same_outcome_fraction']:.2f}% of test texts: "
          f"{'identical' if same else 'DIFFERENT'}", flush=True)
    return same


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)  # a killed run leaves no half-written record


def _launch(args, phase: str, arm: Arm, seed: int, flags: dict) -> tuple[subprocess.Popen, object, Path]:
    """Start one (arm, seed) in its own process; its output goes to <workdirs>/<phase>/<arm>__seed<k>.log."""
    cmd = [sys.executable, __file__, "--one", phase, arm.name, str(seed), json.dumps(flags),
           "--records", args.records, "--workdirs", args.workdirs, "--data_dir", args.data_dir]
    cmd += ["--quick"] * args.quick
    log = Path(args.workdirs) / phase / f"{arm.name}__seed{seed}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # Seeds of one arm compile the same programs: a persistent XLA cache shared by the runs.
    env = {"JAX_COMPILATION_CACHE_DIR": str(Path(args.workdirs) / "xla_cache"), **os.environ}
    if args.workers > 1:  # JAX takes 75% of an accelerator's memory per process by default: share it
        env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / args.workers:.2f}")
    f = open(log, "w")  # noqa: SIM115 -- closed by run_plan when the process ends
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env), f, log


def _wait_for_one(running: dict, poll_s: float) -> None:
    while all(entry[0].poll() is None for entry in running.values()):
        time.sleep(poll_s)


def run_plan(args) -> tuple[set, int]:
    """Train every planned run without a record, up to args.workers at once (an accelerator host runs
    several; a 2-core CPU one). Study runs start once the tuning records fix their rates. Returns the
    failed (phase, arm, seed) and how many runs still wait for tuned rates."""
    done, failed, running = 0, set(), {}  # running: key -> (process, log file, log path, flags, start)
    while True:
        for key, (proc, f, log, flags, t0) in list(running.items()):
            if proc.poll() is None:
                continue
            f.close()
            del running[key]
            phase, name, seed = key
            rec = record_path(args, phase, name, seed)
            acc = json.loads(rec.read_text())["test_accuracy"] if rec.exists() else None
            status = "ok" if proc.returncode == 0 and rec.exists() else f"FAILED (exit {proc.returncode}, log {log})"
            print(f"{phase} {name} seed {seed}: {status}, test acc {acc}, {time.perf_counter() - t0:.0f} s", flush=True)
            if not rec.exists():
                failed.add(key)
            else:  # the record holds all a report reads; the optimizer state is ~12 bytes per parameter
                shutil.rmtree(Path(flags["workdir"]) / "checkpoints", ignore_errors=True)
        rates = tuned_rates(read_records(records_dir(args, "tune")), args.quick)
        todo = [(ph, a, s, f) for ph, a, s, f in planned_runs(args, rates)
                if not record_path(args, ph, a.name, s).exists()]
        ready = [t for t in todo if t[3] is not None and (t[0], t[1].name, t[2]) not in failed | set(running)]
        waiting = sum(t[3] is None for t in todo)
        if ready and len(running) < args.workers or not running:
            print(f"{len(todo)} run(s) to do ({waiting} waiting for tuned learning rates); records in {args.records}",
                  flush=True)
        if not ready and not running:
            return failed, waiting
        if not ready or len(running) >= args.workers:
            # Nothing can start until a run ends (its record may fix the tuned rates): no re-planning until then.
            _wait_for_one(running, 1.0 if args.quick else 5.0)
            continue
        phase, arm, seed, flags = ready[0]
        done += 1
        twin = same_run(args, phase, arm, seed, flags)
        if twin is not None:  # this exact training already ran in another phase: reuse its record
            rec = json.loads(twin.read_text())
            write_atomic(record_path(args, phase, arm.name, seed),
                         json.dumps({**rec, "phase": phase, "name": arm.name, "reused_from": str(twin.name)}, indent=1))
            print(f"[{done}] {phase} {arm.name} seed {seed}: the same run as {twin.parent.name}/{twin.name}", flush=True)
            continue
        print(f"[{done}] {phase} {arm.name} seed {seed}: started", flush=True)
        running[(phase, arm.name, seed)] = (*_launch(args, phase, arm, seed, flags), flags, time.perf_counter())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--records", default="", help="records root, one folder per phase (default "
                                                  "benchmarks/results/agnews_runs; --quick: runs/agnews_quick/records)")
    p.add_argument("--workdirs", default="/tmp/kanjax_agnews_study", help="run folders (metrics, logs)")
    p.add_argument("--phase", default="recipe,tune,study", help="comma-separated, from recipe, tune, study")
    p.add_argument("--only", default="", help="regex over arm names")
    p.add_argument("--seeds", default="", help="comma-separated seeds instead of each arm's count")
    p.add_argument("--steps", type=int, default=0, help="override the training steps of every run")
    p.add_argument("--lr", type=float, default=0.0,
                   help="train the study arms at this rate instead of the tuned ones (no tuning phase needed)")
    p.add_argument("--quick", action="store_true", help="tiny budgets (minutes), records kept apart")
    p.add_argument("--workers", type=int, default=1, help="runs trained at once (e.g. 8 on an accelerator host)")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--no_report", action="store_true")
    p.add_argument("--replay", nargs=3, metavar=("PHASE", "NAME", "SEED"),
                   help="train a recorded run again and check it is identical (FIGURE_RUN: draws its figure)")
    p.add_argument("--one", nargs=4, metavar=("PHASE", "NAME", "SEED", "FLAGS_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.phase.split(",")) - set(PHASES)
    if unknown:
        p.error(f"--phase: unknown {sorted(unknown)}; use {', '.join(PHASES)}")
    quick_dir = REPO / "runs" / "agnews_quick"
    # Records given on the command line: the reports go beside them (tests never touch results/).
    # Quick runs are a smoke test of the pipeline, never results: their reports stay out of git.
    results = (Path(args.records).parent if args.records else
               quick_dir if args.quick else REPO / "benchmarks" / "results")
    args.records = args.records or str(quick_dir / "records" if args.quick else
                                       REPO / "benchmarks" / "results" / "agnews_runs")

    if args.one:
        phase, name, seed, flags = args.one[0], args.one[1], int(args.one[2]), json.loads(args.one[3])
        figure = learned_functions_path(args) if (phase, name, seed) == FIGURE_RUN else None
        record = run_one(phase, name, seed, flags, args, learned_functions=figure)
        write_atomic(record_path(args, phase, name, seed), json.dumps(record, indent=1))
        return

    if args.replay:
        phase, name, seed = args.replay[0], args.replay[1], int(args.replay[2])
        if not record_path(args, phase, name, seed).exists():
            sys.exit(f"--replay: no record {record_path(args, phase, name, seed)} to replay (see --records)")
        sys.exit(0 if replay(args, phase, name, seed) else 1)

    if not args.report_only:
        if not Path(args.data_dir, "ag_news").exists():
            sys.exit(f"no AGNews data under {args.data_dir}/ag_news: pass --data_dir")
        seq_len = (QUICK if args.quick else BUDGET)["data.seq_len"]
        write_atomic(Path(args.records) / "text_coverage.json", json.dumps(text_coverage(args.data_dir, seq_len), indent=1))
        failed, waiting = run_plan(args)
        planned = {(ph, a.name, s) for ph, a, s, _ in
                   planned_runs(args, tuned_rates(read_records(records_dir(args, "tune")), args.quick))}
        if FIGURE_RUN in planned and record_path(args, *FIGURE_RUN).exists() and not learned_functions_path(args).exists():
            # Its record came from another phase (the tune grid's run at the tuned rate): train it again.
            replay(args, *FIGURE_RUN)
        if waiting:
            print(f"{waiting} study run(s) wait for the tuning phase (--phase tune)", flush=True)
        if failed:
            print(f"{len(failed)} run(s) failed: {sorted(failed)}", flush=True)
    if not args.no_report:
        sys.path.insert(0, str(Path(__file__).parent))
        import agnews_report
        import kan_recipe_report

        kan_recipe_report.write_report(Path(args.records), results, quick=args.quick)
        in_repo = results.resolve() == (REPO / "benchmarks" / "results").resolve() and not args.quick
        agnews_report.write_report(Path(args.records), results, quick=args.quick,
                                   readme=REPO / "README.md" if in_repo else None)


if __name__ == "__main__":
    main()
