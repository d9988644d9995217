"""Issue #45, in-process: the workdir lock, divergence, a run asked for fewer or more steps, the
recorded vocabulary on resume and on export, failed saves, and the input errors that were
tracebacks. The subprocess and signal probes are in test_cli_faults.py (slow tier)."""

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs import base, kan_cheb2
from tests.helpers.train import REPO_ROOT, apply_overrides, checkpoint_params, tiny_overrides


def _config(tmp_path, shared_data, **extra):
    return apply_overrides(base.get_config(), tiny_overrides(tmp_path, shared_data, **extra))


def _rows(workdir: Path) -> list[dict]:
    from kanjax.training.metrics import read_metrics

    return read_metrics(workdir / "metrics.jsonl")


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, shared_data):
    """A tiny AGNews classifier trained 4 steps (checkpoints 2 and 4): copied by each test that changes it."""
    from kanjax.training.loop import run

    root = tmp_path_factory.mktemp("finished")
    summary = run(_config(root, shared_data, **{"train.steps": 4, "checkpoint.every": 2, "eval.test_limit": 16}))
    return root, summary


def _copy(finished_run, tmp_path) -> Path:
    root, _ = finished_run
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    return tmp_path


# ----------------------------------------------------------------------------- the workdir lock


def test_a_busy_workdir_is_refused_naming_it_and_its_owner_and_nothing_is_written(tmp_path, shared_data):
    from kanjax.training.loop import run
    from kanjax.training.workdir_lock import WorkdirBusyError, WorkdirLock

    workdir = tmp_path / "run"
    with WorkdirLock(workdir):  # this process is the live owner the run meets
        before = _tree(workdir)
        with pytest.raises(WorkdirBusyError, match=rf"workdir {workdir} is in use by another run "
                                                   rf"\(pid {os.getpid()} on {socket.gethostname()}, started "):
            run(_config(tmp_path, shared_data))
        assert _tree(workdir) == before == [".lock"]
    assert not (workdir / ".lock").exists()  # released on leaving


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_one_line(tmp_path, capsys):
    from kanjax.training.workdir_lock import WorkdirLock, read_owner

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid now names no process (reuse within this test is vanishingly unlikely)
    (tmp_path / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0}))
    with WorkdirLock(tmp_path):
        assert read_owner(tmp_path / ".lock")["pid"] == os.getpid()
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"workdir {tmp_path}: taking over the lock of pid {dead.pid}, which no longer runs"]


def test_a_lock_from_another_host_is_refused_naming_the_file_to_delete(tmp_path):
    from kanjax.training.workdir_lock import WorkdirBusyError, WorkdirLock

    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
    with pytest.raises(WorkdirBusyError, match=rf"pid 1 on elsewhere.*if that run is gone, delete {tmp_path}/\.lock"):
        WorkdirLock(tmp_path).acquire()
    assert json.loads((tmp_path / ".lock").read_text())["host"] == "elsewhere"  # untouched


# ----------------------------------------------------------------------------- divergence


def test_divergence_stops_naming_the_step_and_saves_no_non_finite_state(tmp_path, shared_data):
    from kanjax.training.divergence import Diverged
    from kanjax.training.loop import run

    # The probe: the Chebyshev-2 KAN at lr 1e3 (fp32) reaches NaN a few steps after warmup.
    config = apply_overrides(kan_cheb2.get_config(), tiny_overrides(tmp_path, shared_data, **{
        "train.lr": 1e3, "train.warmup": 5, "train.steps": 20, "train.log_every": 1, "checkpoint.every": 5}))
    with pytest.raises(Diverged, match=r"training diverged at step (\d+): the loss is nan") as info:
        run(config)
    rows = [r for r in _rows(tmp_path / "run") if r["split"] == "train"]
    first_bad = next(r["step"] for r in rows if not np.isfinite(r["loss"]))
    assert info.value.step == first_bad and info.value.exit_code == 3
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) < first_bad  # nothing from the bad step on
    for step in saved:
        assert all(np.isfinite(v).all() for v in checkpoint_params(tmp_path / "run", step).values())
    # No validation or test numbers from the blown-up model; no summary.
    assert {r["split"] for r in _rows(tmp_path / "run")} == {"train"}
    assert not (tmp_path / "run" / "summary.md").exists() and not (tmp_path / "run" / ".lock").exists()


