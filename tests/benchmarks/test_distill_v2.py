"""Distillation v2 (issue #42): its verdict rules on made-up records (each outcome reachable, the
arm chosen on validation, a missing part never reads as met), the diagnosis statistics against a
direct computation, the end-to-end fine-tune units (plan, lr choice, resumption, report section, the
exact starts on a tiny model), and (slow) the --v2 --quick run end to end on the real GGUF."""

import json
import math
import re

import numpy as np
import pytest

from benchmarks.studies.distill import diagnose, report_v2, rules_v2, study, units
from benchmarks.studies.distill import plan as plan_lib

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
            *(fit("kan_recipe", k, 0.60, 0.58) for k in LAYERS),
            *(fit("gr_warm_exact", k, 0.01, 0.01) for k in LAYERS)]  # a warm start is never "re-learned"
    folder = tmp_path / "records"
    folder.mkdir()
    for r in recs:
        (folder / f"{r['unit']}.json").write_text(json.dumps(r))
    text = report_v2.write_report(folder, tmp_path, v1_records=tmp_path / "none").read_text()
    assert "Best re-learned KAN arm (lowest mean validation error over the blocks): **kan_recipe_none**" in text
    assert "Target: **missed**" in text and "+0.120" in text
    assert "No diagnosis records yet" in text and "Warm start fine-tuned vs linear fine-tuned: not measured yet" in text
    assert "## End to end at equal budget" in text and "Not measured yet (`--v2 --finetune_steps N`" in text


STARTS = ["pretrained", "kan_recipe", "gr_warm", "gr_warm_exact", "kan_exact"]


def test_v2_finetune_units_start_from_the_pretrained_best_relearned_and_warm_mlps(tmp_path):
    args = study.parse_args(["--v2", "--finetune_steps", "5", "--arms", "linear,kan_recipe,kan_recipe_base,gr_warm",
                             "--records", str(tmp_path)])
    s = plan_lib.settings(args)
    layers = list(plan_lib.LAYERS)
    before = [u for u in plan_lib.plan(args, s) if u.startswith("finetune__")]  # rule 1 cannot choose yet
    assert before == [f"finetune__{a}" for a in STARTS if a != "kan_recipe"]
    write_records(tmp_path, [*(fit(a, k, val, 0.5) for k in layers for a, val in (("linear", 0.3), ("kan_recipe", 0.4),
                                                                                ("kan_recipe_base", 0.45)))])
    todo = plan_lib.plan(args, s)  # the best re-learned arm only: the others' splices are not fine-tuned
    assert [u for u in todo if u.startswith("finetune__")] == [f"finetune__{a}" for a in STARTS]
    assert plan_lib.models(args, s)[-len(STARTS):] == [f"{a}_ft" for a in STARTS]
    assert s["finetune_lrs"] == plan_lib.FINETUNE_LRS
    for start in STARTS:  # judged on perplexity, KL and the multiple-choice sets, not BBH
        assert {f"insitu__{start}_ft", f"eval_ppl__{start}_ft", f"eval_mc__{start}_ft"} <= set(todo)
        assert f"eval_bbh__{start}_ft" not in todo
    assert "eval_bbh__gr_warm" in todo and "fit__gr_warm__L29" in todo and "fit__kan_exact__L29" not in todo
    assert todo.index("fit__kan_recipe__L29") < todo.index("finetune__pretrained") < todo.index("insitu__linear")
    grid = study.parse_args(["--v2", "--finetune_steps", "5", "--finetune_lrs", "1e-4,1e-3"])
    assert plan_lib.settings(grid)["finetune_lrs"] == (1e-4, 1e-3)
    assert plan_lib.settings(study.parse_args(["--v2", "--quick"]))["finetune_lrs"] == plan_lib.QUICK["finetune_lrs"]
    assert "finetune_lrs" not in plan_lib.settings(study.parse_args(["--quick"]))  # v1 keeps its settings
    # `--v2` alone plans the committed records' end-to-end budget; v1 fine-tunes only when asked
    assert plan_lib.settings(study.parse_args(["--v2"]))["finetune_steps"] == plan_lib.V2["finetune_steps"] == 100
    assert plan_lib.settings(study.parse_args([]))["finetune_steps"] == 0
    exact = plan_lib.arm_spec("kan_exact")
    assert (exact.domain, exact.init, exact.param_match, exact.basis, exact.degree) == (
        "none", "from_linear", "none", "chebyshev2", 2)
    assert plan_lib.arm_spec("pretrained") is None


def test_finetune_lr_is_the_lowest_validation_loss_of_the_grid():
    grid = (3e-5, 1e-4, 3e-4, 1e-3)
    lrs = {"0.0001": {"val_loss": 3.1}, "0.0003": {"val_loss": 2.9}, "0.001": {"val_loss": None},  # diverged
           "0.01": {"val_loss": 1.0}}  # not in the grid; 3e-05 has no entry
    assert rules_v2.best_finetune_lr(lrs, grid) == 3e-4
    lrs["0.0003"]["val_loss"] = float("nan")
    assert rules_v2.best_finetune_lr(lrs, grid) == 1e-4
    assert rules_v2.best_finetune_lr({"0.01": {"val_loss": 1.0}}, grid) is None


def finetune_record(start, budget, lrs=(1e-4, 1e-3), best=1e-4, extra=0):
    return {"unit": f"finetune__{start}", "kind": "finetune", "start": start, "layers": LAYERS, "params": 1000 + extra,
            "pretrained_params": 1000, "extra_params": extra, "budget": budget, "grid": list(lrs), "seq_len": 16,
            "train_windows": 28, "val_windows": 2, "val_loss_start": 3.0, "best_lr": best,
            "lrs": {f"{lr:g}": {"val_loss": 2.5 if lr == best else 2.8, "train_loss": [3.0, 2.6]} for lr in lrs}}


