"""benchmarks/studies/agnews/study.py: a run already trained (in any phase) is reused, and the budget's sequence
length holds the texts whole."""

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
from benchmarks.studies.agnews import plan as plan_lib
from benchmarks.studies.agnews import study
from tests.helpers.agnews_records import study_args


def test_an_older_record_of_the_same_training_is_reused_and_a_different_one_is_not(tmp_path):
    """A record written before the config schema grew (keys missing) still counts as the same run;
    checkpointing settings never matter; any training setting that differs does."""
    import json

    args = study_args(tmp_path)
    arm = next(a for a in plan_lib.TUNE if a.name == "kan_chebyshev2_lr0.001")
    flags = plan_lib.run_overrides("tune", arm, 0, args, {})
    old = plan_lib.resolved_config(arm, {**flags, "checkpoint.every": 0})
    del old["train"]["eps"], old["data"]["split_seed"]  # keys an older commit did not have
    rec = {"name": "kan_linear_bottleneck", "seed": 0, "config": "configs/kan_cheb2.py", "resolved_config": old}
    folder = tmp_path / "rec" / "recipe"
    folder.mkdir(parents=True)
    (folder / "kan_linear_bottleneck__seed0.json").write_text(json.dumps(rec))
    assert plan_lib.same_run(args, "tune", arm, 0, flags) == folder / "kan_linear_bottleneck__seed0.json"
    other = next(a for a in plan_lib.TUNE if a.name == "kan_chebyshev2_lr0.003")
    assert plan_lib.same_run(args, "tune", other, 0, plan_lib.run_overrides("tune", other, 0, args, {})) is None
    assert plan_lib.same_run(args, "tune", arm, 1, plan_lib.run_overrides("tune", arm, 1, args, {})) is None
    # A linear model reads no KAN setting: a grid record made before centring became the default is the
    # study's linear run; a KAN arm whose centring differs is not.
    lin = next(a for a in plan_lib.TUNE if a.name == "linear_lr0.001")
    lin_flags = plan_lib.run_overrides("tune", lin, 0, args, {})
    old_lin = plan_lib.resolved_config(lin, {**lin_flags, "kan.center": "none"})
    (folder / "linear_lr0.001__seed0.json").write_text(json.dumps(
        {"name": "linear_lr0.001", "seed": 0, "config": "configs/linear.py", "resolved_config": old_lin}))
    study_lin = next(a for a in plan_lib.STUDY if a.name == "linear")
    flags = plan_lib.run_overrides("study", study_lin, 0, args, {"linear": 1e-3})
    assert plan_lib.same_run(args, "study", study_lin, 0, flags) == folder / "linear_lr0.001__seed0.json"
    assert plan_lib.same_run(args, "tune", arm, 0, {**plan_lib.run_overrides("tune", arm, 0, args, {}),
                                                 "kan.center": "none"}) is None


def test_the_budget_holds_at_least_90_percent_of_the_texts_whole(shared_data):
    """The issue's bar for the sequence length, on the shared data, against a count made without kanjax
    (the csv module and the `tokenizers` library on the tokenizer's own file)."""
    import csv

    from tokenizers import Tokenizer

    cover = study.text_coverage(str(shared_data), plan_lib.SEQ_LEN)
    assert min(cover[s]["whole"] for s in ("train", "validation", "test")) >= 0.9
    tok = Tokenizer.from_file(str(shared_data / "smollm2_tokenizer" / "tokenizer.json"))
    for files, splits in ((["train.csv"], ("train", "validation")), (["test.csv"], ("test",))):
        with open(shared_data / "ag_news" / files[0], newline="") as f:
            texts = [row["text"] for row in csv.DictReader(f)]
        lengths = np.array([len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=True)])
        assert sum(cover[s]["texts"] for s in splits) == len(texts)
        whole = sum(round(cover[s]["whole"] * cover[s]["texts"]) for s in splits)
        assert whole == int(np.sum(lengths <= plan_lib.SEQ_LEN)), files
    assert cover["test"]["median"] == float(np.median(lengths))


def _timed_record(args, phase, arm, seed, wall):
    """A finished run's record, as much of it as the planner reads."""
    import json

    flags = plan_lib.run_overrides(phase, arm, seed, args, {})
    path = plan_lib.record_path(args, phase, arm.name, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": arm.name, "seed": seed, "config": f"configs/{arm.config}.py",
                                "resolved_config": plan_lib.resolved_config(arm, flags), "wall_seconds": wall,
                                "lr": flags["train.lr"], "final_val_accuracy": 0.8, "test_accuracy": 0.8,
                                "device": "cpu"}))


