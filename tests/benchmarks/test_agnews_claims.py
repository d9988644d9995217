"""benchmarks/studies/agnews/claims.py: its paired interval against a direct computation (scipy's t), and each of
the eight claim rules on made-up records (a clear win, a clear loss and an unclear case where it has them)."""

import math

import numpy as np
import pytest
from scipy import stats

from benchmarks.studies.agnews import claims
from benchmarks.studies.agnews import plan as agnews_plan
from tests.helpers.agnews_records import G, N, arm, run


def test_paired_interval_adds_seed_and_test_sampling_variance():
    a, b = arm("a", [0.80, 0.82, 0.79, 0.81, 0.83]), arm("b", [0.78, 0.80, 0.76, 0.80, 0.79])
    d = claims.paired_diff(a, b)
    per_seed = 100 * (np.array([r["test_accuracy"] for r in a]) - [r["test_accuracy"] for r in b])
    e = 100 * np.mean([claims.correct_bits(x).astype(float) - claims.correct_bits(y) for x, y in zip(a, b)], axis=0)
    half = stats.t.ppf(0.975, 4) * math.sqrt(per_seed.var(ddof=1) / 5 + e.var(ddof=1) / N)
    assert d["d"] == pytest.approx(per_seed.mean()) and d["per_seed"] == pytest.approx(list(per_seed))
    assert (d["lo"], d["hi"]) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))
    # Only common seeds pair; one common seed gives no interval.
    assert claims.paired_diff(a[:1], b)["n"] == 1 and math.isnan(claims.paired_diff(a[:1], b)["lo"])


def test_runs_at_chance_are_left_out_of_the_mean_but_stay_in_the_difference():
    lin = arm("linear", [0.80, 0.81, 0.80])
    kan = arm("kan", [0.80, 0.81, 0.25])
    s = claims.arm_stats(kan)
    assert s["n_ok"] == 2 and s["mean"] == pytest.approx(80.5, abs=0.2) and s["chance"] == [(2, 25.0)]
    assert claims.paired_diff(kan, lin)["d"] == pytest.approx(-18.33, abs=0.1)


SPEED = {"chebyshev2": {"ratio": 1.0, "lo": 1.0, "hi": 1.0}}


def test_claim1_best_tradeoff():
    fast = {"ratio": 0.98, "lo": 0.95, "hi": 1.00}
    slow = {"ratio": 1.30, "lo": 1.25, "hi": 1.35}
    base = [0.80, 0.81, 0.80]
    worse = G(kan_chebyshev2=base, kan_legendre_deg3=[0.70, 0.71, 0.70])
    assert claims.claim_best_tradeoff(worse, {**SPEED, "legendre_deg3": fast})[0] == "confirmed"
    better_and_fast = G(kan_chebyshev2=base, kan_legendre_deg3=[0.90, 0.91, 0.90])
    assert claims.claim_best_tradeoff(better_and_fast, {**SPEED, "legendre_deg3": fast})[0] == "refuted"
    # More accurate but slower is a trade-off, not domination; with no speed figure it stays open.
    assert claims.claim_best_tradeoff(better_and_fast, {**SPEED, "legendre_deg3": slow})[0] == "confirmed"
    assert claims.claim_best_tradeoff(better_and_fast, SPEED)[0] == "inconclusive"
    tied = G(kan_chebyshev2=base, kan_legendre_deg3=[0.80, 0.81, 0.80])
    assert claims.claim_best_tradeoff(tied, {**SPEED, "legendre_deg3": fast})[0] == "inconclusive"


def test_claim2_jacobi_gegenbauer():
    """Against Chebyshev-2 at their own degree (3), in accuracy and in the same-degree time ratio."""
    slow = {"ratio": 1.0, "lo": 0.98, "hi": 1.02, "vs_same_degree": {"ratio": 1.2, "lo": 1.15, "hi": 1.25}}
    same = {"ratio": 1.2, "lo": 1.15, "hi": 1.25, "vs_same_degree": {"ratio": 1.0, "lo": 0.98, "hi": 1.02}}
    base = dict(kan_chebyshev2=[0.95, 0.95, 0.95], kan_chebyshev2_deg3=[0.80, 0.81, 0.80])
    more = G(**base, kan_jacobi_deg3=[0.85, 0.86, 0.85], kan_gegenbauer_deg3=[0.85, 0.85, 0.86])
    assert claims.claim_jacobi_gegenbauer(more, {"jacobi_deg3": slow, "gegenbauer_deg3": slow})[0] == "confirmed"
    assert claims.claim_jacobi_gegenbauer(more, {"jacobi_deg3": same, "gegenbauer_deg3": slow})[0] == "refuted"
    assert claims.claim_jacobi_gegenbauer(more, {"jacobi_deg3": slow})[0] == "inconclusive"
    less = G(**base, kan_jacobi_deg3=[0.70, 0.71, 0.70], kan_gegenbauer_deg3=[0.85, 0.85, 0.86])
    assert claims.claim_jacobi_gegenbauer(less, {"jacobi_deg3": slow, "gegenbauer_deg3": slow})[0] == "refuted"


@pytest.mark.parametrize("kan,verdict", [([0.800, 0.810, 0.805, 0.800, 0.810], "confirmed"),
                                         ([0.60, 0.61, 0.60, 0.61, 0.60], "refuted"),
                                         ([0.95, 0.96, 0.95, 0.96, 0.95], "refuted"),
                                         ([0.80, 0.70, 0.90, 0.75, 0.85], "inconclusive")])