def write_records(folder, recs):
    folder.mkdir(exist_ok=True)
    for r in recs:
        (folder / f"{r['unit']}.json").write_text(json.dumps(r))
    return folder


def test_a_wider_finetune_grid_redoes_the_unit_and_refuses_stale_judgements(tmp_path):
    base = ["--v2", "--finetune_steps", "5", "--arms", "linear", "--records", str(tmp_path / "records"),
            "--workdir", str(tmp_path / "work")]
    args = study.parse_args(base + ["--finetune_lrs", "1e-4,1e-3"])
    s = plan_lib.settings(args)
    budget = plan_lib.finetune_budget(args, s)
    folder = write_records(tmp_path / "records", [finetune_record("pretrained", budget), ppl_record("pretrained_ft", 3.0),
                                                  finetune_record("gr_warm", budget)])
    assert "finetune__pretrained" not in plan_lib.pending(args, s)
    wider = study.parse_args(base + ["--finetune_lrs", "1e-4,1e-3,3e-4"])
    assert plan_lib.missing_finetune_lrs(wider, plan_lib.settings(wider), "finetune__pretrained") == [3e-4]
    with pytest.raises(SystemExit, match="eval_ppl__pretrained_ft") as err:
        plan_lib.pending(wider, plan_lib.settings(wider))
    assert "fine-tunes of gr_warm, pretrained" in str(err.value)
    (folder / "eval_ppl__pretrained_ft.json").unlink()
    assert "finetune__pretrained" in plan_lib.pending(wider, plan_lib.settings(wider))
    longer = study.parse_args(base + ["--finetune_lrs", "1e-4,1e-3", "--finetune_steps", "6"])  # another budget
    assert plan_lib.missing_finetune_lrs(longer, plan_lib.settings(longer), "finetune__gr_warm") == [1e-4, 1e-3]


def ppl_windows(model, nll):
    return {"unit": f"eval_ppl__{model}", "kind": "eval_ppl", "model": model,
            "wikitext": {"nll": list(nll), "tokens": [16] * len(nll)},
            "mt_bench": {"nll": [20.0, 25.0], "tokens": [10, 12], "v1_heldout": [True, False]}}


def test_report_end_to_end_section_gives_rule_3_per_warm_start(tmp_path):
    budget = {"steps": 5, "batch_windows": 4, "seed": 0, "warmup": 1}
    base = np.array([30.0 + i for i in range(8)])
    recs = [*(fit("linear", k, 0.5, 0.50) for k in LAYERS), *(fit("kan_recipe", k, 0.6, 0.6) for k in LAYERS),
            finetune_record("pretrained", budget), finetune_record("gr_warm", budget, extra=96),
            finetune_record("kan_exact", budget, best=1e-3, extra=2000), finetune_record("linear", budget),
            ppl_windows("pretrained_ft", base), ppl_windows("gr_warm_ft", base - 0.2),  # 1.2% lower perplexity
            ppl_windows("kan_exact_ft", base + 2.0),  # 13% higher on every window
            ppl_windows("linear_ft", base + RNG_STEPS)]  # +/- on alternate windows: an interval across the margin
    mc = {t: "10" * 10 for t in ("arc_easy", "arc_challenge", "openbook_qa", "copa", "winogrande")}
    for model in ("pretrained_ft", "gr_warm_ft"):
        recs.append({"unit": f"eval_mc__{model}", "kind": "eval_mc", "model": model,
                     "tasks": {t: {"correct": b, "correct_norm": b} for t, b in mc.items()}})
        recs.append({"unit": f"insitu__{model}", "kind": "insitu", "model": model, "kl": [0.1, 0.3, 0.2],
                     "tokens": [16] * 3, "top1": [10] * 3, "blocks": {}})
    folder = write_records(tmp_path / "records", recs)
    text = report_v2.write_report(folder, tmp_path, v1_records=tmp_path / "none").read_text()
    section = text.split("## End to end at equal budget")[1].split("## Verdicts")[0]
    assert "5 AdamW steps of 4 windows × 16 tokens" in section and "at each lr of 0.0001, 0.001" in section
    rows = {line.split(" |")[0][2:]: line for line in section.splitlines() if line.startswith("| `")}
    assert list(rows) == ["`pretrained` (comparator)", "`kan_recipe` (best re-learned KAN arm)", "`gr_warm`",
                          "`gr_warm_exact`", "`kan_exact`", "`linear`"]  # a start's record beyond the plan: last
    assert "| 1,096 | +96 (+9.6%) | 0.0001 (grid edge) | 3.0000 → 2.5000 |" in rows["`gr_warm`"]
    assert "| 0.001 (grid edge) |" in rows["`kan_exact`"]  # either end of the grid is named
    assert "| -1.2% [-1.2, -1.2] |" in rows["`gr_warm`"] and "+0.0 [+0.0, +0.0]" in rows["`gr_warm`"]  # MC: the same answers
    assert "**matches or beats** |" in rows["`gr_warm`"] and "**does not match** |" in rows["`kan_exact`"]
    assert rows["`gr_warm_exact`"].count("not measured yet") == 9 and "**not" not in rows["`gr_warm_exact`"]
    assert "**inconclusive**" not in rows["`linear`"] and rows["`linear`"].endswith("| – |")  # no rule 3: not warm
    assert "0.0125, +0.0000 [+0.0000, +0.0000]" in rows["`gr_warm`"]  # KL, paired with pretrained_ft's
    verdicts = text.split("## Verdicts")[1]
    assert "(-1.2% [-1.2, -1.2]: better than the linear fine-tune)" in verdicts
    assert ("Warm start fine-tuned vs linear fine-tuned: `gr_warm` **matches or beats** (-1.2% [" in verdicts
            and "`gr_warm_exact` not measured yet" in verdicts and "`kan_exact` **does not match** (+13.3%" in verdicts)
    rule_3 = report_v2.warm_start_verdicts(report_v2.load(folder))
    assert rule_3["gr_warm_exact"] == ("not measured yet", None, None, None)
    lo, hi = report_v2.ppl_ratio_ci(report_v2.load(folder), "linear_ft", "pretrained_ft")[1:]
    assert lo < rules_v2.PPL_TARGET < hi  # the linear start's interval crosses the margin: rule 3 would not decide


