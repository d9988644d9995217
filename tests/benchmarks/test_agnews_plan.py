"""benchmarks/studies/agnews/plan.py: its arms are distinct, its planning is paired and waits for the rate choice."""

import importlib
import itertools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

REPO = Path(__file__).resolve().parents[2]
from benchmarks.studies.agnews import plan as plan_lib
from tests.helpers.agnews_records import study_args


def _arm_logits(arm: plan_lib.Arm) -> np.ndarray:
    """The arm's model (one block, width 64, a 64-token vocabulary: the layers' parametrisation, not
    their size, is what two arms could share) on a fixed input, with
    every parameter drawn from a key named by its path: two arms with the same parameter shapes get
    the same values, so they compute the same logits exactly when their layers are the same function
    of their parameters. (At init they would not do: the KAN recipe starts every polynomial family
    at the same random linear map.)"""
    import zlib

    from flax import nnx

    from kanjax.llama.kanify import build_model
    from kanjax.llama.model import LlamaConfig, LlamaForSequenceClassification
    from kanjax.llama.surgery import path_string
    from kanjax.training import config as config_lib
    from kanjax.training import step as train_lib

    config = config_lib.apply_overrides(importlib.import_module(f"configs.{arm.config}").get_config(),
                                        {k: v for k, v in arm.overrides.items() if not k.startswith("train.lr")})
    dtype = train_lib.compute_dtype(config.train.precision)
    shape = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, num_labels=4)
    # Shapes only: every value is drawn below, so initialising them (a compile per shape) is waste.
    model = build_model(LlamaForSequenceClassification, shape, config_lib.kan_spec(config.kan), dtype=dtype,
                        abstract=True)

    def draw(path, x):  # numpy: no per-shape compilation of a random draw
        name = path_string(path)
        noise = 0.05 * np.random.default_rng(zlib.crc32(name.encode())).standard_normal(x.shape)
        return jnp.asarray(noise + (1.0 if "norm" in name else 0.0), x.dtype)

    graphdef, params = nnx.split(model)
    params = jax.tree_util.tree_map_with_path(draw, params)
    ids = np.random.default_rng(0).integers(0, 64, (2, 12)).astype(np.int32)
    # Eagerly: at this size op-by-op dispatch beats compiling the forward.
    return np.asarray(nnx.merge(graphdef, params)(ids, jnp.ones_like(ids)), np.float64)


def test_every_pair_of_study_arms_computes_different_functions():
    """Same parameters, same input: two arms whose layers are the same parametrisation of the same
    function class (Jacobi(1,1) = Gegenbauer(3/2) after normalisation; Fibonacci degree 2 =
    Chebyshev-2 degree 1) give identical logits. Every pair must differ."""
    logits = {arm.name: _arm_logits(arm) for arm in plan_lib.STUDY}
    same = [(a, b) for a, b in itertools.combinations(logits, 2)
            if np.max(np.abs(logits[a] - logits[b])) < 1e-6 * (1 + np.max(np.abs(logits[a])))]
    assert not same, f"arms computing the same function: {same}"


def test_the_old_duplicate_arms_are_caught_by_that_check():
    """The check above is able to fail: the v1 study's Jacobi/Gegenbauer and Fibonacci/Chebyshev-2 pairs,
    and, centred (the default), every symmetric family at degree 2 (columns x and x²)."""
    jacobi = _arm_logits(plan_lib.Arm("j", "kan_jacobi", {}, 1))  # α = β = 1, the family's defaults
    gegen = _arm_logits(plan_lib.Arm("g", "kan_gegenbauer", {"kan.basis_params.alpha": 1.5}, 1))
    np.testing.assert_allclose(jacobi, gegen, atol=1e-5)
    fib = _arm_logits(plan_lib.Arm("f", "kan_fibonacci", {"kan.degree": 2}, 1))
    cheb1 = _arm_logits(plan_lib.Arm("c", "kan_cheb2", {"kan.degree": 1}, 1))
    np.testing.assert_allclose(fib, cheb1, atol=1e-5)
    legendre2 = _arm_logits(plan_lib.Arm("l", "kan_legendre", {"kan.degree": 2}, 1))
    np.testing.assert_allclose(legendre2, _arm_logits(plan_lib.Arm("c2", "kan_cheb2", {}, 1)), atol=1e-5)