def test_claim3_close_to_linear_is_two_sided(kan, verdict):
    g = G(linear=[0.800, 0.810, 0.805, 0.800, 0.810], kan_chebyshev2=kan)
    assert claims.claim_close_to_linear(g, {})[0] == verdict


def test_claim4_adds_little_cannot_hide_a_loss():
    lin = [0.80, 0.81, 0.80, 0.81, 0.80]
    little = G(linear=lin, kan_chebyshev2_parallel=lin, kan_chebyshev2_sequential=lin)
    assert claims.claim_parallel_sequential(little, {})[0] == "confirmed"
    loss = G(linear=lin, kan_chebyshev2_parallel=[0.60] * 5, kan_chebyshev2_sequential=lin)
    verdict, text = claims.claim_parallel_sequential(loss, {})
    assert verdict == "refuted" and "costs accuracy" in text
    gain = G(linear=lin, kan_chebyshev2_parallel=lin, kan_chebyshev2_sequential=[0.90] * 5)
    assert claims.claim_parallel_sequential(gain, {})[0] == "refuted"


def test_claim5_fp16_refuted_by_any_nonfinite_or_chance_run():
    base = [0.80, 0.81, 0.80, 0.81, 0.80]
    ok = G(kan_chebyshev2=base, kan_chebyshev2_fp16=base)
    assert claims.claim_fp16(ok, {})[0] == "confirmed"
    broken = dict(ok, kan_chebyshev2_fp16=arm("kan_chebyshev2_fp16", base[:4]) +
                  [run("kan_chebyshev2_fp16", 4, 0.80, nonfinite=True)])
    assert claims.claim_fp16(broken, {})[0] == "refuted"
    chance = dict(ok, kan_chebyshev2_fp16=arm("kan_chebyshev2_fp16", base[:4] + [0.25]))
    assert claims.claim_fp16(chance, {})[0] == "refuted"


def test_claim6_no_silu():
    base = [0.80, 0.81, 0.80, 0.81, 0.80]
    assert claims.claim_no_silu(G(linear=base, kan_chebyshev2=base, kan_chebyshev2_nosilu=base), {})[0] == "confirmed"
    low = G(linear=base, kan_chebyshev2=base, kan_chebyshev2_nosilu=[0.70, 0.71, 0.70, 0.71, 0.70])
    assert claims.claim_no_silu(low, {})[0] == "refuted"


def _tune(arm_name, by_lr):
    return {f"{arm_name}_lr{lr:g}": arm(f"{arm_name}_lr{lr:g}", accs, lr=lr) for lr, accs in by_lr.items()}


def test_claim7_less_tuning():
    lrs = agnews_plan.LEARNING_RATES
    flat = dict(zip(lrs, ([0.80, 0.81, 0.80, 0.81, 0.80], [0.805, 0.815, 0.805, 0.81, 0.81],
                          [0.81, 0.82, 0.81, 0.815, 0.81], [0.81, 0.8175, 0.81, 0.81, 0.815])))
    peaked = dict(zip(lrs, ([0.55, 0.56, 0.55, 0.56, 0.55], [0.60, 0.61, 0.60, 0.61, 0.60],
                            [0.70, 0.71, 0.70, 0.71, 0.70], [0.82, 0.83, 0.82, 0.83, 0.82])))
    robust_kan = {**_tune("linear", peaked), **_tune("kan_chebyshev2", flat)}
    verdict, text = claims.claim_less_tuning(robust_kan)
    assert verdict == "confirmed" and "linear 0.003, KAN 0.001" in text and "5 paired seeds" in text
    fragile_kan = {**_tune("linear", flat), **_tune("kan_chebyshev2", peaked)}
    assert claims.claim_less_tuning(fragile_kan)[0] == "refuted"
    assert claims.claim_less_tuning({})[0] == "inconclusive"
    # The rate is chosen on seeds 0-2 only: seeds 3-4 far better at another rate do not move it.
    lucky = {**flat, lrs[0]: flat[lrs[0]][:3] + [0.95, 0.95]}
    assert "KAN 0.001" in claims.claim_less_tuning({**_tune("linear", peaked), **_tune("kan_chebyshev2", lucky)})[1]
    # Seeds 3-4 run at some rates only: the loss off the best rate is averaged over the seeds run at every rate.
    half_done = {lr: accs[:3] if lr != lrs[-1] else accs for lr, accs in peaked.items()}
    text = claims.claim_less_tuning({**_tune("linear", half_done), **_tune("kan_chebyshev2", flat)})[1]
    assert "KAN − linear" in text and text.split("KAN − linear: ")[1].split(")")[0].endswith("3 paired seeds")
    # A rate missing one of seeds 0-2: no choice, no verdict.
    incomplete = {**_tune("linear", peaked), **_tune("kan_chebyshev2", {**flat, lrs[1]: flat[lrs[1]][:2]})}
    verdict, text = claims.claim_less_tuning(incomplete)
    assert verdict == "inconclusive" and "no best rate yet" in text


def test_claim8_fewer_parameters():
    base = [0.80, 0.81, 0.80]
    assert claims.claim_fewer_params(G(linear=base, kan_chebyshev2=base, kan_chebyshev2_half=base), {})[0] == "confirmed"
    assert claims.claim_fewer_params(G(linear=base, kan_chebyshev2=base,
                                       kan_chebyshev2_half=[0.7, 0.71, 0.7]), {})[0] == "refuted"
