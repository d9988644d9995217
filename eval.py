"""Evaluation entry point (accuracy, perplexity, multiple-choice benchmarks).

Not implemented yet: the evaluation issue builds it. Until then this script says so and exits
with status 2 rather than pretending to evaluate anything. Training already reports validation
and test accuracy (classification) or validation perplexity (causal LM) at the end of a run.
"""

import sys


def main() -> int:
    print("eval.py is not implemented yet (see the evaluation issue). train.py reports validation/test "
          "accuracy or perplexity at the end of each run, in <workdir>/metrics.jsonl.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
