"""Zero-shot evaluation of causal LMs: continuation log-likelihoods, multiple-choice accuracy,
perplexity / bits per byte. Numerics follow lm-evaluation-harness conventions.

Shape letters: b batch, t padded row length (a bucket), v vocab.

A request is (context, continuation). As the harness does, trailing whitespace of the context moves to
the front of the continuation, context + continuation is tokenised as ONE string and split at the
token count of the context alone, so the continuation's tokens are those the model would really
see. An empty context is replaced by the BOS (else EOS) token so the first token has a
prediction. A row keeps its last ``max_len + 1`` tokens (left truncation).

Rows are right padded to the smallest bucket that fits the longest row of a batch and the batch
dimension to ``batch_size``, so one jitted scorer serves every batch with few shapes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from kanjax.evals import packing

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)
TOKENS_PER_CALL = 4096  # packed scoring: rows x length per jitted call (CPU caches like a few thousand tokens)
# score_token_rows: rows x length per call at most (one row always), so that long rows (perplexity's
# rolling windows) are not planned batch_size at a time.
ROW_TOKENS_PER_CALL = 16384
MIN_ROW = 256  # packed rows hold several questions: at least this long


# ----------------------------------------------------------------------------- tokenisation


def check_lm(model) -> None:
    """A model without an LM head (e.g. LlamaForSequenceClassification) cannot score text."""
    if not callable(getattr(model, "logits", None)) or not hasattr(model, "config"):
        raise TypeError(f"{type(model).__name__} has no language-model head (no .logits): log-likelihood "
                        f"tasks need a causal LM such as kanjax.llama.LlamaForCausalLM")


def prefix_token_id(tokenizer) -> int:
    """The token that stands in for an empty context: BOS, else EOS."""
    for tid in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to prefix an empty context")


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) the harness way: split the joint encoding at len(encode(context))."""
    n_spaces = len(context) - len(context.rstrip())  # all trailing whitespace, as lm-eval
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    if not context:
        return [prefix_token_id(tokenizer)], encode(tokenizer, continuation)
    whole = encode(tokenizer, context + continuation)
    n_ctx = len(encode(tokenizer, context))
    return whole[:n_ctx], whole[n_ctx:]


