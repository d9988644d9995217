"""Distillation v2 (issue #42): its verdict rules on made-up records (each outcome reachable, the
arm chosen on validation, a missing part never reads as met), the diagnosis statistics against a
direct computation, and (slow) the --v2 --quick run end to end on the real GGUF."""

import json
import math

import numpy as np
import pytest

from benchmarks.studies.distill import diagnose, report_v2, rules_v2, study

LAYERS = [4, 5]


def fit(arm, layer, val, test, lr=1e-2):
    entry = {"val": {"rel_err": val}, "test": {"rel_err": test, "err2": [test ** 2] * 4, "y2": [1.0] * 4},
             "train_mse": [1.0, 0.5]}
    return {"unit": f"fit__{arm}__L{layer}", "kind": "fit", "arm": arm, "layer": layer, "best_lr": lr,
            "lrs": {f"{lr:g}": entry}, "params": 10, "width": 4, "fit": {"steps": 1600, "batch_tokens": 1024}}


def ppl_record(model, nll_per_token):
    return {"unit": f"eval_ppl__{model}", "kind": "eval_ppl", "model": model,
            "wikitext": {"nll": [nll_per_token * 100] * 3, "tokens": [100] * 3}}


def records(*recs):
    return {r["unit"]: r for r in recs}


def test_the_best_kan_arm_is_chosen_on_validation_and_needs_every_block():
    R = records(*(fit("kan_a", k, val=0.50, test=0.40) for k in LAYERS),  # better on test, worse on val
                *(fit("kan_b", k, val=0.45, test=0.60) for k in LAYERS),
                fit("kan_c", 4, val=0.10, test=0.10))  # one block only: not a candidate
    assert rules_v2.best_kan_arm(R, ["kan_a", "kan_b", "kan_c"], LAYERS) == "kan_b"
    assert rules_v2.best_kan_arm(R, ["kan_c"], LAYERS) is None


@pytest.mark.parametrize("kan_test,kan_nll,status", [
    (0.55, math.log(20.5), "met"),       # +0.05 on every block, +2.5% perplexity
    (0.56, math.log(20.5), "missed"),    # one hundredth past the fit target
    (0.50, math.log(21.2), "missed"),    # perplexity +6%
    (0.50, None, "not measured yet"),    # the fits pass but no perplexity record: never "met"
])
def test_target_outcomes(kan_test, kan_nll, status):
    recs = [*(fit("linear", k, 0.5, 0.50) for k in LAYERS), *(fit("kan", k, 0.5, kan_test) for k in LAYERS),
            ppl_record("linear", math.log(20.0))]
    if kan_nll is not None:
        recs.append(ppl_record("kan", kan_nll))
    t = rules_v2.target(records(*recs), "kan", "linear", LAYERS)
    assert t["status"] == status, t
    assert t["fit"] == pytest.approx({k: kan_test - 0.50 for k in LAYERS})


def test_a_missing_block_is_not_measured_and_a_missed_block_is_named():
    R = records(*(fit("linear", k, 0.5, 0.5) for k in LAYERS), fit("kan", 4, 0.5, 0.52))
    assert rules_v2.target(R, "kan", "linear", LAYERS)["status"] == "not measured yet"
    R = records(*(fit("linear", k, 0.5, 0.5) for k in LAYERS), fit("kan", 4, 0.5, 0.52), fit("kan", 5, 0.5, 0.7))
    t = rules_v2.target(R, "kan", "linear", LAYERS)
    assert t["status"] == "missed" and t["missed_blocks"] == [5]


@pytest.mark.parametrize("lo,hi,word", [(-0.10, 0.04, "matches or beats"), (-0.2, -0.1, "matches or beats"),
                                        (0.06, 0.2, "does not match"), (0.0, 0.06, "inconclusive"),
                                        (None, None, "not measured yet")])
def test_warm_start_rule_cannot_hide_a_loss_beyond_the_margin(lo, hi, word):
    assert rules_v2.warm_start_verdict(lo, hi) == word


