"""Issue #45, through the command lines as a user runs them (slow tier: fresh processes, signals, a
file-size limit standing in for a full disk, lm-evaluation-harness's own CLI). Tiny models on the
real AGNews sample; test_run_guards.py holds the in-process checks."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from configs import base
from tests.helpers.train import REPO_ROOT, apply_overrides, tiny_overrides, train_cli

pytestmark = pytest.mark.slow


def _args(flags: dict) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "train.py"), f"--config={REPO_ROOT / 'configs/linear.py'}",
            *[f"--config.{k}={v}" for k, v in flags.items()]]


def _start(flags: dict, log: Path) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen(_args(flags), cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _wait_for_steps(workdir: Path, n: int, proc: subprocess.Popen, timeout: float = 300) -> int:
    """Block until the run has logged `n` train steps; returns the last logged step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the run ended early"
        path = workdir / "metrics.jsonl"
        steps = [json.loads(x)["step"] for x in path.read_text().splitlines()] if path.exists() else []
        if len(steps) >= n:
            return steps[-1]
        time.sleep(0.1)
    raise AssertionError(f"no {n} steps within {timeout} s")


def _last_line(text: str) -> str:
    """The last line as a terminal shows it (progress bars redraw with carriage returns)."""
    return text.strip().splitlines()[-1].split("\r")[-1]


LONG = 1_000_000  # steps: a run that ends only by a signal (tiny steps take milliseconds once compiled)


def _long_run(tmp_path, shared_data, **extra) -> dict:
    """No periodic checkpoint: any checkpoint there is the one a signal made it write."""
    return tiny_overrides(tmp_path, shared_data, **{"train.steps": LONG, "train.log_every": 1,
                                                    "checkpoint.every": 0, **extra})


def test_a_second_run_on_a_busy_workdir_stops_at_once_and_sigterm_saves_the_step_in_flight(tmp_path, shared_data):
    flags = _long_run(tmp_path, shared_data)
    workdir = Path(flags["workdir"])
    first = _start(flags, tmp_path / "first.log")
    try:
        _wait_for_steps(workdir, 3, first)
        t0 = time.time()
        second = train_cli("configs/linear.py", {**flags, "train.lr": 3e-4}, env_extra={"HF_HUB_OFFLINE": "1"})
        assert second.returncode == 2, second.stderr[-2000:]
        assert _last_line(second.stderr).startswith(
            f"train.py: workdir {workdir} is in use by another run (pid {first.pid} on {socket.gethostname()}, "
            "started ")
        assert "Traceback" not in second.stderr and time.time() - t0 < 120
        assert json.loads((workdir / ".lock").read_text())["pid"] == first.pid  # the owner's lock, untouched
        from kanjax.training.checkpoint import finished_steps

        assert finished_steps(workdir / "checkpoints") == []  # the second run saved nothing
        logged = _wait_for_steps(workdir, 5, first)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143
    finally:
        first.kill()
    log = (tmp_path / "first.log").read_text()
    last = _last_line(log)
    step = int(last.split("after step ")[1].split(" ")[0])
    assert last == (f"train.py: stopped by SIGTERM after step {step} of {LONG}; checkpoint {step} saved in "
                    f"{workdir}: run the same command again to resume")
    assert step >= logged and "Traceback" not in log
    assert finished_steps(workdir / "checkpoints") == [step]  # nothing lost since the last (absent) save
    assert not (workdir / ".lock").exists()


def test_ctrl_c_before_the_first_step_ends_is_one_line(tmp_path, shared_data):
    # Ctrl-C as soon as the run announces itself: before or during its first step (loading, compiling).
    flags = _long_run(tmp_path / "early", shared_data)
    early = _start(flags, tmp_path / "early.log")
    try:
        deadline = time.time() + 300
        while "kanjax train:" not in (tmp_path / "early.log").read_text() and time.time() < deadline:
            time.sleep(0.05)
        early.send_signal(signal.SIGINT)
        assert early.wait(timeout=120) == 130
    finally:
        early.kill()
    log = (tmp_path / "early.log").read_text()
    assert _last_line(log).startswith("train.py: stopped by SIGINT") and "Traceback" not in log


def test_a_second_signal_exits_at_once(tmp_path, shared_data):
    from kanjax.training.workdir_lock import WorkdirLock

    flags = _long_run(tmp_path / "twice", shared_data)
    workdir = Path(flags["workdir"])
    twice = _start(flags, tmp_path / "twice.log")
    try:
        _wait_for_steps(workdir, 3, twice)
        twice.send_signal(signal.SIGINT)
        time.sleep(0.02)
        twice.send_signal(signal.SIGINT)
        t0 = time.time()
        assert twice.wait(timeout=60) == 130 and time.time() - t0 < 10
    finally:
        twice.kill()
    assert _last_line((tmp_path / "twice.log").read_text()) == "SIGINT again: exiting at once, without a checkpoint"
    # It left its lock behind (it did not stop cleanly); the next run takes it over in one line.
    assert json.loads((workdir / ".lock").read_text())["pid"] == twice.pid
    with WorkdirLock(workdir) as lock:
        assert lock.held


