"""benchmarks/studies/agnews/recipe_report.py on made-up records: every number of the findings is computed from
the records it is given (change a record, the text follows), the grid picks the best mean
validation accuracy, and the seed-spread verdict cannot pass with a run at chance."""

import json
from pathlib import Path

import pytest

from benchmarks.studies.agnews import recipe_report as report

KINDS = ("q", "k", "v", "o", "gate", "up", "down")
OVERRIDES = {"train.steps": 600, "data.batch_size": 32, "data.seq_len": 80, "train.warmup": 30,
             "train.diagnostics_every": 25}


def record(phase, name, seed, *, test, val50, signal, lr=1e-3, steps=600, takeoff=40):
    diag = [{"step": 0, **{f"{k}/out_signal": signal for k in KINDS}, **{f"{k}/out_rms": 0.5 for k in KINDS}}]
    train = [[s, 1.3 if s < takeoff else 0.8, 2.0] for s in range(10, 610, 10)] if steps > 1 else []
    return {"phase": phase, "name": name, "seed": seed, "test_accuracy": test, "final_val_accuracy": test + 0.01,
            "val_curve": [[50, val50, 1.0], [600, test, 0.5]] if steps > 1 else [], "train_curve": train,
            "diagnostics": diag, "params": 1000, "steps": steps, "lr": lr, "commit": "abcdef123456",
            "overrides": OVERRIDES}


def write(folder: Path, records):
    for r in records:
        (folder / r["phase"]).mkdir(parents=True, exist_ok=True)
        (folder / r["phase"] / f"{r['name']}__seed{r['seed']}.json").write_text(json.dumps(r))


def test_findings_follow_the_records(tmp_path):
    records = [record("tune", "linear_lr0.001", 0, test=0.84, val50=0.78, signal=0.9),
               record("recipe", "kan_v1_defaults", 0, test=0.77, val50=0.37, signal=0.02, takeoff=80),
               record("recipe", "kan_linear_bottleneck", 0, test=0.82, val50=0.75, signal=0.88, takeoff=50),
               record("recipe", "init_coef_linear_only", 0, test=0.3, val50=0.0, signal=0.55, steps=1)]
    write(tmp_path / "rec", records)
    text = report.write_report(tmp_path / "rec", tmp_path / "out").read_text()
    assert "is 0.02 for kan_v1_defaults against 0.90 for linear" in text
    assert "(alone): 0.55" in text and "With both (kan_linear_bottleneck): 0.88" in text
    assert "linear: 78.0 %; kan_v1_defaults: 37.0 %; kan_linear_bottleneck: 75.0 %" in text
    assert "Only 1 seed(s) per arm so far" in text
    assert "| kan_v1_defaults | 1 | 1,000 | 78.0 | 77.0 | 77.0 | 0 | 80 |" in text  # takeoff from the curve
    assert (tmp_path / "out" / "kan_recipe_curves.png").exists()

    # A later seed of the grid, reused from the study (no diagnostics): the diagnosis keeps to the recipe's seeds.
    study_seed = record("tune", "linear_lr0.001", 3, test=0.5, val50=0.1, signal=0.1)
    del study_seed["diagnostics"]
    write(tmp_path / "rec", [{**study_seed, "reused_from": "linear__seed3.json"}])
    again = report.write_report(tmp_path / "rec", tmp_path / "out").read_text()
    assert "is 0.02 for kan_v1_defaults against 0.90 for linear" in again and "linear: 78.0 %;" in again

    records[1]["diagnostics"][0] = {**records[1]["diagnostics"][0], **{f"{k}/out_signal": 0.3 for k in KINDS}}
    write(tmp_path / "rec", records)
    assert "is 0.30 for kan_v1_defaults" in report.write_report(tmp_path / "rec", tmp_path / "out").read_text()


@pytest.mark.parametrize("kan_tests,verdict", [((0.80, 0.81, 0.79), "target met"),
                                                ((0.80, 0.81, 0.20), "target not met"),  # one run at chance
                                                ((0.70, 0.85, 0.78), "target not met")])  # 3x linear's spread
def test_learning_rate_grid_and_seed_spread(tmp_path, kan_tests, verdict):
    records = []
    for lr, shift in ((1e-4, -0.08), (3e-4, -0.05), (1e-3, 0.0), (3e-3, -0.10)):
        for seed in range(3):
            records.append(record("tune", f"linear_lr{lr:g}", seed, test=0.83 + 0.02 * (seed - 1) + shift,
                                  val50=0.7, signal=0.9, lr=lr))
            records.append(record("tune", f"kan_chebyshev2_lr{lr:g}", seed, test=kan_tests[seed] + shift,
                                  val50=0.7, signal=0.9, lr=lr))
    # Seeds 3-4 far better at another rate (the grid's claim-7 seeds) do not move the choice made on seeds 0-2.
    records += [record("tune", "kan_chebyshev2_lr0.0001", seed, test=0.99, val50=0.9, signal=0.9, lr=1e-4)
                for seed in (3, 4)]
    write(tmp_path / "rec", records)
    text = report.write_report(tmp_path / "rec", tmp_path / "out").read_text()
    section = text.split("## Learning-rate grid")[1].splitlines()
    grid = [line for line in section if line.startswith(("| linear |", "| kan_chebyshev2 |"))]
    assert len(grid) == 2
    assert all(line.rstrip(" |").endswith("0.001") for line in grid), grid  # the best mean validation accuracy
    assert f"**{verdict}**" in text


