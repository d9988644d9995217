"""BIG-Bench Hard (Suzgun et al. 2022): 27 generation tasks scored by exact match of the answer.

A task is `bbh_<name>` (`bbh` = all 27). Its rows are {"input", "target"}: the local release
(`<name>.json` = {"examples": [...]}, with the 3-shot chain-of-thought prompts in
`cot-prompts/<name>.txt` beside it) or the hub dataset `lukaemon/bbh` (config <name>, split test),
whose prompts come from the BIG-Bench-Hard repository on GitHub.

Prompts follow lm-evaluation-harness's `bbh_fewshot` / `bbh_cot_fewshot` tasks:

    answer-only (default): <description>\\n\\nQ: <q1>\\nA: <a1>\\n\\n ... Q: <q3>\\nA: <a3>\\n\\nQ: <input>\\nA:
    CoT (cot=True):        <description>\\n\\nQ: <q1>\\nA: Let's think step by step. ... So the answer is <a1>.
                           \\n\\n ... \\n\\nQ: <input>\\nA: Let's think step by step.\\n

where a_i is the text after "the answer is " in the CoT example, its final period dropped. The model
continues greedily (KV cache, batched, left padded; the few-shot prefix every question of a task
shares is prefilled once and its keys and values reused, which gives the same tokens as whole
prompts for fewer prompt tokens): answer-only stops at the first newline (the answer is that
first line), CoT at a blank line or a new "Q:" (the answer is the text after the first "the answer is "). Scoring is lm-eval's `exact_match` (case-sensitive, no punctuation or
case folding) after two normalisations of the extracted answer: surrounding whitespace stripped
(the continuation starts with the space after "A:") and one trailing "." dropped (models often end
the sentence). CoT generation needs hundreds of new tokens per question: size it for accelerators.
"""

from __future__ import annotations

import functools
import json
import re
import urllib.request
import weakref
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

TASKS = ("boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
         "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
         "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
         "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
         "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
         "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
         "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
         "word_sorting")
PREFIX = "bbh_"
HUB_ID = "lukaemon/bbh"
PROMPTS_URL = "https://raw.githubusercontent.com/suzgunmirac/BIG-Bench-Hard/main/cot-prompts/{task}.txt"
COT_CUE = "Let's think step by step."
_ANSWER = re.compile(r"the answer is (.*)")  # within one line: "." does not cross newlines
BUCKET = 64  # prompts (or their question parts) are left padded to a multiple of this: few shapes to compile
PREFIX_BUCKET = 64  # the shared few-shot prefix is cut to a multiple of this (the rest joins the question)


def task_names() -> tuple[str, ...]:
    return tuple(PREFIX + t for t in TASKS)


def base_name(name: str) -> str:
    """"bbh_navigate" -> "navigate" (unknown names fail naming the known ones)."""
    task = name[len(PREFIX):] if name.startswith(PREFIX) else ""
    if task not in TASKS:
        raise ValueError(f"unknown BBH task {name!r}; known: bbh (all), {', '.join(task_names())}")
    return task


# ----------------------------------------------------------------------------- prompts