RNG_STEPS = np.array([4.0, -4.0] * 4)


@pytest.mark.parametrize("arm", ["kan_exact", "gr_warm_exact"])
def test_exact_starts_reproduce_the_model_and_say_their_extra_parameters(arm):
    """On a tiny Llama with O(1) MLP weights: the exact warm starts' logits equal the model's."""
    import jax.numpy as jnp
    from flax import nnx

    from benchmarks.studies.distill import fit as distill
    from kanjax.kan.layer import count_params
    from kanjax.llama.model import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rope_theta=10000.0)
    model = LlamaForCausalLM(config, rngs=nnx.Rngs(0))
    for layer in model.model.layers:
        for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
            proj.kernel[...] = proj.kernel[...] * 10
    spec = plan_lib.arm_spec(arm)
    mlps = units.warm_mlps(model, spec, (2, 3))
    start = distill.splice(model, mlps, spec)
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 96, (2, 16)), jnp.int32)
    ref, new = model(ids), start(ids)
    gap = float(jnp.max(jnp.abs(new - ref)))
    assert gap < 1e-4 * float(jnp.max(jnp.abs(ref))), gap
    linear = count_params(model.model.layers[2].mlp)
    extra = count_params(mlps[2]) - linear
    # kan_exact: 2 coefficients per edge at full width (centred degree 2: columns in x and x², the constant
    # drops out), twice the linear block; gr_warm_exact: the rational's coefficients only
    assert extra == linear if arm == "kan_exact" else 0 < extra < 0.05 * linear


