"""The AGNews study (v2): does a KAN pay off in the mini SmolLM2, at a budget where linear has converged?

    python -m benchmarks.studies.agnews.study                    # every phase (many hours on a 2-core CPU), then both reports
    python -m benchmarks.studies.agnews.study --phase recipe     # one phase: recipe | tune | study
    python -m benchmarks.studies.agnews.study --only '^linear$' --seeds 0,1
    python -m benchmarks.studies.agnews.study --quick            # minutes: tiny budgets, records kept apart
    python -m benchmarks.studies.agnews.study --phase study --only '^linear$' --lr 1e-3   # one arm, a given rate
    python -m benchmarks.studies.agnews.study --phase study --todo   # what is left, in order, with expected times
    python -m benchmarks.studies.agnews.study --phase study --until 2026-12-04T18:05   # only runs that can end by then
    python -m benchmarks.studies.agnews.study --report_only      # agnews.md and kan_recipe.md from the records
    python -m benchmarks.studies.agnews.study --workers 8        # an accelerator host: 8 runs at once, one GPU shared
    python -m benchmarks.studies.agnews.study --replay study kan_chebyshev2 0   # train a recorded run again, compare

The arms, budgets and seeds of the three phases (recipe, tune, study) are agnews_plan.py's.

Each (arm, seed) trains in its own subprocess (its peak memory is its own) and writes one JSON
record; a run whose record exists is not redone, so the study resumes where it stopped, also
across machines when the records are committed. A run cut short resumes from its last checkpoint
(every 100 steps), bitwise as if never stopped. Records carry the commit, the full overrides
(steps, sequence length, batch, learning rate, ...), the curves and the per-example test results;
the reports (agnews_report.py with agnews_claims.py, kan_recipe_report.py) read nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common.records import git_commit, write_atomic
from benchmarks.studies.agnews.plan import (
    BUDGET,
    FIGURE_RUN,
    PHASES,
    QUICK,
    REPO,
    Arm,
    correct_bits,
    expected_seconds,
    fits_before,
    planned_runs,
    read_records,
    record_path,
    records_dir,
    same_run,
    todo_lines,
    tuned_rates,
)


def _finite(values) -> bool:
    return all(v == v and abs(v) != float("inf") for v in values)


def _params_finite(state) -> bool:
    import jax
    import numpy as np

    return all(bool(np.all(np.isfinite(np.asarray(x, np.float32)))) for x in jax.tree.leaves(state["params"]))


def _plot_learned_functions(summary, path: Path) -> None:
    """kanjax.viz pictures of a few edges of the first KAN layer of the trained model."""
    from flax import nnx

    from kanjax.kan import viz
    from kanjax.kan.layer import KANLinear

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
    import importlib.metadata
    import resource
    import statistics

    import jax
    import numpy as np

    from kanjax.training import config as config_lib
    from kanjax.training import metrics as metrics_lib
    from kanjax.training.loop import run

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
        "commit": git_commit(REPO), "quick": bool(args.quick),
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
        # An accelerator's image may hold other versions than requirements.txt pins (agnews_device.sh --from_image).
        "packages": {p: importlib.metadata.version(p) for p in ("flax", "optax", "orbax-checkpoint")},
        # float32 dots on a GPU default to TF32; JAX_DEFAULT_MATMUL_PRECISION=highest keeps them float32 as on a CPU.
        "matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
        # 1-minute load averages before and after: other work on the machine inflates the times.
        "load_before": load_before, "load_after": os.getloadavg()[0],
    }


def text_coverage(data_dir: str, seq_len: int) -> dict:
    """{"seq_len", split: {"texts", "whole" (fraction of texts that fit in seq_len tokens untruncated),
    "median", "p90" (tokens)}} for the train, validation and test splits of <data_dir>/ag_news, counted
    as the classification data encodes them (kanjax.data_arrays.encode_classify: the tokenizer's ids)."""
    import importlib

    import numpy as np

    from kanjax.data import pipeline as data_lib
    from kanjax.training import config as config_lib

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


def _launch(args, phase: str, arm: Arm, seed: int, flags: dict) -> tuple[subprocess.Popen, object, Path]:
    """Start one (arm, seed) in its own process; its output goes to <workdirs>/<phase>/<arm>__seed<k>.log."""
    cmd = [sys.executable, "-m", __spec__.name, "--one", phase, arm.name, str(seed), json.dumps(flags),
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


def device_kind() -> str:
    """jax's name for this machine's first device (as records store it), without taking an
    accelerator's memory from the runs this process starts."""
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    return jax.devices()[0].device_kind


def run_plan(args) -> tuple[set, int]:
    """Train every planned run without a record, up to args.workers at once (an accelerator host runs
    several; a 2-core CPU one). Study runs start once the tuning records fix their rates. Returns the
    failed (phase, arm, seed) and how many runs still wait for tuned rates."""
    done, failed, running = 0, set(), {}  # running: key -> (process, log file, log path, flags, start)
    device = device_kind() if args.until else None  # runs are timed on the kind of machine they will run on
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
        if args.until:
            walls = expected_seconds(args, device)  # once per pass: it reads every record
            ready = [t for t in ready if fits_before(args, t, walls)]
        if ready and len(running) < args.workers or not running:
            print(f"{len(todo)} run(s) to do ({waiting} waiting for tuned learning rates); records in {args.records}",
                  flush=True)
        if not ready and not running:
            if args.until and len(todo) > waiting:
                print(f"stopped: none of the {len(todo) - waiting} run(s) left can end before --until", flush=True)
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


def _deadline(text: str) -> float:
    import datetime

    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"--until {text!r}: not a date and time like 2026-12-04T18:05") from None


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--records", default="", help="records root, one folder per phase (default "
                                                  "benchmarks/results/agnews/agnews_runs; --quick: runs/agnews_quick/records)")
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
    p.add_argument("--until", type=_deadline, default=None, metavar="YYYY-MM-DDTHH:MM",
                   help="start only runs expected to end before this local time (their arm's median time so far)")
    p.add_argument("--todo", action="store_true", help="list the runs still to do, in order, with their expected "
                                                       "time (or the record each reuses), and stop")
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
               quick_dir if args.quick else REPO / "benchmarks" / "results" / "agnews")
    args.records = args.records or str(quick_dir / "records" if args.quick else
                                       REPO / "benchmarks" / "results" / "agnews" / "agnews_runs")

    if args.one:
        phase, name, seed, flags = args.one[0], args.one[1], int(args.one[2]), json.loads(args.one[3])
        figure = learned_functions_path(args) if (phase, name, seed) == FIGURE_RUN else None
        record = run_one(phase, name, seed, flags, args, learned_functions=figure)
        write_atomic(record_path(args, phase, name, seed), json.dumps(record, indent=1))
        return

    if args.todo:
        print("\n".join(todo_lines(args, device_kind())))
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
        from benchmarks.studies.agnews import recipe_report as kan_recipe_report
        from benchmarks.studies.agnews import report as agnews_report

        kan_recipe_report.write_report(Path(args.records), results, quick=args.quick)
        in_repo = results.resolve() == (REPO / "benchmarks" / "results" / "agnews").resolve() and not args.quick
        agnews_report.write_report(Path(args.records), results, quick=args.quick,
                                   readme=REPO / "README.md" if in_repo else None)


if __name__ == "__main__":
    main()