def test_fp16_stops_after_max_skipped_steps_in_a_row_only():
    from kanjax.training.divergence import Diverged, DivergenceWatch

    watch = DivergenceWatch("fp16", max_skipped=3)
    for step, skipped in enumerate([1, 1, 0, 1, 1], 1):  # broken runs of skips are loss scaling at work
        watch.add(step, {"loss": np.float32(np.nan), "skipped": np.int32(skipped)})
    watch.check()
    watch.add(6, {"loss": np.float32(1.0), "skipped": np.int32(1)})
    with pytest.raises(Diverged, match=r"step 6: 3 steps in a row .*train\.max_skipped_steps=3"):
        watch.check()
    bf16 = DivergenceWatch("bf16", max_skipped=0)
    bf16.add(1, {"loss": np.float32(2.0), "skipped": np.int32(0)})
    bf16.add(2, {"loss": np.float32(np.inf), "skipped": np.int32(1)})
    with pytest.raises(Diverged, match=r"step 2: the loss is inf \(train\.precision=bf16\)"):
        bf16.check()


def test_non_finite_params_and_eval_losses_are_caught():
    import jax.numpy as jnp

    from kanjax.training.divergence import Diverged, check_eval, params_finite

    assert params_finite({"a": jnp.ones(3), "n": jnp.arange(3)})
    assert not params_finite({"a": jnp.array([1.0, jnp.inf]), "b": jnp.ones(2)})
    check_eval({"loss": 1.2, "accuracy": 0.5}, "test", 7)
    with pytest.raises(Diverged, match=r"step 7 gives non-finite logits on the test split .*no test metrics"):
        check_eval({"loss": float("nan"), "accuracy": 0.27}, "test", 7)


# ----------------------------------------------------------------------------- steps after a finished run


def test_fewer_steps_than_a_finished_run_is_refused_and_more_continues_the_schedule(finished_run, tmp_path,
                                                                                    shared_data):
    from kanjax.training.config import ConfigError
    from kanjax.training.loop import run

    _copy(finished_run, tmp_path)
    rows = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'run'} holds a run already at step 4, past train.steps=2; "
                                          r"give train.steps >= 4"):
        run(_config(tmp_path, shared_data, **{"train.steps": 2, "checkpoint.every": 2, "eval.test_limit": 16}))
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == rows  # nothing appended
    summary = run(_config(tmp_path, shared_data, **{"train.steps": 6, "checkpoint.every": 2, "eval.test_limit": 16}))
    assert summary["steps"] == 6
    # The optimiser's step count went on from 4 (the schedule is evaluated at 4, 5 of the new
    # 6-step schedule), not from 0 (a restarted warmup).
    counts = {k: int(v) for k, v in checkpoint_state(tmp_path / "run", 6)["opt"].items() if k.endswith("count")}
    assert counts and set(counts.values()) == {6}, counts