def parse_cot_prompt(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """A cot-prompts/<task>.txt file -> (description, [(question, CoT answer, final answer)]).

    The file is a canary line, "-----", the task description, then "Q: ...\\nA: Let's think step by
    step. ... So the answer is X." examples separated by blank lines.
    """
    body = text.split("\n-----\n")[-1].strip("\n")
    description, *shots = body.split("\n\nQ:")
    out = []
    for shot in shots:
        question, sep, reasoning = shot.partition("\nA:")
        found = _ANSWER.search(reasoning)
        if not sep or found is None:
            raise ValueError(f"BBH prompt example without 'A:' or 'the answer is': {shot[:80]!r}")
        out.append((question.strip(), reasoning.strip(), strip_period(found.group(1).strip())))
    if not out:
        raise ValueError("BBH prompt file holds no 'Q:' examples")
    return description.strip(), out


def strip_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def fewshot_prefix(prompt_text: str, cot: bool = False) -> str:
    """The shared 3-shot prefix of every question of a task (ends with a blank line)."""
    description, shots = parse_cot_prompt(prompt_text)
    parts = [description]
    for question, reasoning, answer in shots:
        parts.append(f"Q: {question}\nA: {reasoning if cot else answer}")
    return "\n\n".join(parts) + "\n\n"


def build_prompt(prefix: str, question: str, cot: bool = False) -> str:
    return prefix + f"Q: {question}\nA:" + (f" {COT_CUE}\n" if cot else "")


def truncate(generation: str, cot: bool = False) -> str:
    """Cut a raw continuation where the harness stops generating: a newline (answer-only) or a
    blank line / a new question (CoT)."""
    if not cot:
        return generation.split("\n", 1)[0]
    for stop in ("\n\n", "Q:"):
        generation = generation.split(stop, 1)[0]
    return generation


def extract_answer(generation: str, cot: bool = False) -> str:
    """The answer of a (raw) continuation: its first line (answer-only) or the text after the first
    "the answer is " (CoT; "" when absent), whitespace stripped and one trailing "." dropped."""
    text = truncate(generation, cot)
    if cot:
        found = _ANSWER.search(text)
        text = found.group(1) if found else ""
    return strip_period(text.strip())


def is_correct(answer: str, target: str) -> bool:
    return answer == target.strip()


# ----------------------------------------------------------------------------- data


def _read_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=20) as f:  # noqa: S310 - a fixed https URL
        return f.read().decode("utf-8")