@pytest.mark.slow
def test_v2_quick_run_records_the_diagnosis_fits_and_error_maps(tmp_path, shared_data, smollm2_gguf):
    records = tmp_path / "records"
    arms = ("linear", "kan_recipe_none", "gr_kan", "gr_warm")  # one of each code path (the other recipe arms: specs)
    only = ("^(record|diagnose|fit|seedfit|errmap|finetune|alone)__"
            "|^(insitu|eval_ppl)__(pretrained|kan_exact)_ft$")  # two judged fine-tunes: rule 3's pair
    argv = ["--v2", "--quick", "--arms", ",".join(arms), "--records", str(records), "--workdir", str(tmp_path / "work"),
            "--data_dir", str(shared_data)]
    study.main(argv + ["--only", only])
    done = {p.stem for p in records.glob("*.json")}
    assert {"record", "diagnose__L4", "diagnose__L5", "errmap__linear", "errmap__gr_warm"} <= done
    assert {f"fit__{a}__L{k}" for a in arms for k in (4, 5)} <= done
    assert {"eval_ppl__kan_exact_ft", "eval_ppl__pretrained_ft", "insitu__kan_exact_ft"} <= done
    best_arm = rules_v2.best_kan_arm(report_v2.load(records), ["kan_recipe_none", "gr_kan"], [4, 5])
    starts = ("pretrained", best_arm, "gr_warm", "gr_warm_exact", "kan_exact")  # the re-learned start: rule 1's
    assert {p.stem for p in records.glob("finetune__*.json")} == {f"finetune__{a}" for a in starts}
    ft = {s: json.loads((records / f"finetune__{s}.json").read_text()) for s in starts}
    for s, r in ft.items():  # QUICK's 2-lr grid, each lr's curve and validation loss, the kept lr's MLPs on disk
        assert r["grid"] == list(plan_lib.QUICK["finetune_lrs"]) and set(r["lrs"]) == {"0.0001", "0.001"}
        assert r["best_lr"] == rules_v2.best_finetune_lr(r["lrs"], r["grid"]) and r["budget"]["steps"] == 2
        assert all(len(e["train_loss"]) == 2 and e["val_loss"] > 0 for e in r["lrs"].values())
        assert all(units.finetuned_file(study.parse_args(argv), s, k).is_file() for k in (4, 5))
    kept, other = (np.load(units.finetune_lr_files(study.parse_args(argv), "kan_exact", lr)[0])
                   for lr in sorted(plan_lib.QUICK["finetune_lrs"], key=lambda lr: lr != ft["kan_exact"]["best_lr"]))
    with np.load(units.finetuned_file(study.parse_args(argv), "kan_exact", 5)) as saved:
        assert sorted(saved) == sorted(k[3:] for k in kept if k.startswith("L5/"))
        assert all(np.array_equal(saved[k], kept[f"L5/{k}"]) for k in saved)  # the kept lr's MLPs, not another's
        assert not all(np.array_equal(saved[k], other[f"L5/{k}"]) for k in saved)
    # The exact starts reproduce the pretrained model (max |logit gap| over two val windows, float32 rounding);
    # gr_warm's SiLU fit does not; kan_exact doubles the MLP parameters, the rationals add a few.
    assert ft["pretrained"]["start_logits_max_abs_diff"] == 0.0 and ft["pretrained"]["extra_params"] == 0
    for s in ("gr_warm_exact", "kan_exact"):
        assert ft[s]["start_logits_max_abs_diff"] < 2e-4, ft[s]["start_logits_max_abs_diff"]  # measured 3e-5, 4e-5
        assert ft[s]["val_loss_start"] == pytest.approx(ft["pretrained"]["val_loss_start"], abs=1e-4)
    assert ft["gr_warm"]["start_logits_max_abs_diff"] > plan_lib.EXACT_LOGIT_TOL  # measured 7e-2
    assert ft["kan_exact"]["extra_params"] == ft["kan_exact"]["pretrained_params"]
    assert 0 < ft["gr_warm_exact"]["extra_params"] < 1e-3 * ft["gr_warm_exact"]["pretrained_params"]
    print("start logit gaps:", {s: r["start_logits_max_abs_diff"] for s, r in ft.items()},
          "fine-tune seconds per step (after the first):",
          {s: [e["step_seconds"] for e in r["lrs"].values()] for s, r in ft.items()})
    # A rerun keeps the lrs on disk: the unit redone from its per-lr files gives the same record.
    (records / "finetune__pretrained.json").unlink()
    study.main(argv + ["--only", "^finetune__pretrained$"])
    again = json.loads((records / "finetune__pretrained.json").read_text())
    assert again["lrs"] == ft["pretrained"]["lrs"] and again["best_lr"] == ft["pretrained"]["best_lr"]
    # The second seeds: linear and rule 1's choice, planned once the first pass fitted every block
    for a in ("linear", best_arm):
        for k in (4, 5):
            first, second = (json.loads((records / f"{u}__{a}__L{k}.json").read_text()) for u in ("fit", "seedfit"))
            assert second["seed"] == 1 and second["best_lr"] == first["best_lr"] and list(second["lrs"]) == [
                f"{first['best_lr']:g}"]
            assert second["lrs"][f"{first['best_lr']:g}"]["test"]["rel_err"] != first["lrs"][
                f"{first['best_lr']:g}"]["test"]["rel_err"]  # another draw, another fit
    # Block 4 spliced alone: its MLP's inputs are the recorded ones (the first studied block), so its in-situ
    # error is the fit's test error, on the same windows; block 5's alone is its own splice, not block 4's.
    for a in ("linear", best_arm):
        alone, first_fit = (json.loads((records / f"{u}__{a}__L4.json").read_text()) for u in ("alone", "fit"))
        test = first_fit["lrs"][f"{first_fit['best_lr']:g}"]["test"]
        assert alone["block"]["mlp_err2"] == pytest.approx(test["err2"], rel=1e-3)
        assert sum(alone["kl"]) > 0 and len(alone["kl"]) == len(test["err2"])
        later = json.loads((records / f"alone__{a}__L5.json").read_text())
        assert later["layer"] == 5 and later["kl"] != alone["kl"]
    fit_rec = json.loads((records / "fit__kan_recipe_none__L4.json").read_text())
    assert fit_rec["spec"]["domain"] == "none" and fit_rec["fit"]["steps"] == 20  # --quick's budget wins
    # The warm start begins at the pretrained block (its SiLU fit aside): far below a fresh block's error.
    warm, fresh = (json.loads((records / f"fit__{a}__L4.json").read_text())["start"] for a in ("gr_warm", "linear"))
    assert warm < 0.1 < fresh
    text = (tmp_path / "full_model_distill_v2.md").read_text()
    assert "## Diagnosis" in text and "| 4 |" in text and "Best re-learned KAN arm" in text
    assert f"| {best_arm}: seed 0 / seed 1 |" in text
    assert "| `pretrained` (comparator) | " in text and "2 AdamW steps of 4 windows × 64 tokens" in text
    assert re.search(r"`kan_exact` \*\*(matches or beats|does not match|inconclusive)\*\*", text)


def test_fit_table_lists_a_block_once_any_arm_has_it():
    """An arm fitted on fewer blocks than another leaves "–" cells, never hides the other arms' blocks."""
    from benchmarks.studies.distill.tables import fit_table

    R = records(*(fit("linear", k, 0.5, 0.50) for k in LAYERS), fit("kan_recipe", LAYERS[-1], 0.6, 0.60))
    text, diffs = fit_table(R, ["linear", "kan_recipe"])
    rows = [line for line in text.splitlines()[2:]]
    assert [r.split(" | ")[0] for r in rows] == [f"| {k}" for k in LAYERS]
    assert rows[0].endswith("| – | – |") and "+0.100" in rows[-1]
    assert diffs == {"kan_recipe": {LAYERS[-1]: pytest.approx((0.1, 0.1, 0.1))}}


def test_gap_location_weighs_each_part_by_its_squared_error():
    """A first token with ~0% of the output energy cannot carry the gap, however large its relative
    error: the squared-error shares decide (relative errors only when the energies are unknown)."""
    errmap = lambda first, rest: {"blocks": {"4": {"rel_err_first": first, "rel_err_rest": rest}}}  # noqa: E731
    maps = {"kan": errmap(0.80, 0.55), "lin": errmap(0.66, 0.48)}  # larger relative gap on first tokens
    ft = lambda first_err2, rest_err2: {"blocks": {"4": {"err2": [first_err2 + rest_err2], "y2": [10.0],  # noqa: E731
                                                         "first_err2": [first_err2], "first_y2": [0.01]}}}
    tokens = {"kan": ft(0.0064, 3.0), "lin": ft(0.0044, 2.3)}  # but the first tokens hold 0.1% of ‖y‖²
    loc = rules_v2.gap_location(maps, "kan", "lin", 4, tokens)
    assert loc["share_first"] == pytest.approx(0.002 / 0.702)
    assert not rules_v2.gap_sits_on_first_tokens(loc)
    assert rules_v2.gap_sits_on_first_tokens(rules_v2.gap_location(maps, "kan", "lin", 4))  # no energies
    sink = {"kan": ft(5.0, 0.1), "lin": ft(0.1, 0.1)}
    assert rules_v2.gap_sits_on_first_tokens(rules_v2.gap_location(maps, "kan", "lin", 4, sink))