def _arm(phase, name):
    return next(a for a in plan_lib.PHASES[phase] if a.name == name)


def test_todo_lists_the_runs_left_in_order_with_their_time_or_the_record_they_reuse(tmp_path):
    args = study_args(tmp_path, phase="study", only="^(linear|kan_chebyshev2)$", lr=1e-3)
    lin, tune_lin = _arm("study", "linear"), _arm("tune", "linear_lr0.001")
    _timed_record(args, "study", lin, 0, 600.0)
    _timed_record(args, "study", lin, 1, 1200.0)
    _timed_record(args, "tune", tune_lin, 2, 3000.0)  # the study's linear seed 2 at lr 1e-3: the same training
    lines = plan_lib.todo_lines(args)
    planned = [f"study {a.name} seed {s}" for _, a, s, _ in plan_lib.planned_runs(args, {})
               if not (a.name == "linear" and s < 2)]
    assert [line.split(":")[0] for line in lines[:-1]] == planned
    by_run = dict(line.split(": ", 1) for line in lines[:-1])
    assert by_run["study linear seed 2"] == "reuses tune/linear_lr0.001__seed2.json"
    assert by_run["study linear seed 3"] == by_run["study linear seed 4"] == "~15 min"  # median of 600 and 1200 s
    assert all(by_run[f"study kan_chebyshev2 seed {s}"].startswith("not timed yet") for s in range(5))
    assert lines[-1] == "8 run(s) to do: ~0.5 h of timed runs one after another, 5 not timed yet"


def test_until_starts_only_runs_that_can_end_before_it(tmp_path):
    """--until: a run starts only if its arm's median time so far ends before the deadline (an arm
    never timed counts as the slowest timed one); a reused record costs nothing and is always taken."""
    import time

    args = study_args(tmp_path, phase="study", only="^(linear|kan_chebyshev2)$", lr=1e-3, until=None, workers=1)
    lin, cheb = _arm("study", "linear"), _arm("study", "kan_chebyshev2")
    _timed_record(args, "study", lin, 0, 600.0)
    _timed_record(args, "study", cheb, 0, 3000.0)
    _timed_record(args, "tune", _arm("tune", "linear_lr0.001"), 1, 600.0)  # = study linear seed 1
    run = {(ph, a.name, s): (ph, a, s, f) for ph, a, s, f in plan_lib.planned_runs(args, {})}
    args.until = time.time() + 1200
    walls = plan_lib.expected_seconds(args, "cpu")
    assert plan_lib.fits_before(args, run["study", "linear", 2], walls)
    assert not plan_lib.fits_before(args, run["study", "kan_chebyshev2", 1], walls)
    assert plan_lib.fits_before(args, run["study", "linear", 1], walls)  # reuses the tune record
    args.only = "^linear_fp16$"  # never timed: as slow as kan_chebyshev2
    assert not plan_lib.fits_before(args, next(r for r in plan_lib.planned_runs(args, {}) if r[2] == 0), walls)
    # Past the deadline the runner trains nothing, but still takes the record it can reuse.
    args.only, args.until = "^(linear|kan_chebyshev2)$", time.time() - 1
    failed, waiting = study.run_plan(args)
    assert (failed, waiting) == (set(), 0)
    assert plan_lib.record_path(args, "study", "linear", 1).exists()
    assert not (tmp_path / "work" / "study").exists()  # no run folder: nothing was launched