def test_plan_pairs_seeds_and_waits_for_tuning(tmp_path):
    args = study_args(tmp_path)
    plan = plan_lib.planned_runs(args, rates={})
    # Seed 0 of every arm of a phase before any seed 1.
    recipe = [(a.name, s) for ph, a, s, _ in plan if ph == "recipe"]
    assert recipe[: len(plan_lib.RECIPE)] == [(a.name, 0) for a in plan_lib.RECIPE]
    # Study runs wait for the tuned rates; with them, each kind gets its own.
    assert all(f is None for ph, a, s, f in plan if ph == "study")
    plan = plan_lib.planned_runs(args, rates={"linear": 1e-3, "kan": 3e-3})
    lrs = {a.name: f["train.lr"] for ph, a, s, f in plan if ph == "study"}
    assert lrs["linear"] == 1e-3 and lrs["kan_chebyshev2"] == 3e-3 and lrs["kan_chebyshev2_parallel"] == 3e-3
    # Paired: the data seed is the run's seed, whatever the arm.
    seeds = {(a.name, s): f["seed"] for ph, a, s, f in plan if ph == "study"}
    assert all(k[1] == v for k, v in seeds.items())
    counts = {}
    for ph, a, s, f in plan:
        if ph == "study":
            counts[a.name] = counts.get(a.name, 0) + 1
    for name in ("linear", "kan_chebyshev2", "kan_jacobi_deg3", "kan_gegenbauer_deg3", "kan_chebyshev2_deg3",
                 "kan_chebyshev2_parallel", "kan_chebyshev2_sequential", "kan_chebyshev2_fp16",
                 "kan_chebyshev2_nosilu", "kan_chebyshev2_half"):
        assert counts[name] >= 5, name
    assert min(counts.values()) >= 3
    # Order: seed 0 of every arm first; then the five-seed arms one seed ahead of the three-seed ones.
    study = [(a.name, s) for ph, a, s, _ in plan if ph == "study"]
    first_other = min(i for i, (_, s) in enumerate(study) if s > 0)
    assert {s for _, s in study[:first_other]} == {0} and first_other == len(counts)
    at = {run: i for i, run in enumerate(study)}
    five, three = [n for n, c in counts.items() if c == 5], [n for n, c in counts.items() if c == 3]
    assert max(at[n, 2] for n in five) < min(at[n, 1] for n in three)
    assert max(at[n, 3] for n in five) < min(at[n, 2] for n in three) < max(at[n, 4] for n in five)
    # Claim 1 is decided by the rivals whose layer is not measurably slower (kan_layer.json): they get five too.
    speed = json.loads((REPO / "benchmarks" / "results" / "perf" / "kan_layer.json").read_text())["ratios_to_chebyshev2"]
    not_slower = [a for a in plan_lib.BASIS_DEGREE_ARMS if speed[a[len("kan_"):]]["lo"] <= 1.0]
    assert all(counts[a] >= 5 for a in not_slower), not_slower


def _tune_record(arm, lr, seed, val):
    return {"name": f"{arm}_lr{lr:g}", "lr": lr, "seed": seed, "final_val_accuracy": val}


def test_tuned_rates_pick_the_best_mean_validation_accuracy_once_the_grid_is_complete():
    lrs = plan_lib.LEARNING_RATES
    recs = [_tune_record("linear", lr, s, 0.8 + 0.01 * (lr == lrs[1]) + 0.001 * s) for lr in lrs for s in range(3)]
    assert plan_lib.tuned_rates(recs) == {"linear": lrs[1]}
    recs += [_tune_record("kan_chebyshev2", lr, s, 0.7 + 0.02 * (lr == lrs[-1])) for lr in lrs for s in range(3)]
    assert plan_lib.tuned_rates(recs) == {"linear": lrs[1], "kan": lrs[-1]}
    assert "kan" not in plan_lib.tuned_rates(recs[:-1])  # a missing run: no choice yet
    # Seeds past the choice seeds (the grid's claim-7 seeds) never move the rate the study trains at.
    extra = [_tune_record("kan_chebyshev2", lrs[0], s, 0.99) for s in range(plan_lib.CHOICE_SEEDS, 5)]
    assert plan_lib.tuned_rates(recs + extra)["kan"] == lrs[-1]
    assert "kan" not in plan_lib.tuned_rates(recs[:-1] + extra)
    assert all(a.seeds > plan_lib.CHOICE_SEEDS for a in plan_lib.TUNE)
    # --quick trains one seed per rate and chooses on it; the full study waits for seeds 0-2.
    one_seed = [r for r in recs if r["seed"] == 0]
    assert plan_lib.tuned_rates(one_seed, quick=True) == {"linear": lrs[1], "kan": lrs[-1]}
    assert plan_lib.tuned_rates(one_seed) == {}
