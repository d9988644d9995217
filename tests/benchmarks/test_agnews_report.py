"""benchmarks/studies/agnews/report.py on made-up records: every claim written, what is missing listed, the interim
summary, the figure caption and README's headline."""

import json

import pytest

from benchmarks.studies.agnews import report
from tests.helpers.agnews_records import G, arm, run


def test_report_writes_every_claim_and_lists_what_is_missing(tmp_path):
    recs = tmp_path / "records"
    (recs / "study").mkdir(parents=True)
    for r in arm("linear", [0.8, 0.81, 0.79]) + arm("kan_chebyshev2", [0.7, 0.72, 0.71]) + arm("kan_rbf", [0.25, 0.26]):
        (recs / "study" / f"{r['name']}__seed{r['seed']}.json").write_text(json.dumps(r))
    text = report.write_report(recs, tmp_path, quick=True).read_text()
    # An arm whose every run ends at chance has no mean: its row says so, and the runs are listed apart.
    rbf_row = next(line for line in text.splitlines() if line.startswith("| kan_rbf |"))
    assert "– (every run at chance)" in rbf_row and "nan" not in rbf_row
    assert "Runs at chance (2): kan_rbf seed 0 (25.0%), kan_rbf seed 1 (26.0%)." in text
    assert "2 of 8 runs ended at chance and are listed apart: kan_rbf 2 of 2." in text.split("\n## ")[0]
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
    assert text.endswith("No run ended at chance (of 4).")
    full = {a: _flat(arm(a, [0.8] * k)) for a, k in plan.items()}
    P = report.progress(full)
    assert P["done"] == P["planned"] and not P["short"] and "all" in report.progress_line(P)
    text = report.summary_sentence(full, [], counts, P)
    assert text.startswith("**Summary:**") and "where linear has converged (+0.0 pt" in text and "seed std 0.0" in text
    # With the learning-rate grid's records: the grid's claim-7 seeds still missing keep the summary interim.
    tune_plan = report.planned_seeds(quick=False, phase="tune")
    T = {a: arm(a, [0.8] * 3) for a in tune_plan}
    PT = report.progress(full, T=T)
    assert PT["planned"] == P["planned"] + sum(tune_plan.values()) and PT["done"] == P["done"] + 3 * len(tune_plan)
    assert {(n, d) for n, d, _ in PT["short"]} == {(n, 3) for n in tune_plan}
    assert "learning-rate grid" in report.progress_line(PT)
    assert report.summary_sentence(full, [], counts, PT).startswith("**Interim summary**")
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


def test_runs_from_two_kinds_of_machine_are_named_per_seed_and_step_times_stay_on_one():
    from benchmarks.studies.agnews import claims as agnews_claims

    assert report.machines_note(G(linear=[0.8, 0.81], kan_chebyshev2=[0.7, 0.72])) == ""  # one machine: nothing
    gpu = {"device": "NVIDIA H200", "matmul_precision": "highest", "step_seconds_median": 0.01}
    mixed = G(linear=[0.8, 0.81, 0.79, 0.8], kan_chebyshev2=[0.7, 0.72, 0.71])
    mixed["linear"][3].update(gpu)  # linear seed 3 and kan seeds 1-2 trained on an accelerator
    for r in mixed["kan_chebyshev2"][1:]:
        r.update(gpu)
    note = report.machines_note(mixed)
    assert "`NVIDIA H200`, `cpu`" in note and "NVIDIA H200 highest, cpu default" in note
    assert "kan_chebyshev2: NVIDIA H200 seed(s) 1, 2; cpu seed(s) 0" in note
    assert "linear: NVIDIA H200 seed(s) 3; cpu seed(s) 0, 1, 2" in note
    # The accelerator's 0.01 s steps never stand for an arm whose seed 0 trained on the CPU.
    assert agnews_claims.arm_stats(mixed["linear"])["step_s"] == 0.5
    assert agnews_claims.arm_stats(mixed["kan_chebyshev2"])["step_s"] == 0.5
