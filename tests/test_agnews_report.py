"""benchmarks/agnews_report.py: its statistics against scipy, and its verdict rules on made-up records."""

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import agnews_report as report  # noqa: E402


def records(name, accs, step_s=0.5, nonfinite=False, skipped=0):
    return [{"name": name, "seed": i, "test_accuracy": a, "best_val_accuracy": a, "params": 1000,
             "step_seconds_median": step_s, "train_seconds": 100 * step_s, "peak_rss_mb": 900.0,
             "skipped_steps": skipped, "nonfinite": nonfinite, "cpus": 2, "commit": "abc", "device": "cpu",
             "jax": "x", "overrides": {"train.steps": 10, "data.batch_size": 4, "data.seq_len": 8,
                                       "train.warmup": 1, "eval.every": 5}} for i, a in enumerate(accs)]


def test_interval_and_welch_difference_match_scipy():
    a, b = [0.801, 0.812, 0.795, 0.806], [0.781, 0.770, 0.779]
    sa, sb = report.stats_of(records("a", a)), report.stats_of(records("b", b))
    lo, hi = stats.t.interval(0.95, len(a) - 1, loc=np.mean(a) * 100, scale=stats.sem(np.array(a) * 100))
    assert sa["ci"] == pytest.approx((lo, hi), rel=1e-9)
    d, dlo, dhi = report.diff_ci(sa, sb)
    ref = stats.ttest_ind(np.array(a) * 100, np.array(b) * 100, equal_var=False).confidence_interval(0.95)
    assert (dlo, dhi) == pytest.approx((ref.low, ref.high), rel=1e-9)
    assert d == pytest.approx(100 * (np.mean(a) - np.mean(b)))


def test_single_seed_side_uses_the_other_sides_spread():
    many, one = report.stats_of(records("m", [0.80, 0.81, 0.79])), report.stats_of(records("o", [0.70]))
    d, lo, hi = report.diff_ci(one, many)
    half = stats.t.ppf(0.975, 2) * many["std"] * np.sqrt(1 + 1 / 3)
    assert (lo, hi) == pytest.approx((d - half, d + half))
    assert np.isnan(report.diff_ci(one, report.stats_of(records("p", [0.6])))[1])


def groups(**accs):
    return {n: report.stats_of(records(n, a)) for n, a in accs.items()}


def test_close_to_linear_rule():
    close = groups(linear=[0.800, 0.805, 0.798], kan_chebyshev2=[0.797, 0.801, 0.799])
    assert report.claim_close_to_linear(close)[0] == "confirmed"
    far = groups(linear=[0.800, 0.805, 0.798], kan_chebyshev2=[0.60, 0.61, 0.59])
    assert report.claim_close_to_linear(far)[0] == "refuted"
    noisy = groups(linear=[0.80, 0.70, 0.75], kan_chebyshev2=[0.78, 0.72, 0.74])
    assert report.claim_close_to_linear(noisy)[0] == "inconclusive"


def test_fp16_rule_refutes_on_any_nonfinite_run():
    S = groups(kan_chebyshev2=[0.700, 0.701, 0.699], linear=[0.8, 0.8, 0.8], linear_fp16=[0.8, 0.8, 0.8],
               kan_chebyshev2_fp16=[0.700, 0.702, 0.699])
    assert report.claim_fp16(S)[0] == "confirmed"
    S["kan_chebyshev2_fp16"] = report.stats_of(records("kan_chebyshev2_fp16", [0.700, 0.702, 0.699], nonfinite=True))
    assert report.claim_fp16(S)[0] == "refuted"


def test_report_lists_missing_runs_and_writes_every_claim(tmp_path):
    import json

    recs = tmp_path / "records"
    recs.mkdir()
    for r in records("linear", [0.8, 0.81, 0.79]) + records("kan_chebyshev2", [0.7, 0.72, 0.71], step_s=0.6):
        (recs / f"{r['name']}__seed{r['seed']}.json").write_text(json.dumps(r))
    path = report.write_report(recs, tmp_path, quick=True)
    text = path.read_text()
    assert text.count("\n### ") == 7  # the six claims + how the setting differs from the original
    assert "### 3. A parameter-matched KAN everywhere comes close to linear (linear slightly better): **refuted**" in text
    assert "not yet measured" in text and "kan_jacobi" in text
    assert (tmp_path / "agnews_quick_scatter.png").stat().st_size > 1000
