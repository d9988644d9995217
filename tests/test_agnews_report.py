"""benchmarks/agnews_report.py: its paired interval against a direct computation, and each of the
eight claim rules on made-up records (a clear win, a clear loss and an unclear case where it has them)."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import agnews_report as report  # noqa: E402

N = 400  # test texts of the made-up records


def run(name, seed, acc, *, lr=1e-3, params=1000, nonfinite=False, skipped=0):
    """A record with test accuracy `acc`: round(acc·N) of the N texts right, which ones drawn per seed."""
    k = int(round(acc * N))
    bits = np.zeros(N, bool)
    bits[np.random.default_rng(1000 + seed).permutation(N)[:k]] = True  # arms share their hard texts
    return {"name": name, "seed": seed, "test_accuracy": k / N, "test_n": N,
            "test_correct_hex": np.packbits(bits).tobytes().hex(), "final_val_accuracy": k / N, "lr": lr,
            "params": params, "step_seconds_median": 0.5, "skipped_steps": skipped, "nonfinite": nonfinite,
            "val_curve": [[10, 0.5, 1.0], [20, k / N, 0.5]], "train_curve": [[10, 1.2, 3.0]], "commit": "abc",
            "device": "cpu", "cpus": 2, "jax": "x", "overrides": {"train.steps": 20, "data.batch_size": 4,
                                                                  "data.seq_len": 8, "train.warmup": 1,
                                                                  "eval.every": 10}}


def arm(name, accs, **kw):
    return [run(name, s, a, **kw) for s, a in enumerate(accs)]


def G(**accs):
    return {name: arm(name, a) for name, a in accs.items()}


def test_paired_interval_adds_seed_and_test_sampling_variance():
    a, b = arm("a", [0.80, 0.82, 0.79, 0.81, 0.83]), arm("b", [0.78, 0.80, 0.76, 0.80, 0.79])
    d = report.paired_diff(a, b)
    per_seed = 100 * (np.array([r["test_accuracy"] for r in a]) - [r["test_accuracy"] for r in b])
    e = 100 * np.mean([report.correct_bits(x).astype(float) - report.correct_bits(y) for x, y in zip(a, b)], axis=0)
    half = stats.t.ppf(0.975, 4) * math.sqrt(per_seed.var(ddof=1) / 5 + e.var(ddof=1) / N)
    assert d["d"] == pytest.approx(per_seed.mean()) and d["per_seed"] == pytest.approx(list(per_seed))
    assert (d["lo"], d["hi"]) == pytest.approx((per_seed.mean() - half, per_seed.mean() + half))
    # Only common seeds pair; one common seed gives no interval.
    assert report.paired_diff(a[:1], b)["n"] == 1 and math.isnan(report.paired_diff(a[:1], b)["lo"])


def test_runs_at_chance_are_left_out_of_the_mean_but_stay_in_the_difference():
    lin = arm("linear", [0.80, 0.81, 0.80])
    kan = arm("kan", [0.80, 0.81, 0.25])
    s = report.arm_stats(kan)
    assert s["n_ok"] == 2 and s["mean"] == pytest.approx(80.5, abs=0.2) and s["chance"] == [(2, 25.0)]
    assert report.paired_diff(kan, lin)["d"] == pytest.approx(-18.33, abs=0.1)


SPEED = {"chebyshev2": {"ratio": 1.0, "lo": 1.0, "hi": 1.0}}


def test_claim1_best_tradeoff():
    fast = {"ratio": 0.98, "lo": 0.95, "hi": 1.00}
    slow = {"ratio": 1.30, "lo": 1.25, "hi": 1.35}
    base = [0.80, 0.81, 0.80]
    worse = G(kan_chebyshev2=base, kan_legendre_deg3=[0.70, 0.71, 0.70])
    assert report.claim_best_tradeoff(worse, {**SPEED, "legendre_deg3": fast})[0] == "confirmed"
    better_and_fast = G(kan_chebyshev2=base, kan_legendre_deg3=[0.90, 0.91, 0.90])
    assert report.claim_best_tradeoff(better_and_fast, {**SPEED, "legendre_deg3": fast})[0] == "refuted"
    # More accurate but slower is a trade-off, not domination; with no speed figure it stays open.
    assert report.claim_best_tradeoff(better_and_fast, {**SPEED, "legendre_deg3": slow})[0] == "confirmed"
    assert report.claim_best_tradeoff(better_and_fast, SPEED)[0] == "inconclusive"
    tied = G(kan_chebyshev2=base, kan_legendre_deg3=[0.80, 0.81, 0.80])
    assert report.claim_best_tradeoff(tied, {**SPEED, "legendre_deg3": fast})[0] == "inconclusive"


def test_claim2_jacobi_gegenbauer():
    """Against Chebyshev-2 at their own degree (3), in accuracy and in the same-degree time ratio."""
    slow = {"ratio": 1.0, "lo": 0.98, "hi": 1.02, "vs_same_degree": {"ratio": 1.2, "lo": 1.15, "hi": 1.25}}
    same = {"ratio": 1.2, "lo": 1.15, "hi": 1.25, "vs_same_degree": {"ratio": 1.0, "lo": 0.98, "hi": 1.02}}
    base = dict(kan_chebyshev2=[0.95, 0.95, 0.95], kan_chebyshev2_deg3=[0.80, 0.81, 0.80])
    more = G(**base, kan_jacobi_deg3=[0.85, 0.86, 0.85], kan_gegenbauer_deg3=[0.85, 0.85, 0.86])
    assert report.claim_jacobi_gegenbauer(more, {"jacobi_deg3": slow, "gegenbauer_deg3": slow})[0] == "confirmed"
    assert report.claim_jacobi_gegenbauer(more, {"jacobi_deg3": same, "gegenbauer_deg3": slow})[0] == "refuted"
    assert report.claim_jacobi_gegenbauer(more, {"jacobi_deg3": slow})[0] == "inconclusive"
    less = G(**base, kan_jacobi_deg3=[0.70, 0.71, 0.70], kan_gegenbauer_deg3=[0.85, 0.85, 0.86])
    assert report.claim_jacobi_gegenbauer(less, {"jacobi_deg3": slow, "gegenbauer_deg3": slow})[0] == "refuted"


@pytest.mark.parametrize("kan,verdict", [([0.800, 0.810, 0.805, 0.800, 0.810], "confirmed"),
                                         ([0.60, 0.61, 0.60, 0.61, 0.60], "refuted"),
                                         ([0.95, 0.96, 0.95, 0.96, 0.95], "refuted"),
                                         ([0.80, 0.70, 0.90, 0.75, 0.85], "inconclusive")])
def test_claim3_close_to_linear_is_two_sided(kan, verdict):
    g = G(linear=[0.800, 0.810, 0.805, 0.800, 0.810], kan_chebyshev2=kan)
    assert report.claim_close_to_linear(g, {})[0] == verdict


def test_claim4_adds_little_cannot_hide_a_loss():
    lin = [0.80, 0.81, 0.80, 0.81, 0.80]
    little = G(linear=lin, kan_chebyshev2_parallel=lin, kan_chebyshev2_sequential=lin)
    assert report.claim_parallel_sequential(little, {})[0] == "confirmed"
    loss = G(linear=lin, kan_chebyshev2_parallel=[0.60] * 5, kan_chebyshev2_sequential=lin)
    verdict, text = report.claim_parallel_sequential(loss, {})
    assert verdict == "refuted" and "costs accuracy" in text
    gain = G(linear=lin, kan_chebyshev2_parallel=lin, kan_chebyshev2_sequential=[0.90] * 5)
    assert report.claim_parallel_sequential(gain, {})[0] == "refuted"


def test_claim5_fp16_refuted_by_any_nonfinite_or_chance_run():
    base = [0.80, 0.81, 0.80, 0.81, 0.80]
    ok = G(kan_chebyshev2=base, kan_chebyshev2_fp16=base)
    assert report.claim_fp16(ok, {})[0] == "confirmed"
    broken = dict(ok, kan_chebyshev2_fp16=arm("kan_chebyshev2_fp16", base[:4]) +
                  [run("kan_chebyshev2_fp16", 4, 0.80, nonfinite=True)])
    assert report.claim_fp16(broken, {})[0] == "refuted"
    chance = dict(ok, kan_chebyshev2_fp16=arm("kan_chebyshev2_fp16", base[:4] + [0.25]))
    assert report.claim_fp16(chance, {})[0] == "refuted"


def test_claim6_no_silu():
    base = [0.80, 0.81, 0.80, 0.81, 0.80]
    assert report.claim_no_silu(G(linear=base, kan_chebyshev2=base, kan_chebyshev2_nosilu=base), {})[0] == "confirmed"
    low = G(linear=base, kan_chebyshev2=base, kan_chebyshev2_nosilu=[0.70, 0.71, 0.70, 0.71, 0.70])
    assert report.claim_no_silu(low, {})[0] == "refuted"


def _tune(arm_name, by_lr):
    return {f"{arm_name}_lr{lr:g}": arm(f"{arm_name}_lr{lr:g}", accs, lr=lr) for lr, accs in by_lr.items()}


def test_claim7_less_tuning():
    flat = {3e-4: [0.805, 0.815, 0.805], 1e-3: [0.81, 0.82, 0.81], 3e-3: [0.81, 0.8175, 0.81]}
    peaked = {3e-4: [0.60, 0.61, 0.60], 1e-3: [0.70, 0.71, 0.70], 3e-3: [0.82, 0.83, 0.82]}
    robust_kan = {**_tune("linear", peaked), **_tune("kan_chebyshev2", flat)}
    assert report.claim_less_tuning(robust_kan)[0] == "confirmed"
    fragile_kan = {**_tune("linear", flat), **_tune("kan_chebyshev2", peaked)}
    assert report.claim_less_tuning(fragile_kan)[0] == "refuted"
    assert report.claim_less_tuning({})[0] == "inconclusive"


def test_claim8_fewer_parameters():
    base = [0.80, 0.81, 0.80]
    assert report.claim_fewer_params(G(linear=base, kan_chebyshev2=base, kan_chebyshev2_half=base), {})[0] == "confirmed"
    assert report.claim_fewer_params(G(linear=base, kan_chebyshev2=base,
                                       kan_chebyshev2_half=[0.7, 0.71, 0.7]), {})[0] == "refuted"


def test_report_writes_every_claim_and_lists_what_is_missing(tmp_path):
    recs = tmp_path / "records"
    (recs / "study").mkdir(parents=True)
    for r in arm("linear", [0.8, 0.81, 0.79]) + arm("kan_chebyshev2", [0.7, 0.72, 0.71]):
        (recs / "study" / f"{r['name']}__seed{r['seed']}.json").write_text(json.dumps(r))
    text = report.write_report(recs, tmp_path, quick=True).read_text()
    assert text.count("\n### ") == 9  # eight claims + how the setting differs from the original
    assert "### 3. A parameter-matched KAN everywhere comes close to linear (linear slightly better): **refuted**" in text
    assert "not yet measured" in text and "kan_jacobi_deg3" in text
    assert (tmp_path / "agnews_quick_curves.png").stat().st_size > 1000


def _flat(runs):
    """Validation curves that have stopped rising (the last quarter gains nothing)."""
    return [{**r, "val_curve": [[s, r["test_accuracy"], 0.5] for s in (10, 20, 30, 40)]} for r in runs]


def test_interim_report_says_how_far_the_study_is_and_whether_linear_converged():
    plan = report.planned_seeds(quick=False)
    partial = G(linear=[0.8, 0.81, 0.79], kan_chebyshev2=[0.7])
    P = report.progress(partial)
    assert (P["done"], P["planned"]) == (4, sum(plan.values()))
    assert ("linear", 3, plan["linear"]) in P["short"] and ("kan_chebyshev2", 1, plan["kan_chebyshev2"]) in P["short"]
    assert f"4 of {P['planned']} planned study runs" in report.progress_line(P)
    counts = {"inconclusive": 8}
    text = report.summary_sentence(partial, [], counts, P)
    # The made-up curves rise 30 points from step 10 to 20: not converged, and the summary says so.
    assert text.startswith("**Interim summary**") and "has NOT converged" in text and "(one seed)" in text
    full = {a: _flat(arm(a, [0.8] * k)) for a, k in plan.items()}
    P = report.progress(full)
    assert P["done"] == P["planned"] and not P["short"] and "all" in report.progress_line(P)
    text = report.summary_sentence(full, [], counts, P)
    assert text.startswith("**Summary:**") and "where linear has converged (+0.0 pt" in text and "seed std 0.0" in text
    # A seed beyond the plan (or a repeated one) does not count twice.
    extra = {**full, "linear": full["linear"] + _flat([run("linear", plan["linear"], 0.8)])}
    assert report.progress(extra)["done"] == P["planned"]


def test_the_figure_caption_says_how_its_replay_compares_with_the_record(tmp_path):
    path = tmp_path / "study__kan_chebyshev2__seed0.json"
    assert report.replay_note(path) == ""  # drawn from the run itself: nothing to say
    r = {"name": "kan_chebyshev2", "seed": 0, "identical": True, "test_accuracy": 0.846, "record_test_accuracy": 0.846,
         "same_outcome_fraction": 1.0, "machine": {"cpu": "A"}, "record_machine": {"cpu": "A"}}
    path.write_text(json.dumps(r))
    assert "classifies every test text as the record does" in report.replay_note(path)
    path.write_text(json.dumps({**r, "identical": False, "test_accuracy": 0.8441, "same_outcome_fraction": 0.971,
                                "record_machine": None}))
    note = report.replay_note(path)
    assert "is not bitwise the recorded run" in note and "84.41% against 84.60%" in note and "97.1%" in note
    assert "an unrecorded machine" in note


def test_readme_headline_is_the_reports_summary_and_verdicts_and_nothing_else_changes(tmp_path):
    recs = tmp_path / "records"
    (recs / "study").mkdir(parents=True)
    for r in arm("linear", [0.8, 0.81, 0.79]) + arm("kan_chebyshev2", [0.7, 0.72, 0.71]):
        (recs / "study" / f"{r['name']}__seed{r['seed']}.json").write_text(json.dumps(r))
    readme = tmp_path / "README.md"
    before, after = "# title\n\nintro\n\n", "\n\n## Quickstart\n\nrest\n"
    readme.write_text(f"{before}{report.HEADLINE_BEGIN}\nan old headline\n{report.HEADLINE_END}{after}")
    md = report.write_report(recs, tmp_path, readme=readme).read_text()
    text = readme.read_text()
    assert text.startswith(before + report.HEADLINE_BEGIN + "\n") and text.endswith(report.HEADLINE_END + after)
    assert "an old headline" not in text
    summary = next(line for line in md.splitlines() if "summary" in line.lower() and line.startswith("**"))
    assert summary in text
    claims = [line[4:].split(": **") for line in md.splitlines() if line.startswith("### ") and ": **" in line]
    assert len(claims) == 8
    for title, verdict in claims:
        assert f"| {title} | **{verdict.rstrip('*')}** |" in text
    report.write_report(recs, tmp_path, readme=readme)
    assert readme.read_text() == text  # rerunning changes nothing

    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match=f"{readme}.*agnews-headline"):
        report.write_report(recs, tmp_path, readme=readme)
    assert readme.read_text() == "# no markers\n"