def test_expected_times_count_only_runs_on_the_same_kind_of_machine(tmp_path):
    """A run finished on an accelerator says nothing of how long one takes on the CPU, and the reverse;
    on a kind of machine with nothing timed yet, --until has no estimate to refuse on."""
    import json
    import time

    args = study_args(tmp_path, phase="study", only="^linear$", lr=1e-3, until=time.time() + 1200)
    lin = _arm("study", "linear")
    _timed_record(args, "study", lin, 0, 3000.0)
    path = plan_lib.record_path(args, "study", "linear", 0)
    path.write_text(json.dumps({**json.loads(path.read_text()), "device": "cpu"}))
    _timed_record(args, "study", lin, 1, 60.0)
    path = plan_lib.record_path(args, "study", "linear", 1)
    path.write_text(json.dumps({**json.loads(path.read_text()), "device": "NVIDIA H200"}))
    assert plan_lib.expected_seconds(args, "cpu") == {"linear": 3000.0}
    assert plan_lib.expected_seconds(args, "NVIDIA H200") == {"linear": 60.0}
    assert plan_lib.expected_seconds(args) == {"linear": 1530.0}
    seed2 = next(r for r in plan_lib.planned_runs(args, {}) if r[2] == 2)
    assert not plan_lib.fits_before(args, seed2, plan_lib.expected_seconds(args, "cpu"))
    assert plan_lib.fits_before(args, seed2, plan_lib.expected_seconds(args, "NVIDIA H200"))
    assert plan_lib.fits_before(args, seed2, plan_lib.expected_seconds(args, "TPU v5 lite"))  # nothing timed there
    assert plan_lib.todo_lines(args, "cpu")[-1] == "3 run(s) to do: ~2.5 h of timed runs one after another on cpu"


def test_device_records_land_beside_the_others_and_never_replace_one(tmp_path):
    """benchmarks/studies/agnews/device.sh land: the records an accelerator session brought back are added
    (an existing record is kept as it is) and the report is written from all of them."""
    import json
    import os
    import subprocess
    import tarfile

    from tests.helpers.agnews_records import run

    came = tmp_path / "came"
    (came / "study").mkdir(parents=True)
    gpu = {"device": "NVIDIA H200", "matmul_precision": "highest"}
    for r in (run("linear", 0, 0.9), run("linear", 1, 0.8), run("kan_chebyshev2", 1, 0.81)):
        (came / "study" / f"{r['name']}__seed{r['seed']}.json").write_text(json.dumps({**r, **gpu}))
    with tarfile.open(tmp_path / "records.tar", "w") as tar:
        tar.add(came / "study", arcname="./study")
    records = tmp_path / "results" / "agnews" / "agnews_runs"
    (records / "study").mkdir(parents=True)
    for r in (run("linear", 0, 0.8), run("kan_chebyshev2", 0, 0.79)):
        (records / "study" / f"{r['name']}__seed{r['seed']}.json").write_text(json.dumps(r))
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "studies" / "agnews" / "device.sh"), "land", str(tmp_path / "records.tar"),
                          str(records)], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    assert "2 record(s) added" in out.stdout
    kept = json.loads((records / "study" / "linear__seed0.json").read_text())
    assert kept["test_accuracy"] == 0.8 and kept["device"] == "cpu"
    assert json.loads((records / "study" / "kan_chebyshev2__seed1.json").read_text())["device"] == "NVIDIA H200"
    text = (tmp_path / "results" / "agnews" / "agnews.md").read_text()
    assert "linear: NVIDIA H200 seed(s) 1; cpu seed(s) 0" in text


def test_device_run_installs_every_carried_wheel_but_those_the_image_provides(tmp_path):
    """benchmarks/studies/agnews/device.sh's --from_image: a named project's wheel is left out whatever its spelling
    (PyPI names compare in lower case with '-' and '.' as '_'), a longer name sharing its prefix is kept,
    and a name that matches no carried wheel stops the call instead of installing the carried one."""
    import subprocess

    names = ["flax-0.12.8-py3-none-any.whl", "flaxformer-1.0-py3-none-any.whl",
             "orbax_checkpoint-0.11.0-py3-none-any.whl", "optax-0.2.5-py3-none-any.whl"]
    for n in names:
        (tmp_path / n).touch()

    def wheels(from_image):
        return subprocess.run(["bash", str(REPO / "benchmarks" / "studies" / "agnews" / "device.sh"), "wheels", str(tmp_path),
                               from_image], capture_output=True, text=True)

    out = wheels("Flax,orbax-checkpoint")
    assert out.returncode == 0, out.stderr
    assert sorted(Path(p).name for p in out.stdout.split()) == [names[1], names[3]]
    assert "from the image: flax-0.12.8" in out.stderr and "from the image: orbax_checkpoint-0.11.0" in out.stderr
    assert sorted(Path(p).name for p in wheels("").stdout.split()) == sorted(names)
    assert wheels(",".join(["flax", "flaxformer", "orbax.checkpoint", "optax"])).stdout == ""
    misspelt = wheels("flax,orbax")
    assert misspelt.returncode == 2 and misspelt.stdout == ""
    assert "no wheel of orbax in" in misspelt.stderr