def _local_files(task: str, data_dir, path) -> tuple[Path, Path] | None:
    """(examples json, prompt txt) from an explicit file or a folder holding <task>.json (or bbh/<task>.json)."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"BBH file {path} does not exist")
        return path, path.parent / "cot-prompts" / f"{task}.txt"
    for folder in ([Path(data_dir), Path(data_dir) / "bbh"] if data_dir else []):
        if (folder / f"{task}.json").is_file():
            return folder / f"{task}.json", folder / "cot-prompts" / f"{task}.txt"
    return None


def load_rows(name: str, data_dir=None, path=None) -> tuple[list[dict], str]:
    """(rows [{"input", "target"}], prompt file text) of task `name`: local files, else the hub."""
    task = base_name(name)
    local = _local_files(task, data_dir, path)
    if local is not None:
        examples, prompt = local
        if not prompt.is_file():
            raise FileNotFoundError(f"{name}: the 3-shot prompt {prompt} is missing (BBH keeps them in "
                                    f"cot-prompts/ beside the task files)")
        try:
            rows = json.loads(examples.read_text(encoding="utf-8"))["examples"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{examples}: not a BBH task file {{\"examples\": [{{input, target}}]}} ({e})") from e
        return rows, prompt.read_text(encoding="utf-8")
    try:
        import datasets

        ds = datasets.load_dataset(HUB_ID, task, split="test")
        prompt_text = _read_url(PROMPTS_URL.format(task=task))
    except Exception as e:  # noqa: BLE001 - offline: say which local option replaces the hub
        raise FileNotFoundError(
            f"task {name!r}: no local BBH files and the hub ({HUB_ID}, {task}) or the prompt "
            f"{PROMPTS_URL.format(task=task)} could not be read ({type(e).__name__}); pass the BBH folder "
            f"(<task>.json + cot-prompts/): eval.py --bbh_dir <folder>, or --task_file {name}=<file>") from e
    return [{"input": r["input"], "target": r["target"]} for r in ds], prompt_text


def load_docs(name: str, data_dir=None, path=None, limit: int | None = None, cot: bool = False) -> list[dict]:
    """Docs {"prompt", "target", "input"} of task `name` (the first `limit` rows)."""
    rows, prompt_text = load_rows(name, data_dir, path)
    prefix = fewshot_prefix(prompt_text, cot)
    rows = rows[:limit] if limit else rows
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "input" not in r or "target" not in r:
            raise ValueError(f"{name} row {i}: expected {{input, target}}, got {str(r)[:80]!r}")
    if not rows:
        raise ValueError(f"{name}: no rows")
    return [{"prompt": build_prompt(prefix, r["input"], cot), "target": str(r["target"]), "input": r["input"]}
            for r in rows]


# ----------------------------------------------------------------------------- generation


_STOP_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {cot: ids}


def stop_token_ids(tokenizer, cot: bool = False) -> list[int]:
    """Ids at which decoding may stop: EOS, and every token whose text holds a newline (answer-only)
    or a blank line (CoT). The text is still cut by `truncate`: stopping is only a saving. Kept per
    tokenizer object: decoding the whole vocabulary takes about a second, and every task asks."""
    cached = _STOP_IDS.setdefault(tokenizer, {})
    if cot not in cached:
        cached[cot] = _stop_token_ids(tokenizer, cot)
    return list(cached[cot])


def _stop_token_ids(tokenizer, cot: bool) -> list[int]:
    marker = "\n\n" if cot else "\n"
    base = getattr(tokenizer, "tokenizer", tokenizer)  # a MappedTokenizer's own vocabulary
    vocab = sorted(base.get_vocab().values())
    ids = [tid for tid, text in zip(vocab, base.batch_decode([[t] for t in vocab])) if marker in text]
    id_map = getattr(tokenizer, "id_map", None)
    if id_map is not None:  # trimmed-vocabulary checkpoint: old ids -> the model's ids
        ids = [int(id_map[i]) for i in ids]
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return sorted(set(ids))


def left_pad(rows: Sequence[Sequence[int]], width: int, batch: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows -> LEFT-padded ids, mask (batch, width) int32; missing rows repeat the last one."""
    ids = np.full((batch, width), pad_id, np.int32)
    mask = np.zeros((batch, width), np.int32)
    for i in range(batch):
        r = rows[min(i, len(rows) - 1)][-width:]
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    return ids, mask


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix every row shares, leaving each row at least one token."""
    n = min(len(r) for r in rows) - 1
    first = np.asarray(rows[0][:max(n, 0)])
    for r in rows[1:]:
        diff = np.flatnonzero(np.asarray(r[:len(first)]) != first)
        first = first[:diff[0]] if len(diff) else first
    return len(first)


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len"))
def _prefill_prefix(graphdef, state, prefix, *, cache_len: int):
    """The KV cache (batch 1, cache_len slots) after the shared prefix (1, P)."""
    from kanjax.llama.attention import init_cache

    model = nnx.merge(graphdef, state)
    cache = init_cache(model.config, 1, cache_len, model.dtype)
    _, cache = model(prefix, jnp.ones((1, cache_len), jnp.int32), cache=cache, logits_to_keep=1)
    return cache


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _greedy_after_prefix(graphdef, state, prefix_cache, ids, mask, eos_ids, pad_id, *, max_new_tokens: int):
    """Greedy continuation of LEFT-padded question parts ids, mask (b, q) that follow the cached prefix:
    `kanjax.llama.generate`'s decoding loop with the prefix's keys and values shared by every row, so the
    few-shot examples are computed once per task instead of once per question. -> (b, max_new_tokens)."""
    from kanjax.llama.attention import KVCache
    from kanjax.llama.generate import forward_step

    model = nnx.merge(graphdef, state)
    b, q = ids.shape
    p = prefix_cache.k[0].shape[1] - q - max_new_tokens  # static: the prefix's slots
    grow = lambda a: jnp.broadcast_to(a, (b,) + a.shape[1:])  # noqa: E731
    cache = KVCache(tuple(map(grow, prefix_cache.k)), tuple(map(grow, prefix_cache.v)), prefix_cache.index)
    # Prefix slots valid, the question's own padding hidden, future slots valid (causality hides them):
    # positions (cumsum of the mask) run on from the prefix exactly as in the unpadded prompt.
    full = jnp.concatenate([jnp.ones((b, p), mask.dtype), mask, jnp.ones((b, max_new_tokens), mask.dtype)], 1)
    logits, cache = forward_step(model, ids, full, cache)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    out = jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(token)
    done = jnp.isin(token, eos_ids)

    def keep_going(carry):
        step, _, _, done, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def decode(carry):
        step, token, cache, done, out = carry
        logits, cache = forward_step(model, token[:, None], full, cache)
        token = jnp.where(done, pad_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
        out = lax.dynamic_update_slice(out, token[:, None], (0, step))
        return step + 1, token, cache, done | jnp.isin(token, eos_ids), out

    return lax.while_loop(keep_going, decode, (jnp.ones((), jnp.int32), token, cache, done, out))[-1]


def generate_texts(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8,
                   cot: bool = False, progress: bool = False, shared_prefix: bool = True) -> list[str]:
    """Greedy continuations of `prompts` (raw text, not truncated), in input order.

    With `shared_prefix` the token prefix all prompts share (a task's few-shot examples), cut to a multiple of PREFIX_BUCKET, is prefilled once and its keys and values
    serve every batch; otherwise (or when it is shorter) `kanjax.llama.generate` runs on whole prompts.
    Prompts are grouped by length (longest first), left padded to a multiple of BUCKET and the batch
    to `batch_size`, so each shape compiles once; a prompt longer than the model's context keeps its
    last tokens.
    """
    from kanjax.llama.generate import generate

    limit = int(model.config.max_position_embeddings) - max_new_tokens
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"][-limit:] for p in prompts]
    prefix_len = common_prefix(rows) // PREFIX_BUCKET * PREFIX_BUCKET if shared_prefix and len(rows) > 1 else 0
    prefix, rows = rows[0][:prefix_len], [r[prefix_len:] for r in rows]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    stops = stop_token_ids(tokenizer, cot)
    eos_ids = jnp.asarray(stops, jnp.int32)
    pad = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    graphdef, state = nnx.split(model)
    caches: dict[int, object] = {}  # prefix caches by total length
    out: list[str | None] = [None] * len(rows)
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="generate", dynamic_ncols=True)
    for s in starts:
        idx = order[s:s + batch_size]
        width = min(-(-len(rows[idx[0]]) // BUCKET) * BUCKET, limit - prefix_len)
        ids, mask = left_pad([rows[i] for i in idx], width, batch_size, pad)
        if prefix_len:
            total = prefix_len + width + max_new_tokens
            if total not in caches:
                caches[total] = _prefill_prefix(graphdef, state, jnp.asarray([prefix], jnp.int32), cache_len=total)
            new = _greedy_after_prefix(graphdef, state, caches[total], jnp.asarray(ids), jnp.asarray(mask), eos_ids,
                                       jnp.int32(pad), max_new_tokens=max_new_tokens)
        else:
            new = generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad)
        new = np.asarray(new)
        for j, i in enumerate(idx):
            tokens = [int(t) for t in new[j]]
            if any(t in stops for t in tokens):  # keep the stop token itself: it may carry the newline
                tokens = tokens[:next(k for k, t in enumerate(tokens) if t in stops) + 1]
            out[i] = tokenizer.batch_decode([tokens], skip_special_tokens=True)[0]
    return out


def answer_budget(tokenizer, docs: Sequence[dict], slack: int = 8) -> int:
    """New tokens that fit the longest target of `docs` (as the continuation " <target>\\n") plus slack:
    a longer answer-only first line cannot equal any target."""
    return max(len(tokenizer(" " + d["target"] + "\n", add_special_tokens=False)["input_ids"]) for d in docs) + slack


def evaluate_docs(model, tokenizer, docs: Sequence[dict], *, cot: bool = False, max_new_tokens: int | None = None,
                  batch_size: int = 8, progress: bool = False) -> dict:
    """-> {"exact_match", "n", "exact_match_stderr", "correct" ("0"/"1" per doc), "predictions"}.

    max_new_tokens: default `answer_budget(docs)` (answer-only) or 256 (CoT).
    """
    if not docs:
        raise ValueError("no documents to score")
    if max_new_tokens is None:
        max_new_tokens = 256 if cot else answer_budget(tokenizer, docs)
    texts = generate_texts(model, tokenizer, [d["prompt"] for d in docs], max_new_tokens=max_new_tokens,
                           batch_size=batch_size, cot=cot, progress=progress)
    answers = [extract_answer(t, cot) for t in texts]
    hits = [is_correct(a, d["target"]) for a, d in zip(answers, docs)]
    n, em = len(docs), float(np.mean(hits))
    return {"exact_match": em, "n": n, "exact_match_stderr": float(np.sqrt(em * (1 - em) / max(n - 1, 1))),
            "correct": "".join("1" if h else "0" for h in hits), "max_new_tokens": max_new_tokens,
            "predictions": [{"answer": a, "target": d["target"], "generation": t}
                            for a, d, t in zip(answers, docs, texts)]}


__all__ = ["TASKS", "task_names", "base_name", "parse_cot_prompt", "fewshot_prefix", "build_prompt", "truncate",
           "extract_answer", "is_correct", "load_rows", "load_docs", "stop_token_ids", "left_pad",
           "common_prefix", "generate_texts", "answer_budget", "evaluate_docs"]