def make_row(ctx_ids: Sequence[int], cont_ids: Sequence[int], max_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """-> inputs (n,), targets (n,), number of continuation targets (the last ones), n <= max_len.

    Keeps the last max_len + 1 tokens (left truncation); the continuation must fit in max_len.
    """
    if not cont_ids:
        raise ValueError("empty continuation: nothing to score")
    if len(cont_ids) > max_len:
        raise ValueError(f"continuation of {len(cont_ids)} tokens exceeds the model limit of {max_len}")
    tokens = np.asarray(list(ctx_ids) + list(cont_ids), np.int32)[-(max_len + 1):]
    return tokens[:-1], tokens[1:], len(cont_ids)


def bucket_length(n: int, buckets: Sequence[int], max_len: int) -> int:
    """Smallest bucket >= n (capped at max_len); n itself when no bucket fits."""
    fits = [b for b in buckets if b >= n]
    return min(min(fits) if fits else n, max(max_len, n))


# ----------------------------------------------------------------------------- scoring


HEAD_CHUNK = 256  # positions per (d → vocab) head call when every position is scored


@functools.partial(jax.jit, static_argnames=("graphdef", "window"))
def _score_batch(graphdef, state, inputs, attention_mask, targets, target_mask, window=None):
    """inputs, attention_mask, targets, target_mask (b,t) -> summed log-prob (b,), all-greedy (b,).

    window: when set, only the last `window` real positions of each row (which hold every
    continuation token) go through the (d → vocab) head: with 49,152 ids that head is most of the
    cost of scoring short answers. Without it (perplexity's rolling windows score every position),
    the head runs on HEAD_CHUNK positions at a time, so the (b, t, v) logits never exist at once.
    """
    model = nnx.merge(graphdef, state)
    if not hasattr(model, "logits"):
        return _token_scores(model(inputs, attention_mask), targets, target_mask)
    hidden = model.model(inputs, attention_mask)  # (b,t,d)
    if window is not None:
        end = jnp.sum(attention_mask, axis=-1)  # right padded: real tokens are [0, end)
        idx = jnp.maximum(end - window, 0)[:, None] + jnp.arange(window)[None]  # (b,w)
        hidden = jnp.take_along_axis(hidden, idx[..., None], axis=1)
        targets = jnp.take_along_axis(targets, idx, axis=1)
        target_mask = jnp.take_along_axis(target_mask, idx, axis=1)
    return _chunked_token_scores(model, hidden, targets, target_mask)


def _token_scores(logits, targets, target_mask):
    """logits (b,t,v), targets (b,t), target_mask (b,t) -> summed log-prob (b,), all-greedy (b,)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    greedy_ok = (jnp.argmax(logits, axis=-1) == targets) | ~target_mask
    return jnp.sum(jnp.where(target_mask, tok_logp, 0.0), axis=-1), jnp.all(greedy_ok, axis=-1)


def _chunked_token_scores(model, hidden, targets, target_mask):
    """`_token_scores` of model.logits(hidden (b,t,d)), the head applied to HEAD_CHUNK positions at a time
    (t padded up to a multiple with unscored positions)."""
    b, t, d = hidden.shape
    if t <= HEAD_CHUNK:
        return _token_scores(model.logits(hidden), targets, target_mask)
    n = -(-t // HEAD_CHUNK)
    pad = n * HEAD_CHUNK - t
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets, target_mask = jnp.pad(targets, ((0, 0), (0, pad))), jnp.pad(target_mask, ((0, 0), (0, pad)))

    def chunks(x):  # (b, n·c, …) -> (n, b, c, …)
        return jnp.moveaxis(x.reshape(b, n, HEAD_CHUNK, *x.shape[2:]), 1, 0)

    ll, ok = jax.lax.map(lambda a: _token_scores(model.logits(a[0]), a[1], a[2]),
                         (chunks(hidden), chunks(targets), chunks(target_mask)))
    return jnp.sum(ll, axis=0), jnp.all(ok, axis=0)


def _window(rows, length: int, buckets) -> int | None:
    """Static window (a power of two ≥ 8) covering every continuation of the batch, or None."""
    longest = max(n_cont for _, _, n_cont in rows)
    if buckets is None:
        return None
    window = max(8, 1 << (longest - 1).bit_length())
    return window if window < length else None


def pad_batch(rows: Sequence[tuple[np.ndarray, np.ndarray, int]], length: int, batch: int, pad_id: int = 0):
    """Right pad rows to (batch, length) -> inputs, attention_mask, targets int32, target_mask bool."""
    inputs = np.full((batch, length), pad_id, np.int32)
    targets = np.zeros((batch, length), np.int32)
    attn = np.zeros((batch, length), np.int32)
    tmask = np.zeros((batch, length), bool)
    for i, (inp, tgt, n_cont) in enumerate(rows):
        n = len(inp)
        inputs[i, :n], targets[i, :n], attn[i, :n] = inp, tgt, 1
        tmask[i, n - n_cont:n] = True
    return inputs, attn, targets, tmask


def model_max_len(model, max_len: int | None = None) -> int:
    return int(max_len or model.config.max_position_embeddings)


def score_token_rows(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *, batch_size: int = 16,
                     buckets: Sequence[int] | None = DEFAULT_BUCKETS, max_len: int | None = None,
                     progress: bool = False, tokens_per_call: int = ROW_TOKENS_PER_CALL) -> list[tuple[float, bool]]:
    """Token-level pairs (context ids, continuation ids) -> [(sum log p(continuation), is_greedy)].

    Rows are scored longest first (similar lengths share a batch); results come back in input order.
    A call takes batch_size rows, or fewer where they are long: at most tokens_per_call // length
    (at least one), so perplexity's 8,192-token windows do not plan 16 rows' activations at once.
    buckets=None pads each batch only to its own longest row (the unbucketed reference).
    """
    check_lm(model)
    limit = model_max_len(model, max_len)
    rows = [make_row(c, k, limit) for c, k in pairs]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    graphdef, state = nnx.split(model)
    out: list[tuple[float, bool] | None] = [None] * len(rows)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows), desc="score", dynamic_ncols=True)
    s = 0
    while s < len(order):
        longest = len(rows[order[s]][0])  # longest first: the first row of a call is its longest
        length = longest if buckets is None else bucket_length(longest, buckets, limit)
        per_call = max(1, min(batch_size, tokens_per_call // length))
        idx = order[s:s + per_call]
        width = len(idx) if buckets is None else min(per_call, len(rows))  # one batch shape per length
        arrays = pad_batch([rows[i] for i in idx], length, width)
        window = _window([rows[i] for i in idx], length, buckets) if hasattr(model, "logits") else None
        ll, greedy = jax.device_get(_score_batch(graphdef, state, *map(jnp.asarray, arrays), window=window))
        for j, i in enumerate(idx):
            out[i] = (float(ll[j]), bool(greedy[j]))
        s += len(idx)
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    return out


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score_packed(graphdef, state, tokens, positions, segment, branch, target_index, target_token):
    """Packed rows (b,t) and scored slots (b,w) -> log p(target) (b,w) float32, target is argmax (b,w).

    The last block and the (d → vocab) head run only at the scored slots."""
    model = nnx.merge(graphdef, state)
    key_seg, key_branch = segment[:, None, :], branch[:, None, :]
    visible = ((segment[:, :, None] == key_seg) & (key_seg > 0)
               & ((key_branch == 0) | (key_branch == branch[:, :, None])))  # (b,t,t); causality added inside
    logits = model.logits(model.model(tokens, visible, positions, last_rows=target_index))  # (b,w,v)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok_logp = jnp.take_along_axis(logp, target_token[..., None], axis=-1)[..., 0]
    return tok_logp, jnp.argmax(logits, axis=-1) == target_token


def _pow2(n: int, floor: int = 1) -> int:
    return max(floor, 1 << (max(n, 1) - 1).bit_length())


def score_packed(model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], *,
                 tokens_per_call: int = TOKENS_PER_CALL, buckets: Sequence[int] = DEFAULT_BUCKETS,
                 max_len: int | None = None, progress: bool = False, stats: dict | None = None
                 ) -> list[tuple[float, bool]]:
    """`score_token_rows` with each distinct context run once (kanjax.evals.packing): the continuations of
    a context follow it in the same row, several contexts share a row, rows are `length` tokens (the
    bucket of max(longest request, MIN_ROW)) and a call takes tokens_per_call // length of them.

    stats, when given, receives tokens (real), slots (b·t of every call), calls and shapes.
    """
    check_lm(model)
    limit = model_max_len(model, max_len)
    reqs = [packing.cut_request(c, k, limit) for c, k in pairs]
    if not reqs:
        return []
    longest = max(len(r.prefix) + len(r.suffix) for r in reqs)
    length = bucket_length(max(longest, min(MIN_ROW, limit)), buckets, limit)
    grouped = packing.groups(reqs, length)
    rows = [[grouped[g] for g in row] for row in
            packing.assign_rows([packing.group_length(reqs, g) for g in grouped], length)]
    per_call = max(1, tokens_per_call // length)
    graphdef, state = nnx.split(model)
    ll, greedy = np.zeros(len(reqs)), np.ones(len(reqs), bool)
    real = sum(packing.group_length(reqs, g) for g in grouped)
    slots, shapes = 0, set()
    starts = range(0, len(rows), per_call)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="score", dynamic_ncols=True)
    for s in starts:
        chunk = rows[s:s + per_call]
        batch = min(per_call, _pow2(len(chunk)))  # few shapes, little padding on small tasks
        width = _pow2(max(packing.row_targets(reqs, row) for row in chunk), 8)
        arrays = packing.pack_rows(reqs, chunk, length, width, batch)
        tok_logp, is_top = jax.device_get(_score_packed(
            graphdef, state, *(jnp.asarray(a) for a in (arrays.tokens, arrays.positions, arrays.segment,
                                                        arrays.branch, arrays.target_index, arrays.target_token))))
        real_slot = arrays.owner >= 0
        np.add.at(ll, arrays.owner[real_slot], np.asarray(tok_logp, np.float64)[real_slot])
        np.logical_and.at(greedy, arrays.owner[real_slot], np.asarray(is_top)[real_slot])
        slots += batch * length
        shapes.add((batch, length, width))
    if stats is not None:
        stats.update(tokens=real, slots=slots, calls=len(starts), shapes=sorted(shapes),
                     padding_fraction=1 - real / max(slots, 1))
    return [(float(a), bool(b)) for a, b in zip(ll, greedy)]


def loglikelihoods(model, tokenizer, requests: Iterable[tuple[str, str]], *, batch_size: int = 16,
                   buckets: Sequence[int] | None = DEFAULT_BUCKETS, max_len: int | None = None,
                   progress: bool = False, packed: bool = True, stats: dict | None = None
                   ) -> list[tuple[float, bool]]:
    """[(context, continuation)] -> [(sum log-prob of the continuation's tokens, is_greedy)].

    packed (default): `score_packed`, each context scored once; batch_size then does not apply.
    packed=False: one padded row per request (`score_token_rows`), the reference it is tested against.
    """
    pairs = [encode_pair(tokenizer, c, k) for c, k in requests]
    if packed and buckets is not None:
        return score_packed(model, pairs, buckets=buckets, max_len=max_len, progress=progress, stats=stats)
    return score_token_rows(model, pairs, batch_size=batch_size, buckets=buckets, max_len=max_len,
                            progress=progress)


# ----------------------------------------------------------------------------- multiple choice


def mc_predictions(lls: Sequence[float], choices: Sequence[str]) -> tuple[int, int]:
    """(acc prediction, acc_norm prediction): argmax of log-prob and of log-prob / len(choice chars)."""
    lls = np.asarray(lls, np.float64)
    lengths = np.asarray([max(len(c), 1) for c in choices], np.float64)
    return int(np.argmax(lls)), int(np.argmax(lls / lengths))


def mc_requests(docs: Sequence[dict]) -> list[tuple[str, str]]:
    """Docs {"contexts": [n], "continuations": [n]} -> flat requests, one per choice."""
    return [pair for d in docs for pair in zip(d["contexts"], d["continuations"])]


def score_docs(docs: Sequence[dict], lls: Sequence[float]) -> dict:
    """Docs + flat log-likelihoods (mc_requests order) -> {"acc", "acc_norm", "n", "predictions"}.

    acc_norm divides by the character length of each doc's "choices" (the answer text without the
    target delimiter, as lm-eval). Partial-scoring docs (WinoGrande) share one continuation, so
    their acc_norm equals acc.
    """
    if not docs:
        raise ValueError("no documents to score")
    i, correct, correct_norm, preds = 0, 0, 0, []
    for d in docs:
        n = len(d["contexts"])
        pred, pred_norm = mc_predictions(lls[i:i + n], d["choices"])
        i += n
        correct += pred == d["gold"]
        correct_norm += pred_norm == d["gold"]
        preds.append({"pred": pred, "pred_norm": pred_norm, "gold": d["gold"]})
    if i != len(lls):
        raise ValueError(f"{len(lls)} log-likelihoods for {i} choices")
    n = len(docs)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n,
            "acc_stderr": math.sqrt(max(correct / n * (1 - correct / n), 0.0) / max(n - 1, 1)),
            "predictions": preds}


def evaluate_docs(model, tokenizer, docs: Sequence[dict], *, batch_size: int = 16, progress: bool = False,
                  **kwargs) -> dict:
    lls = [ll for ll, _ in loglikelihoods(model, tokenizer, mc_requests(docs), batch_size=batch_size,
                                          progress=progress, **kwargs)]
    return score_docs(docs, lls)


# ----------------------------------------------------------------------------- perplexity


def rolling_pairs(tokens: Sequence[int], prefix_id: int, max_len: int, stride: int | None = None):
    """Token list -> (context ids, continuation ids) windows that predict every token exactly once.

    The first token is predicted from prefix_id; each window predicts `stride` (default max_len)
    new tokens with as much preceding text as fits in max_len as context.
    """
    stride = min(stride or max_len, max_len)
    full = [prefix_id] + list(tokens)
    pairs = []
    for start in range(1, len(full), stride):
        end = min(start + stride, len(full))
        ctx_start = min(max(0, end - 1 - max_len), start - 1)  # inputs [ctx_start, end-1): <= max_len
        pairs.append((full[ctx_start:start], full[start:end]))
    return pairs


def perplexity(model, tokenizer, text: str, *, batch_size: int = 8, max_len: int | None = None,
               stride: int | None = None, buckets: Sequence[int] | None = DEFAULT_BUCKETS) -> dict:
    """Token-level perplexity and bits per byte (UTF-8) of `text`, scored in rolling windows."""
    tokens = encode(tokenizer, text)
    if not tokens:
        raise ValueError("perplexity of an empty text")
    limit = model_max_len(model, max_len)
    pairs = rolling_pairs(tokens, prefix_token_id(tokenizer), limit, stride)
    total = sum(ll for ll, _ in score_token_rows(model, pairs, batch_size=batch_size, buckets=buckets,
                                                 max_len=limit))
    n_bytes = len(text.encode("utf-8"))
    return {"tokens": len(tokens), "bytes": n_bytes, "nll_sum": -total,
            "token_perplexity": math.exp(-total / len(tokens)),
            "bits_per_byte": -total / (math.log(2) * n_bytes)}


def perplexity_file(model, tokenizer, path: str | Path, **kwargs) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"perplexity file {path} does not exist")
    return {"file": str(path), **perplexity(model, tokenizer, path.read_text(encoding="utf-8"), **kwargs)}


__all__ = ["check_lm", "encode_pair", "make_row", "bucket_length", "score_token_rows", "score_packed", "loglikelihoods",
           "mc_predictions", "mc_requests", "score_docs", "evaluate_docs", "rolling_pairs", "perplexity",
           "perplexity_file", "DEFAULT_BUCKETS"]
