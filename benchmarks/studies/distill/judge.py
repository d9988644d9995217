"""How the distillation study (full_model_distill.py) judges a whole model: held-out perplexities, BBH,
the shared multiple-choice sets, and BBH's no-model floor. Each function takes a built model (or none)
and the data folder and returns the per-window / per-question numbers its record keeps, so the report
can bootstrap over them. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

MC_TASKS = ("arc_easy", "arc_challenge", "openbook_qa", "copa", "winogrande")
CHAT_MT_BENCH = "mt_bench_with_gpt4_reference_messages.jsonl"


def perplexities(model, tok, data_dir: Path, chat_split_dir: Path, s: dict) -> dict:
    """Negative log-likelihood sums and token counts per WikiText-2 test window (s["ppl_windows"] windows
    of s["ppl_seq_len"] tokens) and per MT-Bench conversation (assistant turns only, each conversation
    whole; the first s["chat"], all when None), for bootstraps over them. chat_split_dir: where
    full_model_study.chat_split writes its split, whose held-out conversations are flagged (v1_heldout)."""
    import numpy as np

    from benchmarks.studies.full_model.study import chat_split
    from kanjax.data import arrays as data_arrays
    from kanjax.evals import loglik as evaluate

    prefix = evaluate.prefix_token_id(tok)
    windows = _wikitext_windows(data_dir / "text" / "wikitext2_test.txt", tok, s["ppl_seq_len"], s["ppl_windows"])
    rows = [(np.concatenate([[prefix], w]).astype(np.int32), np.concatenate([[0], np.ones(len(w))]).astype(bool))
            for w in windows]
    wiki = masked_nll(model, rows)
    chat_dir = data_dir / "chat"
    lines = [l for l in (chat_dir / CHAT_MT_BENCH).read_text().splitlines() if l.strip()]
    held_v1 = set((chat_split(chat_dir, chat_split_dir) / "validation.jsonl").read_text().splitlines())
    convs = [json.loads(l)["messages"] for l in lines][:s["chat"]]
    ids, masks, stats = data_arrays.encode_chat(tok, convs, seq_len=8192)
    if stats["truncated"] or stats["dropped"]:
        raise ValueError(f"MT-Bench conversations truncated or dropped: {stats}")
    chat = masked_nll(model, list(zip(ids, masks)))
    return {"wikitext": {"windows": len(windows), "seq_len": s["ppl_seq_len"], **wiki},
            "mt_bench": {**chat, "v1_heldout": [l in held_v1 for l in lines[:len(convs)]]}}


@functools.cache
def _wikitext_windows(path: Path, tok, seq_len: int, count: int):
    """The WikiText-2 test windows, encoded once per process and tokenizer (every judged model reads them)."""
    from benchmarks.studies.distill import fit as distill
    from kanjax.data import arrays as data_arrays

    return distill.token_windows(data_arrays.encode_text(tok, [path.read_text()]), seq_len, count)


@functools.cache
def _row_nll():
    """One jitted scorer for the whole process: models of one structure (the reference, the spliced
    linear ones, the fine-tuned ones) reuse its compilations instead of compiling per call."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @nnx.jit
    def score(model, ids, attn, target_mask):
        logp = jax.nn.log_softmax(model(ids, attn)[:, :-1].astype(jnp.float32))
        tok = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        return -jnp.sum(jnp.where(target_mask[:, 1:], tok, 0.0))

    return score


def masked_nll(model, rows, bucket: int = 256) -> dict:
    """rows [(ids (m,), mask (m,))]: Σ −log p(ids[j] | ids[:j]) over the positions j ≥ 1 with mask[j],
    each row scored alone (padded on the right to a multiple of `bucket`) -> {"nll": [...], "tokens": [...]}."""
    import jax.numpy as jnp
    import numpy as np

    score = _row_nll()
    nll, tokens = [], []
    for ids, mask in rows:
        width = -(-len(ids) // bucket) * bucket
        padded = np.zeros((1, width), np.int32)
        attn, tmask = np.zeros((1, width), np.int32), np.zeros((1, width), bool)
        padded[0, :len(ids)], attn[0, :len(ids)], tmask[0, :len(ids)] = ids, 1, mask
        nll.append(float(score(model, jnp.asarray(padded), jnp.asarray(attn), jnp.asarray(tmask))))
        tokens.append(int(np.asarray(mask)[1:].sum()))
    return {"nll": nll, "tokens": tokens}


def bbh(model, tok, data_dir: Path, s: dict, gen_batch_size: int) -> dict:
    """BBH 3-shot answer-only exact match on the first s["bbh_limit"] questions (all when 0) of the tasks
    s["bbh_tasks"] ("bbh": all 27) -> {"tasks": {name: {"n", "exact_match", "correct", "answers",
    "seconds"}}, "exact_match"}."""
    from kanjax.evals import runner as eval_models

    res = eval_models.run(model, tok, s["bbh_tasks"], bbh_dir=data_dir / "bbh", limit=s["bbh_limit"] or None,
                          gen_batch_size=gen_batch_size, progress=False)
    return {"tasks": {k: {"n": v["n"], "exact_match": v["exact_match"], "correct": v["correct"],
                          "answers": [p["answer"] for p in v["predictions"]], "seconds": v["seconds"]}
                      for k, v in res["tasks"].items()},
            "exact_match": res["groups"]["bbh"]["exact_match"]}


def multiple_choice(model, tok, data_dir: Path, s: dict, batch_size: int) -> dict:
    """The shared multiple-choice sets MC_TASKS (the first s["mc_limit"] questions, all when 0) ->
    {"tasks": {name: {"n", "acc", "acc_norm", "seconds", per-question bits}}}."""
    from benchmarks.studies.full_model.study import per_question
    from kanjax.evals import runner as eval_models

    res = eval_models.run(model, tok, MC_TASKS, data_dir=data_dir / "mc_benchmarks", limit=s["mc_limit"] or None,
                          batch_size=batch_size, progress=False)
    return {"tasks": {k: {**{m: v[m] for m in ("n", "acc", "acc_norm", "seconds")}, **per_question(v)}
                      for k, v in res["tasks"].items()}}


def bbh_floor(data_dir: Path, s: dict) -> dict:
    """What BBH gives with no model: per task, always answering the task's most frequent target (over all
    its rows), scored on the judged questions -> {"tasks": {name: {"n", "answer", "correct"}}}."""
    import collections

    from kanjax.evals import bbh as bbh_lib

    names = bbh_lib.task_names() if tuple(s["bbh_tasks"]) == ("bbh",) else s["bbh_tasks"]
    out = {"tasks": {}}
    for name in names:
        rows, _ = bbh_lib.load_rows(name, data_dir=data_dir / "bbh")
        answer = collections.Counter(str(r["target"]).strip() for r in rows).most_common(1)[0][0]
        judged = rows[:s["bbh_limit"]] if s["bbh_limit"] else rows
        out["tasks"][name] = {"n": len(judged), "answer": answer,
                              "correct": "".join("1" if bbh_lib.is_correct(answer, str(r["target"])) else "0"
                                                 for r in judged)}
    return out
