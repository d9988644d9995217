"""Time to first step of a fresh `train.py` process, for the study's configs, with and without JAX's
persistent compilation cache.

    python -m benchmarks.perf.startup [--configs configs/kan_cheb2.py configs/linear.py] [--runs 3]
        [--data_dir ../shared/data] [--out-md PATH] [--json PATH]

Each run starts `python train.py --config <cfg>` in a new process on the shared AGNews copy and
its tokenizer (data.path, data.tokenizer), a fresh workdir, --stop_after 1 with log_every 1, and
measures wall-clock seconds from just before the process is started to

- `summary`: its start-up summary line (imports, config, tokenizer, data arrays, model built and
  KAN-ified: everything before the trainer);
- `first step`: the first training row in <workdir>/metrics.jsonl (trainer and optimiser state
  created, the step compiled, run and its metrics fetched); the process is then stopped.

Arms: every config with `compile_cache` off (every program compiled: the model's initialisation
ops and the step) and on (the persistent cache, filled by an untimed run first; what every run but
the first one on a machine sees). Before timing, one untimed run per arm fills what any second run
on a machine would have: the tokenised-data cache (data.cache_dir, shared by the runs) and Python's
bytecode cache (PYTHONPYCACHEPREFIX: this environment sets PYTHONDONTWRITEBYTECODE, which makes
every process compile the source of jax, flax, transformers and torch again). Then --runs rounds,
each arm once per round (round-robin), and `python -c "import ..."` of train.py's imports alone;
median over rounds with min and max. Then one run per config under cProfile says where the time
goes (PHASES: tokenizer, model, data, trainer, step trace, the first step's run, imports).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common.records import command_line, write_table

REPO = Path(__file__).resolve().parents[2]
IMPORTS = "import jax, flax.nnx, optax, kanjax.training.loop"  # what train.py imports before its first step


def child_env(pycache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "JAX_COMPILATION_CACHE_DIR")}
    env.update(PYTHONPYCACHEPREFIX=str(pycache), PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    return env


def train_command(config: str, workdir: Path, data_dir: Path, data_cache: Path, compile_cache: str) -> list[str]:
    return [sys.executable, "-u", str(REPO / "train.py"), f"--config={REPO / config}", f"--config.workdir={workdir}",
            f"--config.data.path={data_dir / 'ag_news'}", f"--config.data.tokenizer={data_dir / 'smollm2_tokenizer'}",
            f"--config.data.cache_dir={data_cache}", f"--config.compile_cache={compile_cache}",
            "--config.train.steps=2", "--stop_after=1", "--config.train.log_every=1", "--config.eval.every=0"]


def time_to_first_step(cmd: list[str], env: dict, workdir: Path, timeout: float = 600.0) -> dict:
    """{"summary": s, "first_step": s} from just before the process starts; the process is then stopped."""
    marks: dict[str, float] = {}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("kanjax train:") and "summary" not in marks:
                marks["summary"] = time.perf_counter() - start
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    metrics = workdir / "metrics.jsonl"
    try:
        while time.perf_counter() - start < timeout:
            if metrics.exists() and '"train"' in metrics.read_text():
                marks["first_step"] = time.perf_counter() - start
                break
            if proc.poll() is not None:
                raise RuntimeError(f"train.py exited ({proc.returncode}) before its first step:\n{''.join(lines[-20:])}")
            time.sleep(0.02)
        else:
            raise TimeoutError(f"no first step within {timeout} s")
    finally:
        proc.kill()
        proc.wait()
        reader.join(timeout=5)
    return marks


# Where a start-up goes: (label, file suffix, function) whose cumulative time cProfile reports; the
# process's own imports are what its module spends outside main().
PHASES = (("tokenizer (transformers import, files)", "kanjax/data/pipeline.py", "load_tokenizer"),
          ("model: build, trim vocabulary, KAN-ify", "kanjax/training/build.py", "model_from_config"),
          ("data: cached token arrays, iterators", "kanjax/data/pipeline.py", "build"),
          ("trainer: sharded state, optimiser", "kanjax/training/step.py", "create_trainer"),
          ("train step: trace (+ compile or cache read)", "kanjax/training/step.py", "train_step"),
          ("waiting on the device (first step's run)", "jax/_src/array.py", "_value"))


def phase_times(cmd: list[str], env: dict, prof: Path) -> dict[str, float]:
    """One run of `cmd` (train.py … --stop_after=1) under cProfile: seconds per PHASES entry, plus
    imports and the whole process. Profiling slows Python-heavy phases (tracing, imports) by ~10–20%."""
    import pstats

    args = [a for a in cmd[1:] if a != "-u"]  # python's own flag, not the profiled script's
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), *args], env=env, cwd=REPO, check=True,
                   capture_output=True)
    stats = pstats.Stats(str(prof)).stats  # {(file, line, name): (cc, nc, tt, ct, callers)}

    def cum(suffix: str, name: str) -> float:
        return sum(v[3] for (f, _, n), v in stats.items() if n == name and f.endswith(suffix))
    out = {label: cum(suffix, name) for label, suffix, name in PHASES}
    whole = cum("train.py", "<module>")
    out["imports (python, jax, flax, optax, kanjax, config)"] = whole - cum("train.py", "main")
    out["whole process (to exit, incl. summary and plots)"] = whole
    return out


def time_imports(env: dict) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], env=env, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["configs/kan_cheb2.py", "configs/linear.py"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out-md", default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    data_dir = Path(args.data_dir)
    with tempfile.TemporaryDirectory(prefix="kanjax_startup_") as tmp:
        tmp = Path(tmp)
        env = child_env(tmp / "pycache")
        arms = [(config, cache) for config in args.configs for cache in ("off", "on")]
        counter = iter(range(10**6))

        def run(config, cache):
            workdir = tmp / f"run{next(counter)}"
            compile_cache = str(tmp / "jax_cache") if cache == "on" else ""
            return time_to_first_step(train_command(config, workdir, data_dir, tmp / "data_cache", compile_cache),
                                      env, workdir)
        for arm in arms:  # untimed: fills the bytecode, data and (for "on") compilation caches
            print(f"warm-up {arm}: {run(*arm)}", flush=True)
        load = [round(v, 1) for v in os.getloadavg()]
        results = {arm: [] for arm in arms}
        imports = []
        for r in range(args.runs):
            imports.append(time_imports(env))
            for arm in arms:
                results[arm].append(run(*arm))
                print(f"round {r} {arm}: {results[arm][-1]}", flush=True)

        phases = {config: phase_times(train_command(config, tmp / f"prof{next(counter)}", data_dir, tmp / "data_cache",
                                                    str(tmp / "jax_cache")), env, tmp / "prof.out")
                  for config in args.configs}

    import jax  # only for the versions in the header, after the timed processes

    lines = [f"Time to first step of a fresh `train.py` process (seconds from process start; median of {args.runs} "
             f"round-robin rounds, min–max in brackets); jax {jax.__version__}, Python {platform.python_version()}, "
             f"{platform.machine()}, {os.cpu_count()} CPU cores; 1-min load average before the timed rounds: "
             f"{load[0]}. Warm bytecode and tokenised-data caches (see the script's docstring).", "",
             "| config | compilation cache | to summary (imports, data, model) | summary → first step "
             "(trainer, step compile + run) | to first step |", "|---|---|---:|---:|---:|"]
    for (config, cache), rs in results.items():
        lines.append(f"| {config} | {cache} | {spread([r['summary'] for r in rs])} "
                     f"| {spread([r['first_step'] - r['summary'] for r in rs])} "
                     f"| {spread([r['first_step'] for r in rs])} |")
    lines += ["", f"`python -c \"{IMPORTS}\"` alone (train.py's imports; transformers is imported later, by the "
              f"tokenizer): {spread(imports)} s."]
    lines += ["", "Where it goes: one run per config with the compilation cache on, under cProfile (cumulative "
              "seconds of the named functions; profiling inflates the Python-heavy rows by ~10–20%):", "",
              "| phase | " + " | ".join(args.configs) + " |", "|---|" + "---:|" * len(args.configs)]
    for label in next(iter(phases.values())):
        lines.append(f"| {label} | " + " | ".join(f"{phases[c][label]:.1f}" for c in args.configs) + " |")
    table = "\n".join(lines)
    print(table)
    command = command_line("benchmarks.perf.startup")
    write_table(args.out_md, "Start-up: time to first step", command, table)
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "load_before": load, "imports_s": imports,
                                               "runs": {f"{c} cache={k}": v for (c, k), v in results.items()},
                                               "phases": phases},
                                              indent=1))


if __name__ == "__main__":
    main()
