"""The study scripts end to end on the real shared data (slow): their records and reports."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


MODULES = {"full_model_study.py": "benchmarks.studies.full_model.study", "agnews_study.py": "benchmarks.studies.agnews.study",
           "full_model_distill.py": "benchmarks.studies.distill.study"}


def _run(script, *args):
    out = subprocess.run([sys.executable, "-m", MODULES[script], *args], cwd=REPO,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_converted_full_smollm2_scores_like_the_pretrained_one(tmp_path, shared_data, smollm2_gguf):
    """Arm (d) of the full-model study before fine-tuning: all 30 blocks, last-5 MLPs converted to
    KAN with from_linear; the same answers as the pretrained model on the first 20 questions of
    every shared benchmark, and the same held-out chat perplexity (the MT-Bench conversations of the
    first two packed rows, each whole)."""
    _run("full_model_study.py", "--only", "reference|d_before", "--limit", "20", "--chat_rows", "2",
         "--records", str(tmp_path / "rec"),
         "--workdirs", str(tmp_path / "work"), "--data_dir", str(shared_data))
    ref = json.loads((tmp_path / "rec" / "reference__seed0.json").read_text())
    conv = json.loads((tmp_path / "rec" / "d_before_finetuning__seed0.json").read_text())
    assert conv["trainable_params"] == 3 * ref["trainable_params"]  # full-width degree-2 KAN: 3 coefficients/edge
    for task, r in ref["tasks"].items():
        assert r["n"] == 20 or task == "copa"
        # Question by question: the converted model picks the same answer under both metrics.
        assert (conv["tasks"][task]["correct"], conv["tasks"][task]["correct_norm"]) == (r["correct"], r["correct_norm"]), task
    assert ref["chat_rows"] == 2 and ref["chat_conversations"] == 10  # every held-out one tokenised, 2 rows scored
    assert abs(conv["chat_perplexity"] / ref["chat_perplexity"] - 1) < 1e-3
    assert 1.0 < ref["chat_perplexity"] < 50.0  # the pretrained chat model predicts held-out chats


@pytest.mark.slow
def test_agnews_study_quick_writes_records_and_report(tmp_path, shared_data):
    # Two workers: both arms train at once, as on an accelerator host.
    stdout = _run("agnews_study.py", "--quick", "--phase", "study", "--lr", "1e-3", "--only", "^linear$|^kan_chebyshev2$",
                  "--workers", "2", "--records",
                  str(tmp_path / "rec"), "--workdirs", str(tmp_path / "work"), "--data_dir", str(shared_data))
    assert "linear seed 0: ok" in stdout and "kan_chebyshev2 seed 0: ok" in stdout
    rec_path = tmp_path / "rec" / "study" / "kan_chebyshev2__seed0.json"
    rec = json.loads(rec_path.read_text())
    assert rec["params"] > 0 and rec["steps"] == 6 and not rec["nonfinite"] and 0 <= rec["test_accuracy"] <= 1
    # The figure run draws its learned functions; a replay trains it again, identically on this machine,
    # redraws them and says how it compares with the record (a changed record is caught).
    figure = tmp_path / "agnews_quick_learned_functions.png"
    assert figure.stat().st_size > 1000
    figure.unlink()
    replay = ["--quick", "--replay", "study", "kan_chebyshev2", "0", "--records", str(tmp_path / "rec"),
              "--workdirs", str(tmp_path / "work"), "--data_dir", str(shared_data)]
    assert "identical" in _run("agnews_study.py", *replay) and figure.stat().st_size > 1000
    compared = tmp_path / "rec" / "replays" / "study__kan_chebyshev2__seed0.json"
    assert json.loads(compared.read_text())["identical"] and json.loads(compared.read_text())["same_outcome_fraction"] == 1
    rec_path.write_text(json.dumps({**rec, "test_loss": rec["test_loss"] + 1e-6}))
    out = subprocess.run([sys.executable, "-m", MODULES["agnews_study.py"], *replay], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and "DIFFERENT" in out.stdout, out.stdout[-2000:]
    assert not json.loads(compared.read_text())["identical"]
    rec_path.write_text(json.dumps(rec))
    # A finished run is not redone.
    assert "0 run(s) to do" in _run("agnews_study.py", "--quick", "--phase", "study", "--lr", "1e-3", "--only", "^linear$",
                                    "--records",
                                    str(tmp_path / "rec"), "--workdirs", str(tmp_path / "work"),
                                    "--data_dir", str(shared_data), "--no_report")