def test_input_stats_against_a_direct_computation():
    rng = np.random.default_rng(0)
    seq, windows, d = 8, 6, 5
    x = rng.normal(0, 0.2, (windows * seq, d)).astype(np.float32)
    x[::seq, 3] = 40.0  # a first-token outlier in channel 3
    x[1::seq, 1] = 5.0  # an ordinary-token outlier channel
    y = rng.normal(0, 1, (windows * seq, d)).astype(np.float32)
    y[::seq] *= 30
    s = diagnose.input_stats(x, y, seq, np.arange(windows))
    rest = np.abs(x.reshape(windows, seq, d)[:, 1:]).reshape(-1, d)
    assert s["abs_x_percentiles_rest"]["p50"] == pytest.approx(np.percentile(rest, 50))
    assert s["saturated_share_rest"] == pytest.approx((rest > 2).mean())
    assert s["outlier_channels"][0]["channel"] == 1 and s["first_abs_x_max"] == pytest.approx(40.0)
    y2 = np.square(y.reshape(windows, seq, d)).sum(-1)
    assert s["first_y_energy_share"] == pytest.approx(y2[:, 0].sum() / y2.sum(), rel=1e-5)


def test_error_map_splits_first_tokens_from_the_rest_per_channel():
    rng = np.random.default_rng(1)
    seq, windows, d = 4, 3, 6
    x = rng.normal(size=(windows * seq, d)).astype(np.float32)
    y = rng.normal(size=(windows * seq, d)).astype(np.float32)

    def predict(v):  # right everywhere but channel 2 of ordinary tokens, off by 1 there
        out = y.copy()
        out[np.arange(len(y)) % seq != 0, 2] += 1.0
        return out

    m = diagnose.error_map(predict, x, y, np.arange(windows), seq, batch_windows=windows)
    assert m["rel_err_first"] == 0.0 and m["rest_error_channels"][0] == {"channel": 2, "share": 1.0}
    rest_y2 = np.square(y.reshape(windows, seq, d)[:, 1:]).sum()
    assert m["rel_err_rest"] == pytest.approx(math.sqrt(windows * (seq - 1) / rest_y2), rel=1e-5)


def test_report_says_what_is_missing_and_names_the_chosen_arm(tmp_path):
    recs = [*(fit("linear", k, 0.5, 0.50) for k in LAYERS), *(fit("kan_recipe_none", k, 0.52, 0.62) for k in LAYERS),
            *(fit("kan_recipe", k, 0.60, 0.58) for k in LAYERS)]
    folder = tmp_path / "records"
    folder.mkdir()
    for r in recs:
        (folder / f"{r['unit']}.json").write_text(json.dumps(r))
    text = report_v2.write_report(folder, tmp_path, v1_records=tmp_path / "none").read_text()
    assert "Best re-learned KAN arm (lowest mean validation error over the blocks): **kan_recipe_none**" in text
    assert "Target: **missed**" in text and "+0.120" in text
    assert "No diagnosis records yet" in text and "Warm start fine-tuned vs linear fine-tuned: not measured yet" in text


@pytest.mark.slow
def test_v2_quick_run_records_the_diagnosis_fits_and_error_maps(tmp_path, shared_data, smollm2_gguf):
    records = tmp_path / "records"
    arms = ("linear", "kan_recipe_none", "gr_kan", "gr_warm")  # one of each code path (the other recipe arms: specs)
    study.main(["--v2", "--quick", "--arms", ",".join(arms), "--only", "^(record|diagnose|fit|errmap)",
                "--records", str(records), "--workdir", str(tmp_path / "work"), "--data_dir", str(shared_data)])
    units = {p.stem for p in records.glob("*.json")}
    assert {"record", "diagnose__L4", "diagnose__L5", "errmap__linear", "errmap__gr_warm"} <= units
    assert {f"fit__{a}__L{k}" for a in arms for k in (4, 5)} <= units
    fit_rec = json.loads((records / "fit__kan_recipe_none__L4.json").read_text())
    assert fit_rec["spec"]["domain"] == "none" and fit_rec["fit"]["steps"] == 20  # --quick's budget wins
    # The warm start begins at the pretrained block (its SiLU fit aside): far below a fresh block's error.
    warm, fresh = (json.loads((records / f"fit__{a}__L4.json").read_text())["start"] for a in ("gr_warm", "linear"))
    assert warm < 0.1 < fresh
    text = (tmp_path / "full_model_distill_v2.md").read_text()
    assert "## Diagnosis" in text and "| 4 |" in text and "Best re-learned KAN arm" in text