def checkpoint_state(workdir: Path, step: int) -> dict:
    """Flat {path: array} of the whole saved train state (optimiser included)."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(workdir).absolute() / "checkpoints" / str(step) / "state"
    handler = ocp.PyTreeCheckpointHandler()
    meta = handler.metadata(path)
    meta = getattr(getattr(meta, "item_metadata", meta), "tree", getattr(meta, "item_metadata", meta))
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    tree = handler.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
    flat = {}
    for keys, leaf in jax.tree_util.tree_leaves_with_path(tree["opt"]):
        flat["/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys)] = leaf
    return {"opt": flat}


def test_summary_table_is_written_to_the_workdir(finished_run, capsys):
    from kanjax.training.metrics import summary_table

    root, summary = finished_run
    table = (root / "run" / "summary.md").read_text()
    shown = {k: v for k, v in summary.items() if k in ("steps", "params", "test_accuracy", "val_loss")}
    for key, value in shown.items():
        assert summary_table({key: value}).splitlines()[-1] in table.splitlines()


# ----------------------------------------------------------------------------- the vocabulary id map


def _other_agnews(tmp_path: Path, shared_data: Path) -> Path:
    """Another AGNews-format folder whose texts differ (every row's words reversed)."""
    import csv

    out = tmp_path / "other_data"
    out.mkdir()
    for split in ("train", "test"):
        with open(shared_data / "ag_news" / f"{split}.csv") as f, open(out / f"{split}.csv", "w", newline="") as g:
            reader, writer = csv.DictReader(f), csv.writer(g)
            writer.writerow(["text", "label"])
            for i, row in enumerate(reader):
                if i >= 400:
                    break
                writer.writerow([" ".join(reversed(row["text"].split()))[::-1], row["label"]])
    return out


def test_resume_with_another_data_path_keeps_the_recorded_vocabulary(finished_run, tmp_path, shared_data):
    from kanjax import data
    from kanjax.llama import surgery
    from kanjax.training import build as experiment
    from kanjax.training import checkpoint
    from kanjax.training.loop import run

    _copy(finished_run, tmp_path)
    other = _other_agnews(tmp_path, shared_data)
    folder = tmp_path / "run" / "checkpoints"
    recorded = checkpoint.read_model_record(folder, 4)["config"]["kanjax_vocab"]
    # What trimming afresh from the new data would keep: different tokens for the same rows.
    cfg = _config(tmp_path, shared_data, **{"data.path": str(other)})
    tok = data.load_tokenizer(cfg.data.tokenizer)
    model = experiment.load_source_model(cfg.model, dtype=np.float32, seed=0)
    _, _, fresh = surgery.trim_vocab(model, tok, data.train_texts(cfg.data, tok), cfg.model.vocab_size,
                                     return_inverse=True)
    assert fresh.tolist() != recorded["kept"]
    run(_config(tmp_path, shared_data, **{"train.steps": 6, "checkpoint.every": 2, "eval.test_limit": 16,
                                          "data.path": str(other)}))
    assert checkpoint.read_model_record(folder, 6)["config"]["kanjax_vocab"] == recorded


def test_checkpoints_without_a_recorded_vocabulary_refuse_a_new_data_path(tmp_path):
    from kanjax.training.config import ConfigError
    from kanjax.training.resume import recorded_vocab

    (tmp_path / "checkpoints").mkdir()
    saved = {"model": {"vocab_size": 256}, "data": {"path": "a", "name": "n", "tokenizer": "t", "revision": ""}}
    current = json.loads(json.dumps(saved))
    assert recorded_vocab(tmp_path / "checkpoints", saved, current) is None  # same data: trim afresh, same result
    current["data"]["path"] = "b"
    with pytest.raises(ConfigError, match=r"do not record their trimmed vocabulary.*data\.path: 'a' → 'b'"):
        recorded_vocab(tmp_path / "checkpoints", saved, current)


def test_vocab_record_from_the_id_map_gives_back_the_map():
    from kanjax.llama.surgery import id_map_from_record, vocab_record, vocab_record_from_id_map

    kept = np.array([0, 1, 5, 9, 12])
    id_map = np.zeros(20, np.int32)
    id_map[kept] = np.arange(5)
    assert vocab_record_from_id_map(id_map) == vocab_record(id_map, kept)
    np.testing.assert_array_equal(id_map_from_record(vocab_record_from_id_map(id_map)), id_map)


@pytest.fixture(scope="module")
def trimmed_lm_workdir(tmp_path_factory, shared_data):
    """A tiny causal LM with a trimmed vocabulary (256 ids), trained 2 steps on the shared text data."""
    from kanjax.training.loop import run

    root = tmp_path_factory.mktemp("trimmed_lm")
    (root / "data").mkdir()
    shutil.copy(shared_data / "text" / "tinyshakespeare.txt", root / "data")
    run(_config(root, shared_data, **{"model.task": "causal_lm", "data.task": "text", "train.steps": 2,
                                      "checkpoint.every": 2, "data.path": str(root / "data" / "tinyshakespeare.txt")}))
    return root / "run"


def test_export_of_a_trimmed_model_carries_its_id_map_and_scores_like_the_workdir(trimmed_lm_workdir, tmp_path,
                                                                                 tokenizer_dir, shared_data, caplog):
    import logging

    from kanjax import hf
    from kanjax.data import load_tokenizer
    from kanjax.errors import InputError
    from kanjax.evals import runner as eval_models
    from kanjax.llama import surgery
    from kanjax.training import checkpoint

    tokenizer = load_tokenizer(str(tokenizer_dir))
    model, id_map, step = eval_models.load_workdir(trimmed_lm_workdir)
    rows = model.config.vocab_size  # 256 kept + the special tokens
    assert rows < len(tokenizer) == 49152
    recorded = checkpoint.read_model_record(trimmed_lm_workdir / "checkpoints", step)["config"]["kanjax_vocab"]
    # The README's recipe, as written there, passes the map; without it the model's own record is written.
    recipe = [ln.strip() for ln in (REPO_ROOT / "README.md").read_text().splitlines() if "hf.save_pretrained(" in ln]
    assert recipe and all("id_map=id_map" in ln for ln in recipe), recipe
    hf.save_pretrained(model, tmp_path / "export", tokenizer, id_map=id_map)
    hf.save_pretrained(model, tmp_path / "plain", tokenizer)
    for folder in ("export", "plain"):
        np.testing.assert_array_equal(hf.vocab_map(tmp_path / folder), id_map)
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["kanjax_vocab"] == recorded
    # ... and a re-export of the loaded folder keeps it.
    hf.save_pretrained(hf.load_pretrained(tmp_path / "plain"), tmp_path / "again", tokenizer)
    np.testing.assert_array_equal(hf.vocab_map(tmp_path / "again"), id_map)
    task = {"arc_easy": str(shared_data / "mc_benchmarks" / "arc_easy.jsonl")}
    scores = []
    for spec in (trimmed_lm_workdir, tmp_path / "export"):
        m, tok = eval_models.load_model(str(spec), load_tokenizer(eval_models.tokenizer_source(None, str(spec))))
        assert isinstance(tok, eval_models.MappedTokenizer)
        np.testing.assert_array_equal(tok.id_map, id_map)
        res = eval_models.run(m, tok, ["arc_easy"], task_files=task, limit=4, progress=False)["tasks"]["arc_easy"]
        scores.append((res["acc"], res["acc_norm"]))
    assert scores[0] == scores[1]
    # A model that lost its map (as every export did before): the save warns, eval.py refuses in one line.
    delattr(model, surgery.VOCAB_ATTR)
    with caplog.at_level(logging.WARNING, logger="kanjax.hf"):
        hf.save_pretrained(model, tmp_path / "unmapped", tokenizer)
    assert any(f"{rows} embedding rows but the tokenizer 49152 ids" in r.getMessage() for r in caplog.records)
    with pytest.raises(InputError, match=rf"{rows} embedding rows but the tokenizer 49152 ids: a trimmed-vocabulary "
                                         r"model exported without its id map"):
        eval_models.load_model(str(tmp_path / "unmapped"), tokenizer)


# ----------------------------------------------------------------------------- one line instead of a traceback


def test_eval_of_a_classifier_workdir_is_one_line_naming_its_summary(finished_run, capsys):
    import eval as eval_cli

    root, _ = finished_run
    workdir = root / "run"
    code = eval_cli.cli(["--model", str(workdir), "--tasks", "arc_easy"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == (f"eval.py: --model {workdir} is a sequence classifier "
                                     "(LlamaForSequenceClassification), not a language model: eval.py scores text "
                                     f"with an LM head; its test accuracy is in {workdir / 'summary.md'} (train.py's "
                                     "final evaluation: the same train.py command again re-runs it)")


def test_truncated_checkpoint_is_one_line_in_eval(finished_run, tmp_path, capfd):
    import eval as eval_cli

    workdir = _copy(finished_run, tmp_path) / "run"
    state = workdir / "checkpoints" / "4" / "state"
    victim = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    code = eval_cli.cli(["--model", str(workdir), "--tasks", "arc_easy"])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err and "Exception ignored" not in err
    assert err.strip().splitlines()[-1].startswith(f"eval.py: checkpoint step 4 in {workdir / 'checkpoints'} cannot "
                                                   "be read (")


def test_empty_task_file_is_an_input_error(tmp_path):
    from kanjax.errors import InputError
    from kanjax.evals import tasks as eval_tasks

    (tmp_path / "arc.jsonl").write_text("")
    with pytest.raises(InputError, match=rf"{tmp_path / 'arc.jsonl'}: no rows"):
        eval_tasks.load_task("arc_easy", None, str(tmp_path / "arc.jsonl"))


def test_unknown_precision_is_a_config_error_before_anything_loads():
    from kanjax.training.config import ConfigError, apply_overrides, validate

    with pytest.raises(ConfigError, match=r"train\.precision: 'fp8' is not one of \['fp32', 'bf16', 'fp16'\]"):
        validate(apply_overrides(base.get_config(), {"train.precision": "fp8"}))


@pytest.mark.parametrize("content,match", [
    ("headline,label\nsome news,1\nmore news,2\n",
     r"train\.csv: missing column\(s\) \['text'\] needed for task 'classify'; columns found: \['headline', 'label'\]"),
    ("text,label\n,1\n ,2\n", r"train\.csv: the text column is empty in all 2 rows"),
    ("text,label\nsome news,1\nmore news,3.0\n", r"train\.csv:3: label '3\.0' is not an integer class index 0\.\.3"),
    ("text,label\nsome news,1\nmore news,2\n", r"data\.val_fraction=0\.1 of 2 training rows leaves an empty train or "
                                              r"validation split"),
])
def test_data_files_that_cannot_train_name_the_problem(tmp_path, tokenizer_dir, content, match):
    from kanjax import data

    (tmp_path / "train.csv").write_text(content)
    c = base.get_config().data
    c.update({"path": str(tmp_path), "seq_len": 16, "batch_size": 2})
    with pytest.raises(data.DataError, match=match):
        data.load_raw(c, "train", num_labels=4)


def test_long_documents_do_not_warn_about_the_tokenizers_maximum(tokenizer_dir, caplog):
    from transformers import AutoTokenizer

    from kanjax.data import load_tokenizer

    def warned():
        found = [r for r in caplog.records if "longer than the specified maximum" in r.getMessage()]
        caplog.clear()
        return found

    text = "hello world " * 6000  # 12,000 tokens > the tokenizer's 8,192
    AutoTokenizer.from_pretrained(str(tokenizer_dir))(text)
    assert warned()  # the warning exists...
    load_tokenizer(str(tokenizer_dir))(text)
    assert not warned()  # ...and kanjax's tokenizers do not give it


# ----------------------------------------------------------------------------- a save that fails


def test_a_failed_save_is_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    import jax

    from kanjax.training.checkpoint import Checkpointer, CheckpointSaveError, finished_steps

    ck = Checkpointer(tmp_path / "checkpoints", every=1, keep=3, async_save=True)
    state = {"w": jax.random.normal(jax.random.key(0), (512, 512))}  # 1 MB of incompressible floats
    ck.save(1, state, {}, {"c": 1}, {"m": 1})
    ck.wait()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))  # files over 200 kB fail as on a full disk
    try:
        with pytest.raises(CheckpointSaveError, match=r"checkpoint step 2 could not be written to .*checkpoints "
                                                      r"\(File too large\); the last complete one, step 1, is kept"):
            ck.save(2, state, {}, {"c": 1}, {"m": 1})
            for _ in range(600):  # what the train loop does after every step
                ck.poll()
                import time
                time.sleep(0.05)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    ck.close()
    assert finished_steps(tmp_path / "checkpoints") == [1]


def test_a_kan_exports_tokenizer_loads_without_asking_to_run_remote_code(tmp_path, tokenizer_dir, capfd):
    """config.json's auto_map made transformers ask "Do you wish to run the custom code? [y/N]" when
    eval.py loaded the tokenizer of a KAN export (and wait for the answer in a terminal)."""
    from flax import nnx

    from kanjax import hf
    from kanjax.data import load_tokenizer
    from kanjax.evals import runner as eval_models
    from kanjax.llama import LlamaConfig, LlamaForCausalLM
    from kanjax.llama.kanify import kanify
    from tests.helpers.train import TINY_MODEL

    model = kanify(LlamaForCausalLM(LlamaConfig.from_hf(TINY_MODEL), rngs=nnx.Rngs(0)),
                   dict(targets=["mlp"], basis="chebyshev2", degree=2))
    folder = hf.save_pretrained(model, tmp_path / "kan", load_tokenizer(str(tokenizer_dir)))
    capfd.readouterr()
    tok = load_tokenizer(eval_models.tokenizer_source(None, str(folder)))
    out = capfd.readouterr()
    assert len(tok) == 49152 and "custom code" not in out.out + out.err and "kanjax_llama" not in out.err


def test_eval_help_describes_model(capsys):
    import eval as eval_cli

    with pytest.raises(SystemExit) as info:
        eval_cli.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert info.value.code == 0
    assert "--model MODEL what to evaluate: a train.py workdir (its latest checkpoint), an HF checkpoint folder" in out


def test_resume_past_a_truncated_checkpoint_prints_one_line_and_shows_final_progress(finished_run, tmp_path,
                                                                                     shared_data, capfd):
    """The truncated newest checkpoint is set aside in one line, without the "Exception ignored in:
    <coroutine ...>" traceback per abandoned read; the final validation and test passes show progress."""
    from kanjax.training.loop import run

    workdir = _copy(finished_run, tmp_path) / "run"
    state = workdir / "checkpoints" / "4" / "state"
    victim = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 3])
    capfd.readouterr()
    run(_config(tmp_path, shared_data, **{"train.steps": 4, "checkpoint.every": 2, "eval.test_limit": 16}))
    out = capfd.readouterr()
    assert [ln for ln in out.out.splitlines() if "unreadable" in ln][0].startswith("checkpoint step 4 is unreadable")
    assert "resumed from checkpoint step 2" in out.out
    assert "Exception ignored" not in out.err and "Traceback" not in out.err
    assert "validation: " in out.err and "test: " in out.err  # the final passes' progress bars