def test_train_fit_text_tells_fitting_from_generalisation():
    worse = fit("kan", 4, 0.6, 0.6)
    worse["lrs"]["0.01"]["train_mse"] = [1.0, 0.8]
    R = records(fit("linear", 4, 0.5, 0.5), worse)  # linear ends at 0.5
    assert "gap is fitting at this budget" in report_v2.train_fit_text(R, "kan", 4)
    worse["lrs"]["0.01"]["train_mse"] = [1.0, 0.4]
    assert "gap is generalisation" in report_v2.train_fit_text(R, "kan", 4)
    assert report_v2.train_fit_text(R, "kan", 5) == ""


def test_spliced_section_pairs_each_kan_splice_with_the_linear_one():
    def insitu(model, kl):
        block = {"mlp_err2": [1.0] * 3, "y2": [4.0] * 3, "h_err2": [1.0] * 3, "h2": [100.0] * 3}
        return {"unit": f"insitu__{model}", "kind": "insitu", "model": model, "blocks": {str(k): block for k in LAYERS},
                "kl": [kl * 100] * 3, "top1": [90] * 3, "tokens": [100] * 3}
    R = records(*(fit(a, k, 0.5, 0.5) for a in ("linear", "kan_recipe_base") for k in LAYERS),
                insitu("linear", 0.2), insitu("kan_recipe_base", 0.3), ppl_record("linear", 3.0),
                ppl_record("kan_recipe_base", 3.1), ppl_record("reference", 2.9))
    text = report_v2.spliced_section(R, ["linear", "kan_recipe_base", "gr_warm"])
    row = next(line for line in text.splitlines() if line.startswith("| kan_recipe_base | 0.3"))
    assert "+0.1000 [+0.1000, +0.1000]" in row and f"{100 * (math.exp(0.1) - 1):+.1f}%" in row
    assert "gr_warm" not in text  # warm starts are judged end to end, not as splices
    assert report_v2.spliced_section({}, ["linear"]).startswith("_No spliced-model records yet")


def test_second_seeds_wait_for_rule_1_and_then_refit_linear_and_the_best_arm(tmp_path):
    args = study.parse_args(["--v2", "--arms", "linear,kan_recipe,kan_recipe_base,gr_warm", "--records",
                             str(tmp_path)])
    s = plan_lib.settings(args)
    layers = list(plan_lib.LAYERS)
    write_records(tmp_path, [*(fit("linear", k, 0.5, 0.5) for k in layers), *(fit("kan_recipe", k, 0.6, 0.5)
                                                                             for k in layers[:-1])])
    assert plan_lib.seed_arms(args, s) == ["linear"]  # kan_recipe lacks a block: no choice yet
    write_records(tmp_path, [fit("kan_recipe", layers[-1], 0.6, 0.5), *(fit("gr_warm", k, 0.1, 0.1) for k in layers)])
    assert plan_lib.seed_arms(args, s) == ["linear", "kan_recipe"]  # a warm arm is never rule 1's choice
    write_records(tmp_path, [*(fit("kan_recipe_base", k, 0.55, 0.9) for k in layers)])
    assert plan_lib.seed_arms(args, s) == ["linear", "kan_recipe_base"]  # chosen on validation, not test
    todo = plan_lib.plan(args, s)
    assert [u for u in todo if u.startswith("seedfit__")] == [f"seedfit__{a}__L{k}" for a in ("linear", "kan_recipe_base")
                                                             for k in layers]
    assert todo.index("fit__kan_recipe_base__L29") < todo.index("seedfit__linear__L25")
    # each block spliced alone, for the same two arms, after the all-block splices
    assert [u for u in todo if u.startswith("alone__")] == [f"alone__{a}__L{k}" for a in ("linear", "kan_recipe_base")
                                                           for k in layers]
    assert todo.index("insitu__kan_recipe_base") < todo.index("alone__linear__L25")
    assert plan_lib.seed_arms(study.parse_args(["--arms", "linear,kan"]), plan_lib.settings(
        study.parse_args(["--arms", "linear,kan"]))) == []  # v1 has no second seeds


def seedfit(arm, layer, test, seed=1):
    r = fit(arm, layer, 0.5, test)
    return {**r, "unit": f"seedfit__{arm}__L{layer}", "kind": "seedfit", "seed": seed}


def test_seed_section_pairs_each_seed_with_linear_and_averages_the_gaps():
    R = records(*(fit("linear", k, 0.5, 0.40) for k in LAYERS), *(fit("kan_recipe_base", k, 0.5, 0.50) for k in LAYERS))
    assert "Not measured yet" in report_v2.seed_section(R, LAYERS)
    R.update(records(*(seedfit("linear", k, 0.42) for k in LAYERS), seedfit("kan_recipe_base", 4, 0.45)))
    text = report_v2.seed_section(R, LAYERS)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| 4 ") or line.startswith("| 5 ")}
    assert "| 0.400 / 0.420 | 0.500 / 0.450 | +0.100 / +0.030 [+0.030, +0.030] | +0.065 |" in rows["| 4"]
    assert rows["| 5"].endswith("| 0.400 / 0.420 | – | – | – |")  # the KAN's second seed is missing there
    assert "seed 1" in text and "fit records" not in text


