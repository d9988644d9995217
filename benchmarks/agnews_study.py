"""The AGNews study: every basis family and KAN variant against the linear baseline, over seeds.

    python benchmarks/agnews_study.py                 # the whole study (~2 h on a 2-core CPU), then the report
    python benchmarks/agnews_study.py --quick         # minutes: tiny budgets, separate records
    python benchmarks/agnews_study.py --only 'linear|kan_chebyshev2$' --seeds 0   # a subset
    python benchmarks/agnews_study.py --report_only   # rebuild agnews.md / PNGs from the records

Each (run, seed) trains the mini model (configs/base.py: 3 blocks of SmolLM2-135M's shape,
trimmed vocabulary, from scratch) in its own subprocess, so its peak memory is its own, and
writes one JSON record to --records. A run whose record exists is not redone: the study is
resumable, also across machines if the records are committed. Records remember the git commit
and every setting; the report (benchmarks/agnews_report.py) only reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# name: (config module, overrides, number of seeds). Three seeds where the claims compare
# small differences (linear, chebyshev2 and its variants, jacobi, gegenbauer), one elsewhere.
FAMILIES = ["chebyshev", "legendre", "hermite", "laguerre", "bessel", "fibonacci", "lucas",
            "bspline", "rbf", "rational"]
STUDY: dict[str, tuple[str, dict, int]] = {
    "linear": ("linear", {}, 3),
    "linear_fp16": ("linear", {"train.precision": "fp16"}, 3),
    "kan_chebyshev2": ("kan_cheb2", {}, 3),
    "kan_chebyshev2_fp16": ("kan_cheb2", {"train.precision": "fp16"}, 3),
    **{f"kan_chebyshev2_deg{d}": ("kan_cheb2", {"kan.degree": d}, 3) for d in (1, 3, 4, 5)},
    "kan_jacobi": ("kan_jacobi", {}, 3),
    "kan_gegenbauer": ("kan_gegenbauer", {}, 3),
    "kan_chebyshev2_parallel": ("kan_cheb2_parallel", {}, 3),
    "kan_chebyshev2_sequential": ("kan_cheb2_sequential", {}, 3),
    "kan_chebyshev2_nosilu": ("kan_cheb2_nosilu", {}, 3),
    **{f"kan_{f}": (f"kan_{f}", {}, 1) for f in FAMILIES},
}

# The budget every run gets. Sized so the 49 runs fit about two hours on 2 CPU cores: AGNews
# items are short (median 53 tokens), and 32 tokens keep the title and the first clause.
BUDGET = {"data.seq_len": 32, "data.batch_size": 32, "train.steps": 120, "train.warmup": 20,
          "train.log_every": 10, "eval.every": 40, "eval.batch_size": 256, "checkpoint.every": 0}
QUICK = {"data.seq_len": 16, "data.batch_size": 8, "train.steps": 6, "train.warmup": 2,
         "train.log_every": 2, "eval.every": 3, "eval.batch_size": 64, "eval.limit": 64,
         "eval.test_limit": 256, "checkpoint.every": 0, "model.num_layers": 1, "model.vocab_size": 512}


def run_overrides(name: str, seed: int, args) -> dict:
    module, extra, _ = STUDY[name]
    flags = dict(QUICK if args.quick else BUDGET)
    if args.steps:
        flags["train.steps"] = args.steps
    flags.update(extra)
    flags.update({"seed": seed, "workdir": str(Path(args.workdirs) / f"{name}__seed{seed}"),
                  "data.path": str(Path(args.data_dir) / "ag_news"),
                  "data.tokenizer": str(Path(args.data_dir) / "smollm2_tokenizer"),
                  "data.cache_dir": str(Path(args.workdirs) / "cache" / module / str(flags.get("model.vocab_size", "")))})
    return flags


def _params_finite(state) -> bool:
    import jax
    import numpy as np

    return all(bool(np.all(np.isfinite(np.asarray(x, np.float32)))) for x in jax.tree.leaves(state["params"]))


def _plot_learned_functions(summary, path: Path) -> None:
    """kanjax.viz pictures of a few edges of the first KAN layer of the trained model."""
    from flax import nnx

    from kanjax import viz
    from kanjax.kan import KANLinear

    trainer = summary["trainer"]
    model = nnx.merge(trainer.graphdef, summary["state"]["params"])
    layers = [(p, m) for p, m in nnx.iter_graph(model) if isinstance(m, KANLinear)]
    if not layers:
        return
    where, layer = layers[0]
    edges = [(i, o) for i in (0, 1, 2) for o in (0, 1, 2)]
    viz.plot_functions(layer, path, edges,
                       title=f"trained {layer.basis} deg {layer.basis_params.get('degree')}: "
                             f"{'/'.join(map(str, where))}")


def run_one(name: str, seed: int, args) -> dict:
    """Train one (run, seed) in this process and return its record."""
    import importlib
    import resource
    import statistics

    import jax

    from kanjax import experiment
    from kanjax import metrics as metrics_lib
    from kanjax.train_loop import run

    module, extra, _ = STUDY[name]
    flags = run_overrides(name, seed, args)
    config = experiment.apply_overrides(importlib.import_module(f"configs.{module}").get_config(), flags)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    summary = run(config)
    wall = time.perf_counter() - t0
    rows = metrics_lib.read_metrics(Path(config.workdir) / "metrics.jsonl")
    train_rows = [r for r in rows if r["split"] == "train"]
    # The first logging window holds the compilation; the step time is the median of the rest.
    step_times = [r["step_time"] for r in train_rows[1:]] or [r["step_time"] for r in train_rows]
    losses = [r["loss"] for r in train_rows]
    val = [r["accuracy"] for r in rows if r["split"] == "validation"]
    finite = _params_finite(summary["state"]) and all(map(lambda v: v == v and abs(v) != float("inf"), losses))
    if name == "kan_chebyshev2" and seed == 0 and not args.quick:
        _plot_learned_functions(summary, Path(args.records).parent / "agnews_learned_functions.png")
    return {
        "name": name, "seed": seed, "config": f"configs/{module}.py", "overrides": flags,
        "commit": experiment.git_commit(REPO), "quick": bool(args.quick),
        "test_accuracy": summary.get("test_accuracy"), "test_loss": summary.get("test_loss"),
        "best_val_accuracy": max(val) if val else None, "final_val_accuracy": summary.get("val_accuracy"),
        "params": int(summary["params"]), "steps": int(summary["steps"]),
        "step_seconds_median": statistics.median(step_times), "train_seconds": summary["train_seconds"],
        "wall_seconds": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        # Skipped steps are the non-finite gradients the train step dropped (fp16 loss-scale back-off
        # included); nonfinite means a NaN/inf reached the parameters or the logged loss.
        "skipped_steps": int(summary["skipped_steps"]), "nonfinite": not finite,
        "final_train_loss": losses[-1] if losses else None,
        "precision": config.train.precision, "device": jax.devices()[0].device_kind,
        "jax": jax.__version__, "cpus": os.cpu_count(),
        # 1-minute load averages before and after: other work on the machine inflates the times.
        "load_before": load_before, "load_after": os.getloadavg()[0],
    }


def record_path(records: Path, name: str, seed: int) -> Path:
    return records / f"{name}__seed{seed}.json"


def planned_runs(args) -> list[tuple[str, int]]:
    """Seed 0 of every run first, then seed 1, …: a study cut short still has every row."""
    pattern = re.compile(args.only) if args.only else None
    names = [n for n in STUDY if not pattern or pattern.search(n)]
    if args.seeds:
        return [(n, int(s)) for s in args.seeds.split(",") for n in names]
    counts = {n: 1 if args.quick else STUDY[n][2] for n in names}
    return [(n, s) for s in range(max(counts.values(), default=0)) for n in names if s < counts[n]]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--records", default="", help="one JSON per run (default benchmarks/results/agnews_runs; "
                                                  "--quick: runs/agnews_quick/records, report beside it)")
    p.add_argument("--workdirs", default="/tmp/kanjax_agnews_study", help="run folders (checkpoints, metrics)")
    p.add_argument("--only", default="", help="regex over run names")
    p.add_argument("--seeds", default="", help="comma-separated seeds instead of each run's default count")
    p.add_argument("--steps", type=int, default=0, help="override the training steps of every run")
    p.add_argument("--quick", action="store_true", help="tiny budgets (minutes), records kept apart")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--no_report", action="store_true")
    p.add_argument("--one", nargs=2, metavar=("NAME", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick_dir = REPO / "runs" / "agnews_quick"
    # Records given on the command line: the report goes beside them (tests never touch results/).
    # Quick runs are a smoke test of the pipeline, never results: their report stays out of git.
    results = (Path(args.records).parent if args.records else
               quick_dir if args.quick else REPO / "benchmarks" / "results")
    args.records = args.records or str(quick_dir / "records" if args.quick else REPO / "benchmarks" / "results" / "agnews_runs")
    records = Path(args.records)

    if args.one:
        name, seed = args.one[0], int(args.one[1])
        record = run_one(name, seed, args)
        path = record_path(records, name, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)  # a killed run leaves no half-written record
        return

    if not args.report_only:
        if not Path(args.data_dir, "ag_news").exists():
            sys.exit(f"no AGNews data under {args.data_dir}/ag_news: pass --data_dir")
        todo = [(n, s) for n, s in planned_runs(args) if not record_path(records, n, s).exists()]
        print(f"{len(todo)} run(s) to do; records in {records}", flush=True)
        for k, (name, seed) in enumerate(todo, 1):
            t0 = time.perf_counter()
            cmd = [sys.executable, __file__, "--one", name, str(seed), "--records", str(records),
                   "--workdirs", args.workdirs, "--data_dir", args.data_dir]
            cmd += ["--quick"] * args.quick + (["--steps", str(args.steps)] if args.steps else [])
            log = Path(args.workdirs) / f"{name}__seed{seed}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as f:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
            status = "ok" if rc == 0 else f"FAILED (exit {rc}, log {log})"
            done = record_path(records, name, seed)
            acc = json.loads(done.read_text())["test_accuracy"] if done.exists() else None
            print(f"[{k}/{len(todo)}] {name} seed {seed}: {status}, test acc {acc}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    if not args.no_report:
        sys.path.insert(0, str(Path(__file__).parent))
        import agnews_report

        agnews_report.write_report(records, results, quick=args.quick)


if __name__ == "__main__":
    main()