def test_an_incomplete_grid_gives_no_seed_spread_verdict(tmp_path):
    """One seed per rate, and the KAN at one rate only: no std exists, so neither "met" nor "not met"."""
    records = [record("tune", f"linear_lr{lr:g}", 0, test=0.83, val50=0.7, signal=0.9, lr=lr) for lr in (3e-4, 1e-3)]
    records.append(record("tune", "kan_chebyshev2_lr0.001", 0, test=0.82, val50=0.7, signal=0.9, lr=1e-3))
    write(tmp_path / "rec", records)
    text = report.write_report(tmp_path / "rec", tmp_path / "out").read_text()
    assert "The tuning grid is incomplete" in text and "no verdict yet" in text
    assert "target met" not in text and "target not met" not in text and "nan" not in text


def test_seed_spread_adds_the_study_seeds_and_gives_the_ratio_interval(tmp_path):
    """Seeds 3+ of the chosen arms come from the study phase (same rate and budget; another rate's
    study runs are ignored); the ratio's F interval is the textbook one; a rate chosen at the
    grid's edge is flagged."""
    from scipy import stats

    records = []
    for lr in (1e-4, 3e-4, 1e-3, 3e-3):
        best = lr == 1e-4  # the KAN's best: the grid's lowest
        for seed in range(3):
            records.append(record("tune", f"linear_lr{lr:g}", seed, test=0.83 + 0.01 * seed - 0.1 * (lr != 1e-3),
                                  val50=0.7, signal=0.9, lr=lr))
            records.append(record("tune", f"kan_chebyshev2_lr{lr:g}", seed, test=0.80 + 0.02 * seed - 0.1 * (not best),
                                  val50=0.7, signal=0.9, lr=lr))
    lin_extra = [0.86, 0.80]
    records += [record("study", "linear", 3 + i, test=t, val50=0.7, signal=0.9, lr=1e-3) for i, t in enumerate(lin_extra)]
    records += [record("study", "kan_chebyshev2", 3, test=0.2, val50=0.7, signal=0.9, lr=3e-3)]  # another rate
    write(tmp_path / "rec", records)
    text = report.write_report(tmp_path / "rec", tmp_path / "out").read_text()
    lin = [83.0, 84.0, 85.0, 86.0, 80.0]
    kan = [80.0, 82.0, 84.0]
    ratio = stats.tstd(kan) / stats.tstd(lin)
    f = ratio ** 2
    lo, hi = (f / stats.f.ppf(0.95, 2, 4)) ** 0.5, (f / stats.f.ppf(0.05, 2, 4)) ** 0.5
    assert f"seed std is {stats.tstd(kan):.2f} pt (3 seeds) against linear's {stats.tstd(lin):.2f} pt (5 seeds)" in text
    assert f"ratio {ratio:.2f}, 90% interval {lo:.2f}–{hi:.2f}" in text
    assert "0 of 3 KAN runs at chance" in text  # the study run at another rate is not counted
    assert "the KAN's chosen rate 0.0001 is the grid's lowest" in text and "linear's chosen rate 0.001 is" not in text
    assert "Seeds 3+ come from the study phase" in text
    # The grid's own seeds 3-4 at the chosen rate are those study runs, reused: the same numbers, the same note.
    write(tmp_path / "rec", [{**r, "phase": "tune", "name": "linear_lr0.001", "reused_from": f"linear__seed{r['seed']}.json"}
                             for r in records if r["phase"] == "study" and r["name"] == "linear"])
    again = report.write_report(tmp_path / "rec", tmp_path / "out").read_text()
    assert f"against linear's {stats.tstd(lin):.2f} pt (5 seeds)" in again and "Seeds 3+ come from the study phase" in again


def test_the_recipe_is_chosen_on_validation_and_a_variant_grid_is_its_own_row(tmp_path):
    """Finding 4 names the fixed-init variant with the best mean final validation accuracy and says
    whether it is the default (the arm the tune phase reused at the recipe rate); a recipe arm run at
    other rates (`<arm>_lr<rate>`) is a row of the grid, never a row of the diagnosis."""
    records = [record("tune", "linear_lr0.001", 0, test=0.84, val50=0.78, signal=0.9),
               record("recipe", "kan_v1_defaults", 0, test=0.90, val50=0.37, signal=0.02),  # never the recipe
               record("recipe", "kan_linear_bottleneck", 0, test=0.82, val50=0.75, signal=0.88),
               record("recipe", "kan_linear_bottleneck_centred", 0, test=0.85, val50=0.75, signal=0.88),
               record("recipe", "kan_linear_bottleneck_lr0.0003", 0, test=0.83, val50=0.7, signal=0.9, lr=3e-4),
               {**record("tune", "kan_chebyshev2_lr0.001", 0, test=0.85, val50=0.75, signal=0.88),
                "reused_from": "kan_linear_bottleneck_centred__seed0.json"}]
    write(tmp_path / "rec", records)
    text = report.write_report(tmp_path / "rec", tmp_path / "out").read_text()
    assert ("kan_linear_bottleneck_centred has the highest mean final validation accuracy at this rate "
            "(kan_linear_bottleneck: 83.0 %; kan_linear_bottleneck_centred: 86.0 %). It is the layer's default") in text
    diagnosis, grid = text.split("## Learning-rate grid")
    assert "_lr0.0003" not in diagnosis and "| kan_linear_bottleneck_centred (default) |" in diagnosis
    assert "| kan_linear_bottleneck | 84.0 | 83.0 | 0.0003 |" in grid  # its 0.001 is the recipe arm's run
    assert "| kan_chebyshev2 | – | 86.0 | 0.001 |" in grid

    records[-1]["reused_from"] = "kan_linear_bottleneck__seed0.json"  # the default is another arm
    write(tmp_path / "rec", records)
    assert "**It is not the layer's default.**" in report.write_report(tmp_path / "rec", tmp_path / "out").read_text()