def test_a_warm_start_within_the_margin_but_worse_says_so(tmp_path):
    """Rule 3's "matches or beats" allows up to +5%: a warm start that is worse by less than that is named worse."""
    budget = {"steps": 5, "batch_windows": 4, "seed": 0, "warmup": 1}
    base = np.array([30.0 + i for i in range(8)])
    recs = [*(fit("linear", k, 0.5, 0.50) for k in LAYERS), finetune_record("pretrained", budget),
            finetune_record("kan_exact", budget), ppl_windows("pretrained_ft", base),
            ppl_windows("kan_exact_ft", base + 0.5)]  # +3.4% on every window
    folder = write_records(tmp_path / "records", recs)
    verdicts = report_v2.write_report(folder, tmp_path, v1_records=tmp_path / "none").read_text().split("## Verdicts")[1]
    assert re.search(r"`kan_exact` \*\*matches or beats\*\* \(\+3\.\d% \[\+3\.\d, \+3\.\d\]: worse than the linear "
                     r"fine-tune, by less than the margin\)", verdicts), verdicts


def curve_fit(arm, layer, mse):
    r = fit(arm, layer, 0.5, 0.5)
    r["lrs"]["0.01"]["train_mse"] = list(mse)
    return r


def test_train_gap_trend_reads_the_train_mse_ratio_through_the_fit():
    lin = [100.0, 8.0, 6.0, 5.0, 4.5, 4.0, 3.5, 3.0]
    R = records(curve_fit("linear", 4, lin), curve_fit("kan", 4, [y * (1 + i / 10) for i, y in enumerate(lin)]),
                curve_fit("linear", 5, lin), curve_fit("kan", 5, [y * (2 - i / 10) for i, y in enumerate(lin)]))
    ratios = rules_v2.train_mse_ratios(R, "kan", "linear", 4)
    assert ratios == pytest.approx([1 + i / 10 for i in range(8)])
    assert rules_v2.train_gap_trend(ratios) == "widening"  # 1.1 (a quarter), 1.3 (half), 1.7 (end)
    assert rules_v2.train_gap_trend(rules_v2.train_mse_ratios(R, "kan", "linear", 5)) == "closing"
    assert rules_v2.train_gap_trend([1.0, 1.3, 1.5, 1.2, 1.6, 1.4, 1.4, 1.4]) == "flat"  # 1.3, 1.2, 1.4
    text = report_v2.train_fit_text(R, "kan", 4)
    assert "at a quarter, half and all of the fit: 1.10, 1.30, 1.70: it widens" in text
    assert "a longer fit may close it" in report_v2.train_fit_text(R, "kan", 5)
    assert rules_v2.train_mse_ratios(R, "kan", "linear", 6) is None


def test_cause_text_names_a_cause_only_when_every_missed_block_shows_it():
    lin = [100.0, 8.0, 6.0, 5.0, 4.5, 4.0, 3.5, 3.0]
    errmap = {a: {"unit": f"errmap__{a}", "kind": "errmap", "arm": a,
                  "blocks": {str(k): {"rel_err_first": 0.1, "rel_err_rest": rest} for k in (4, 5)}}
              for a, rest in (("linear", 0.4), ("kan", 0.5))}
    R = records(curve_fit("linear", 4, lin), curve_fit("kan", 4, [y * (1 + i / 10) for i, y in enumerate(lin)]),
                curve_fit("linear", 5, lin), curve_fit("kan", 5, [y * (2 - i / 10) for i, y in enumerate(lin)]),
                *errmap.values())
    text = report_v2.cause_text(R, "kan", [4])
    assert text.startswith("- What stands in the way (blocks 4, measured above)") and "not a short fit" in text
    assert report_v2.cause_text(R, "kan", [4, 5]) == ""  # block 5's gap narrows: a longer fit may close it
    R["errmap__kan"]["blocks"]["4"] = {"rel_err_first": 0.9, "rel_err_rest": 0.4}  # the gap on the first tokens
    assert report_v2.cause_text(R, "kan", [4]) == "" and report_v2.cause_text(R, "kan", []) == ""


def test_the_narrow_glu_control_is_fitted_but_never_chosen_spliced_or_fine_tuned(tmp_path):
    args = study.parse_args(["--v2", "--finetune_steps", "5", "--arms", "linear,linear_w512,kan_recipe_base",
                             "--records", str(tmp_path)])
    s = plan_lib.settings(args)
    write_records(tmp_path, [fit(a, k, val, 0.5) for k in plan_lib.LAYERS
                             for a, val in (("linear", 0.5), ("linear_w512", 0.1), ("kan_recipe_base", 0.6))])
    todo = plan_lib.plan(args, s)
    assert "fit__linear_w512__L25" in todo and not any("linear_w512" in u for u in todo if not u.startswith("fit__"))
    assert plan_lib.best_relearned(args, s) == "kan_recipe_base"  # its lower validation error does not make it a KAN
    assert plan_lib.arm_spec("linear_w512") is None and "linear_w512" in plan_lib.V2["arms"]
    R = records(fit("linear", 4, 0.3, 0.30), fit("linear_w512", 4, 0.5, 0.50), fit("kan", 4, 0.4, 0.45))
    assert report_v2.width_text(R, "kan", [4]) == ""  # a KAN of another width than the control's: no reading
    R["fit__kan__L4"]["width"] = 512
    text = report_v2.width_text(R, "kan", [4, 5])  # block 5 has no records: left out
    assert "on blocks 4: test error 0.500 against linear's 0.300 and kan's 0.450" in text
    assert "win back 25% of what the narrower width costs." in text  # (0.50 - 0.45) / (0.50 - 0.30)
    R["fit__linear_w512__L4"]["lrs"]["0.001"] = {"val": {"rel_err": 0.6}}  # its kept 0.01 is now the grid's top
    assert "costs (on blocks 4 the control kept the grid's largest lr: a wider grid could only lower" in (
        report_v2.width_text(R, "kan", [4]))
    assert report_v2.width_text(R, "kan", [5]) == ""


