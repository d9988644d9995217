"""Made-up AGNews study records for the claim and report tests: each run gets round(acc·N) of N test
texts right, which ones drawn per seed (arms share their hard texts, as real arms do)."""

from types import SimpleNamespace

import numpy as np

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


def study_args(tmp_path, **kw):
    """The runner's command-line arguments (agnews_study.py), records and run folders under tmp_path."""
    base = dict(quick=False, steps=0, only="", seeds="", phase="recipe,tune,study", records=str(tmp_path / "rec"),
                workdirs=str(tmp_path / "work"), data_dir=str(tmp_path / "data"))
    return SimpleNamespace(**{**base, **kw})