def test_a_failed_save_stops_the_run_in_one_line_and_keeps_the_last_checkpoint(tmp_path, shared_data):
    from kanjax.training.checkpoint import finished_steps
    from kanjax.training.loop import run

    flags = tiny_overrides(tmp_path, shared_data, **{"train.steps": 40, "train.log_every": 1, "checkpoint.every": 4})
    run(apply_overrides(base.get_config(), flags), max_steps=4)  # tokenizer, cache and step 4 written
    # Files over 300 kB (the ~1 MB train state) fail to grow, as on a full disk (EFBIG, "File too
    # large"); set by a small launcher, not preexec_fn (a fork of this multithreaded JAX process).
    launcher = ("import os, resource, sys; "
                "resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1])); "
                "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    out = subprocess.run([sys.executable, "-c", launcher, *_args(flags)[1:]], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2, out.stderr[-3000:]
    workdir = Path(flags["workdir"])
    assert _last_line(out.stderr) == (
        f"train.py: checkpoint step 8 could not be written to {workdir / 'checkpoints'} (File too large); the last "
        "complete one, step 4, is kept. Free space or use another --config.workdir, then rerun to resume")
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) < 40
    steps = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    # Stopped once the background write failed: at the latest at the next save (step 12), not at 40.
    assert max(steps) <= 12
    assert finished_steps(workdir / "checkpoints") == [4] and not (workdir / ".lock").exists()


def test_train_help_exits_0_and_names_where_the_keys_are():
    out = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--help"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "configs/base.py" in out.stdout and "--stop_after" in out.stdout and "143" in out.stdout


def test_lm_eval_cli_on_an_export_agrees_with_eval_py(tmp_path, shared_data, tokenizer_dir):
    """The README's recipe: lm-evaluation-harness's own CLI (transformers, PyTorch, the folder's KAN
    remote code) on an exported KAN model gives eval.py's log-likelihoods, acc and acc_norm."""
    pytest.importorskip("lm_eval")
    from flax import nnx

    from kanjax import hf
    from kanjax.data import load_tokenizer
    from kanjax.evals import runner as eval_models
    from kanjax.llama import LlamaConfig, LlamaForCausalLM
    from kanjax.llama.kanify import kanify
    from tests.helpers.train import TINY_MODEL

    cfg = LlamaConfig.from_hf(TINY_MODEL)
    model = kanify(LlamaForCausalLM(cfg, rngs=nnx.Rngs(3)), dict(targets=["mlp"], basis="chebyshev2", degree=2))
    folder = hf.save_pretrained(model, tmp_path / "export", load_tokenizer(str(tokenizer_dir)))
    n = 6
    (tmp_path / "arc.jsonl").write_text("\n".join(
        (shared_data / "mc_benchmarks" / "arc_easy.jsonl").read_text().splitlines()[:n]) + "\n")
    readme = (REPO_ROOT / "README.md").read_text()
    yaml = readme.split("```yaml\n", 1)[1].split("```", 1)[0]  # the README's task file, as printed there
    yaml = yaml.replace("../shared/data/mc_benchmarks/arc_easy.jsonl", str(tmp_path / "arc.jsonl"))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "arc_local.yaml").write_text(yaml)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_DATASETS_CACHE": str(tmp_path / "ds_cache")}
    out = subprocess.run([sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
                          f"pretrained={folder},trust_remote_code=True,dtype=float32", "--include_path",
                          str(tmp_path / "tasks"), "--tasks", "arc_easy_local", "--batch_size", "8", "--device", "cpu",
                          "--output_path", str(tmp_path / "lm_eval_out"), "--log_samples"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(next((tmp_path / "lm_eval_out").rglob("results_*.json")).read_text())
    got = results["results"]["arc_easy_local"]
    samples = [json.loads(x) for x in next((tmp_path / "lm_eval_out").rglob("samples_*.jsonl")).read_text().splitlines()]
    # Each choice's response is [log-likelihood, is-greedy], written as strings.
    harness = [float(r[0]) for s in sorted(samples, key=lambda s: s["doc_id"]) for r in s["filtered_resps"]]

    m, tok = eval_models.load_model(str(folder), load_tokenizer(eval_models.tokenizer_source(None, str(folder))))
    ours = eval_models.run(m, tok, ["arc_easy"], task_files={"arc_easy": str(tmp_path / "arc.jsonl")},
                           progress=False)["tasks"]["arc_easy"]
    from kanjax.evals import loglik as evaluate
    from kanjax.evals import tasks as eval_tasks

    lls = [ll for ll, _ in evaluate.loglikelihoods(m, tok, evaluate.mc_requests(
        eval_tasks.load_task("arc_easy", path=tmp_path / "arc.jsonl")))]
    assert len(harness) == len(lls) > n
    np.testing.assert_allclose(harness, lls, atol=2e-3)
    assert got["acc,none"] == pytest.approx(ours["acc"]) and got["acc_norm,none"] == pytest.approx(ours["acc_norm"])