def test_the_narrow_glu_control_has_the_narrow_width(tmp_path):
    from benchmarks.studies.distill import fit as distill
    from kanjax.llama.model import LlamaConfig

    class Rec:
        config = LlamaConfig(num_hidden_layers=2)

    args = study.parse_args(["--v2", "--arms", "linear_w512", "--records", str(tmp_path)])
    mlp = units.start_mlp(args, plan_lib.settings(args), Rec, "linear_w512", 1)
    assert distill.mlp_width(mlp) == 512 and mlp.gate_proj.kernel.shape == (576, 512)


def test_the_verdict_names_the_arms_that_cannot_be_chosen_yet():
    R = records(*(fit(a, k, 0.5, 0.5) for a in ("linear", "kan_a") for k in LAYERS), fit("kan_b", 5, 0.1, 0.1))
    text = report_v2.verdict_text(R, ["kan_a", "kan_b"], LAYERS)
    assert "**kan_a**; not candidates until every block is fitted: kan_b (blocks 4 not fitted yet)." in text
    R["fit__kan_b__L4"] = fit("kan_b", 4, 0.1, 0.1)
    assert "**kan_b**." in report_v2.verdict_text(R, ["kan_a", "kan_b"], LAYERS)  # chosen once complete


def test_warm_fit_text_compares_each_fit_with_where_the_warm_start_began():
    worse, better = fit("gr_warm", 4, 0.008, 0.009, lr=1e-3), fit("gr_warm", 5, 0.001, 0.001, lr=1e-2)
    for r, start in ((worse, 0.002), (better, 0.003)):
        r["start"] = start
        r["lrs"]["0.03"] = {"val": {"rel_err": 0.05}}  # a two-lr grid: 1e-3 is its low edge, 1e-2 inside it
    worse["lrs"]["0.01"], better["lrs"]["0.001"] = {"val": {"rel_err": 0.02}}, {"val": {"rel_err": 0.004}}
    text = report_v2.warm_fit_text(records(worse), LAYERS)
    assert "block 4: 0.0020 → 0.0080 at lr 0.001 (grid edge): the fit moves it away from where it began" in text
    text = report_v2.warm_fit_text(records(worse, better), LAYERS)
    assert "block 5: 0.0030 → 0.0010 at lr 0.01;" not in text and "block 5: 0.0030 → 0.0010 at lr 0.01:" in text
    assert "improves on the start on 1 of 2 fitted blocks" in text
    assert report_v2.warm_fit_text(records(fit("linear", 4, 0.5, 0.5)), LAYERS) == ""


def test_the_lr_table_shows_the_error_at_step_0_where_records_have_it():
    from benchmarks.studies.distill.tables import lr_table

    warm, old = fit("gr_warm", 4, 0.008, 0.009), fit("linear", 4, 0.5, 0.5)
    warm["start"] = 0.00188
    text = lr_table(records(warm, old), ["linear", "gr_warm"])
    assert "| arm | block | val at step 0 | val @ 0.01 |" in text
    assert "| gr_warm | 4 | 0.00188 | 0.008 |" in text and "| linear | 4 | – | 0.500 |" in text
    assert "step 0" not in lr_table(records(old), ["linear"])  # records without it (v1's): no column


def test_edge_text_names_the_fits_kept_at_an_end_of_the_grid():
    low, mid = fit("kan", 4, 0.5, 0.5, lr=1e-3), fit("kan", 5, 0.5, 0.5, lr=1e-2)
    for r in (low, mid):
        r["lrs"].update({"0.001": {"val": {"rel_err": 0.4}}, "0.01": {"val": {"rel_err": 0.45}},
                         "0.03": {"val": {"rel_err": 0.6}}})
    assert report_v2.edge_text(records(low, mid), ["kan"], LAYERS) == "- Fits kept at an end of the lr grid: kan block 4 (0.001)."
    assert report_v2.edge_text(records(mid, fit("linear", 4, 0.5, 0.5)), ["kan", "linear"], LAYERS) == ""  # one lr: no grid


def test_the_verdict_explains_a_complete_mapped_arm_that_falls_short_besides_the_chosen_one():
    errmap = {a: {"unit": f"errmap__{a}", "kind": "errmap", "arm": a,
                  "blocks": {str(k): {"rel_err_first": 0.1, "rel_err_rest": rest} for k in LAYERS}}
              for a, rest in (("linear", 0.4), ("kan_b", 0.5))}
    R = records(*(fit("linear", k, 0.4, 0.40) for k in LAYERS), *(fit("kan_a", k, 0.41, 0.42) for k in LAYERS),
                fit("kan_b", 4, 0.5, 0.50), fit("kan_b", 5, 0.42, 0.43), *errmap.values())
    text = report_v2.verdict_text(R, ["kan_a", "kan_b"], LAYERS)
    assert "**kan_a**." in text and "4: +0.020, 5: +0.020" in text
    assert ("- `kan_b` (every block fitted, not chosen by rule 1) misses the fit target on blocks 4:\n"
            "  - Block 4: the gap sits on ordinary tokens: relative error on first tokens 0.100 vs 0.100") in text
    assert "Block 5" not in text  # within the target there
    del R["errmap__kan_b"]
    assert "kan_b`" not in report_v2.verdict_text(R, ["kan_a", "kan_b"], LAYERS)  # unmapped: nothing to say


def test_splice_shortfall_text_finds_the_ordinary_token_gap_an_all_token_fit_hides():
    errmap = {a: {"unit": f"errmap__{a}", "kind": "errmap", "arm": a,
                  "blocks": {"4": {"rel_err_first": first, "rel_err_rest": rest4},
                             "5": {"rel_err_first": 0.1, "rel_err_rest": 0.4}}}
              for a, first, rest4 in (("linear", 0.003, 0.34), ("kan", 0.02, 0.41))}
    diag = {"unit": "diagnose__L4", "kind": "diagnose", "first_y_energy_share": 0.93}
    R = records(fit("linear", 4, 0.07, 0.074), fit("kan", 4, 0.09, 0.091), fit("linear", 5, 0.4, 0.4),
                fit("kan", 5, 0.4, 0.41), *errmap.values(), diag, ppl_record("linear", 3.0), ppl_record("kan", 3.1))
    text = report_v2.splice_shortfall_text(R, "kan", LAYERS)
    assert "block 4's +0.017, where the first tokens carry 93% of ‖y‖², hides +0.070 on its ordinary tokens" in text
    assert "block 5" not in text
    verdict = report_v2.verdict_text(R, ["kan"], LAYERS)  # fits within +0.05, perplexity +10.5%: missed
    assert "- Target: **missed**" in verdict and text in verdict
    R["errmap__kan"]["blocks"]["4"]["rel_err_rest"] = 0.36
    assert report_v2.splice_shortfall_text(R, "kan", LAYERS) == ""  # no ordinary-token gap beyond the margin


def alone(arm, layer, kl_per_window, tokens=100):
    return {"unit": f"alone__{arm}__L{layer}", "kind": "alone", "arm": arm, "layer": layer,
            "kl": [v * tokens for v in kl_per_window], "tokens": [tokens] * len(kl_per_window), "top1": [0] * 3}


def test_each_block_spliced_alone_says_which_block_the_extra_kl_comes_from():
    lin = {4: [0.01, 0.02, 0.03], 5: [0.05, 0.05, 0.05]}
    kan = {4: [0.02, 0.03, 0.04], 5: [0.08, 0.07, 0.12]}  # +0.01 on block 4, +0.04 on block 5
    R = records(*(fit(a, k, 0.5, 0.5) for a in ("linear", "kan") for k in LAYERS),
                *(alone("linear", k, lin[k]) for k in LAYERS), alone("kan", 4, kan[4]))
    assert report_v2.alone_text(R, "kan", LAYERS) == ""  # block 5's splice missing: nothing said
    R.update(records(alone("kan", 5, kan[5])))
    text = report_v2.alone_text(R, "kan", LAYERS)
    gap5 = np.mean(kan[5]) - np.mean(lin[5])  # 80% of the sum: block 5 alone is named
    assert f"comes from block 5 {gap5:+.4f} [" in text and "(80%): 80% of the blocks' sum, +0.0500; the others 4: +0.0100." in text
    R["alone__kan__L4"] = alone("kan", 4, [0.03, 0.04, 0.05])  # +0.02: block 5 carries 67%, both are named
    R["diagnose__L4"] = {"unit": "diagnose__L4", "kind": "diagnose", "abs_x_max_rest": 14.2}
    text = report_v2.alone_text(R, "kan", LAYERS)
    assert "block 5 +0.0400" in text and "(67%); block 4 +0.0200 [+0.0200, +0.0200] (33%, inputs up to |x| = 14)" in text
    assert "100% of the blocks' sum, +0.0600." in text and "the others" not in text
    # the verdict line says it where the fits pass and the splice does not, even when no block hides a gap
    R.update(records(ppl_record("linear", 3.0), ppl_record("kan", 3.1)))
    assert report_v2.splice_shortfall_text(R, "kan", LAYERS) == (
        "- Every block's fit is within +0.05 of linear's, yet the splice misses. " + text)
    R["alone__kan__L4"] = alone("kan", 4, kan[4])
    for arm, kl in (("linear", 0.1), ("kan", 0.16)):  # the all-block splices (run before the alone units)
        R[f"insitu__{arm}"] = {**alone(arm, 4, [kl] * 3), "unit": f"insitu__{arm}", "kind": "insitu", "model": arm,
                               "blocks": {}}
    assert "+0.0500; all at once +0.0600; the others" in report_v2.alone_text(R, "kan", LAYERS)
    table = report_v2.spliced_section(R, ["linear", "kan"]).splitlines()
    row = next(line for line in table if line.startswith("| 4 |"))
    assert row.startswith(f"| 4 | {np.mean(lin[4]):.4f} | {np.mean(kan[4]):.4f} | +0.0100 [+0.0100, +0.0100]")
    assert "| all 2 at once | 0.1000 | 0.1600 | +0.0600 [+0.0600, +0.0600] |" in table


def test_range_text_reads_first_token_errors_where_the_inputs_pass_tanhs_reach():
    def errmap(arm, first4, first5):
        return {"unit": f"errmap__{arm}", "kind": "errmap", "arm": arm,
                "blocks": {"4": {"rel_err_first": first4}, "5": {"rel_err_first": first5}}}

    def diag(k, reach):
        return {"unit": f"diagnose__L{k}", "kind": "diagnose", "first_abs_x_max": reach}
    R = records(errmap("linear", 0.5, 0.003), errmap("kan", 0.6, 0.019), diag(4, 0.4), diag(5, 14.2))
    text = report_v2.range_text(R, ["kan", "other"], LAYERS)
    assert text.startswith("- Range: on blocks 5 the first tokens' inputs reach |x| = 14, where tanh saturates")
    assert text.endswith("first-token relative error there: kan 0.019; linear 0.003.")
    R["diagnose__L5"]["first_abs_x_max"] = 2.5
    assert report_v2.range_text(R, ["kan"], LAYERS) == ""  # within tanh's reach: nothing to say
