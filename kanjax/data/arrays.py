"""Pure array side of the data pipeline: token ids -> fixed-shape numpy pytrees -> batches.

Nothing here touches the disk or the hub (that is `kanjax.data`); every function maps a tokenizer and
python/numpy inputs to dicts of numpy arrays. Notation: n rows, L = seq_len, B = global batch size.

Causal-LM arrays (chat and text) share one layout, all (n, L):
  input_ids int32, targets int32 (= the next token), loss_mask float32, segment_ids int32 (1, 2, ...
  per sequence within a row, 0 on padding), positions int32 (restart at 0 for each segment).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

Arrays = dict[str, np.ndarray]


def pad_id(tokenizer) -> int:
    """The padding id: the tokenizer's pad token, else its eos token, else 0."""
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return int(tid)
    return 0


def num_rows(arrays: Arrays) -> int:
    """n, the shared leading dimension of a pytree of arrays (checked)."""
    sizes = {len(a) for a in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"arrays disagree on the number of rows: { {k: len(a) for k, a in arrays.items()} }")
    return sizes.pop()


def concat(parts: Sequence[Arrays]) -> Arrays:
    """Row-wise concatenation of pytrees with the same keys (the chunks of one split)."""
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --- classification -----------------------------------------------------------------------------


def encode_classify(tokenizer, texts: Sequence[str], labels: Sequence[int], seq_len: int) -> Arrays:
    """Truncated, RIGHT-padded examples: input_ids (n, L) int32, attention_mask (n, L) int32,
    labels (n,) int32. Right padding keeps position ids equal to token index for every real token."""
    rows = tokenizer(list(texts), truncation=True, max_length=seq_len)["input_ids"]
    lengths = np.fromiter((len(r) for r in rows), np.int64, len(rows))
    input_ids = np.full((len(rows), seq_len), pad_id(tokenizer), np.int32)
    mask = np.arange(seq_len)[None, :] < lengths[:, None]
    if len(rows):
        input_ids[mask] = np.concatenate([np.asarray(r, np.int32) for r in rows])
    return {"input_ids": input_ids, "attention_mask": mask.astype(np.int32),
            "labels": np.asarray(labels, np.int32)}


# --- chat ---------------------------------------------------------------------------------------


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation with the chat template; return (text, [(start, end) character spans]),
    one span per assistant message covering its content plus the end-of-turn (eos) token after it.

    Spans come from the template itself: the text rendered up to and including assistant message i
    is a prefix of the full text whose last eos token closes that message, so the content must end
    right before it (templates that strip content are accepted via `content.strip()`).
    """
    render = lambda msgs: tokenizer.apply_chat_template(msgs, tokenize=False)
    text, eos = render(messages), tokenizer.eos_token
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        head = render(messages[: i + 1]) if i + 1 < len(messages) else text
        end = head.rfind(eos)
        content = next((c for c in (message["content"], message["content"].strip())
                        if end >= 0 and head[end - len(c): end] == c), None)
        if content is None or not text.startswith(head):
            raise ValueError(f"the chat template does not render assistant message {i} verbatim followed by "
                             f"the eos token {eos!r}; cannot build the loss mask")
        spans.append((end - len(content), end + len(eos)))
    return text, spans


def encode_chat(tokenizer, conversations: Iterable[list[dict]], seq_len: int
                ) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Tokenise conversations to (token ids (m,), assistant mask (m,)) pairs, m <= L.

    A token is masked in (= trained on) when its characters overlap an assistant span: the assistant
    contents and their `<|im_end|>`, never the role headers or the other turns. Conversations longer
    than L tokens are TRUNCATED to their first L tokens; those left with no supervised next-token
    target (mask[1:] all zero) are dropped. Returns (ids, masks, counts of kept/truncated/dropped).
    """
    rendered = [assistant_spans(tokenizer, m) for m in conversations]
    texts, spans = [t for t, _ in rendered], [s for _, s in rendered]
    enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    ids_out, masks_out, stats = [], [], {"truncated": 0, "dropped": 0}
    for ids, offsets, conv_spans in zip(enc["input_ids"], enc["offset_mapping"], spans):
        stats["truncated"] += len(ids) > seq_len
        offsets = np.asarray(offsets[:seq_len], np.int64).reshape(-1, 2)
        mask = np.zeros(len(offsets), bool)
        for start, end in conv_spans:
            mask |= (offsets[:, 1] > start) & (offsets[:, 0] < end)
        if not mask[1:].any():
            stats["dropped"] += 1
            continue
        ids_out.append(np.asarray(ids[:seq_len], np.int32))
        masks_out.append(mask)
    stats["kept"] = len(ids_out)
    return ids_out, masks_out, stats


def _next_fit(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy in-order packing (O(n), deterministic): a sequence opens a new row when it does not fit
    in the current one. Returns per-sequence (row, column offset, 1-based segment id)."""
    row, offset, segment = (np.empty(len(lengths), np.int64) for _ in range(3))
    r, used, seg = 0, 0, 0
    for i, m in enumerate(lengths):
        if used + m > seq_len and used > 0:
            r, used, seg = r + 1, 0, 0
        row[i], offset[i], segment[i] = r, used, seg + 1
        used, seg = used + m, seg + 1
    return row, offset, segment


def pack(seqs: Sequence[np.ndarray], masks: Sequence[np.ndarray], seq_len: int, pad: int,
         packing: bool = True) -> Arrays:
    """Place sequences (each <= L tokens) in (n, L) rows, several per row when `packing`, else one.

    targets[t] = input_ids[t+1] and loss_mask[t] = mask[t+1] only when t and t+1 belong to the same
    sequence, so no prediction crosses a segment boundary; with segment_ids the model's attention
    mask (same segment, causal) keeps packed sequences from seeing each other.
    """
    lengths = np.fromiter((len(s) for s in seqs), np.int64, len(seqs))
    if packing:
        row, offset, segment = _next_fit(lengths, seq_len)
    else:
        row, offset, segment = np.arange(len(seqs)), np.zeros_like(lengths), np.ones_like(lengths)
    n_rows = int(row[-1]) + 1 if len(seqs) else 0
    out = {"input_ids": np.full((n_rows, seq_len), pad, np.int32),
           "targets": np.full((n_rows, seq_len), pad, np.int32),
           "loss_mask": np.zeros((n_rows, seq_len), np.float32),
           "segment_ids": np.zeros((n_rows, seq_len), np.int32),
           "positions": np.zeros((n_rows, seq_len), np.int32)}
    if not len(seqs):
        return out
    # Flat token-level coordinates: token k of sequence i lands at (row[i], offset[i] + k).
    ids, mask = np.concatenate(seqs), np.concatenate(masks)
    seq_of = np.repeat(np.arange(len(seqs)), lengths)
    pos = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows, cols = np.repeat(row, lengths), np.repeat(offset, lengths) + pos
    same_next = np.append(seq_of[:-1] == seq_of[1:], False)  # token t+1 is in t's sequence
    next_ids, next_mask = np.append(ids[1:], pad), np.append(mask[1:], False)
    out["input_ids"][rows, cols] = ids
    out["targets"][rows, cols] = np.where(same_next, next_ids, pad)
    out["loss_mask"][rows, cols] = same_next & next_mask
    out["segment_ids"][rows, cols] = np.repeat(segment, lengths)
    out["positions"][rows, cols] = pos
    return out


# --- plain text ---------------------------------------------------------------------------------


def encode_text(tokenizer, docs: Sequence[str]) -> np.ndarray:
    """One token stream (T,) int32: each document's tokens followed by eos (the document separator)."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else pad_id(tokenizer)
    rows = tokenizer(list(docs), add_special_tokens=False)["input_ids"]
    return np.concatenate([np.asarray(r + [eos], np.int32) for r in rows] or [np.zeros(0, np.int32)])


def windows(stream: np.ndarray, seq_len: int, pad: int) -> Arrays:
    """Cut a (T,) stream into windows of L+1 tokens with stride L, so each token after the first is
    predicted exactly once. The last window is padded (loss_mask 0, segment 0). One segment per row:
    documents are separated by eos, GPT-style, and attention spans the whole window."""
    n = len(stream)
    if n < 2:
        raise ValueError(f"a token stream of {n} tokens has nothing to predict")
    n_rows = max(1, math.ceil((n - 1) / seq_len))
    idx = np.arange(n_rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    valid = idx < n
    w = np.where(valid, stream[np.minimum(idx, n - 1)], pad).astype(np.int32)
    real = valid[:, :-1]
    return {"input_ids": w[:, :-1], "targets": w[:, 1:], "loss_mask": valid[:, 1:].astype(np.float32),
            "segment_ids": real.astype(np.int32),
            "positions": np.where(real, np.arange(seq_len)[None, :], 0).astype(np.int32)}


def apply_id_map(arrays: Arrays, id_map: np.ndarray) -> Arrays:
    """Map token ids through `id_map[old_id] -> new_id` (the trimmed-vocabulary mini model).
    Raises if a token is outside the map or maps to a negative id (not in the trimmed vocabulary)."""
    id_map = np.asarray(id_map)
    out = dict(arrays)
    for key in ("input_ids", "targets"):
        if key not in arrays:
            continue
        ids = arrays[key]
        if ids.size and ids.max() >= len(id_map):
            raise ValueError(f"{key} holds token id {ids.max()} but id_map covers only {len(id_map)} ids")
        mapped = id_map[ids]
        if (mapped < 0).any():
            missing = np.unique(ids[mapped < 0])
            raise ValueError(f"{len(missing)} token ids are not in the trimmed vocabulary (id_map < 0), "
                             f"e.g. {missing[:10].tolist()}")
        out[key] = mapped.astype(np.int32)
    return out


# --- batching -----------------------------------------------------------------------------------


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    """Default to this JAX process's place among all processes."""
    if shard_index is None or shard_count is None:
        import jax

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
    return shard_index, shard_count


def _gather(arrays: Arrays, idx: np.ndarray) -> Arrays:
    return {k: a[idx] for k, a in arrays.items()}


def _mix_seed(seed: int) -> int:
    # grain seeds epoch e with seed + e, so seeds 0 and 1 would share all but one epoch's order;
    # hashing the seed first makes nearby seeds unrelated.
    return int(np.random.SeedSequence(seed).generate_state(1)[0])


def make_iterator(arrays: Arrays, *, batch_size: int, seed: int, shuffle: bool = True,
                  num_epochs: int | None = None, drop_remainder: bool = True,
                  shard_index: int | None = None, shard_count: int | None = None, num_threads: int = 0):
    """A checkpointable grain iterator of batches {key: (B / shard_count, ...)}.

    Index pipeline: range(n) -> shuffle(seed; reshuffled each epoch) -> repeat(num_epochs; None =
    forever) -> global batches of B indices -> this shard's contiguous slice -> gather the rows.
    Every shard builds the same global batches, so shards hold disjoint slices of each of them.
    The iterator's `get_state()` (a JSON-able dict, what grain's CheckpointHandler saves) and
    `set_state()` resume exactly the same order. Without drop_remainder the final short global
    batch is split as evenly as possible (slices may be shorter, even empty).
    """
    import grain

    shard_index, shard_count = _shard(shard_index, shard_count)
    if batch_size % shard_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {shard_count} shards")
    n = num_rows(arrays)
    ds = grain.MapDataset.range(n)
    if shuffle:
        ds = ds.shuffle(seed=_mix_seed(seed))
    ds = ds.repeat(num_epochs).batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(lambda idx: _gather(arrays, np.array_split(np.asarray(idx), shard_count)[shard_index]))
    # In-memory arrays: threads only add GIL contention unless asked for (num_workers).
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    return iter(ds.to_iter_dataset(read))


def eval_batches(arrays: Arrays, batch_size: int, *, shard_index: int | None = None,
                 shard_count: int | None = None) -> Iterator[Arrays]:
    """The whole split in order, in fixed-shape batches {key: (B / shard_count, ...)} plus
    `weight` (B / shard_count,) float32: 1 for real rows, 0 for the padding of the last batch.

    Padding rows copy row 0 (numerically safe: never an all-masked row) and get loss_mask 0, so
    sums weighted by `weight` (classify) or by `loss_mask` (chat/text) count every example once.
    """
    shard_index, shard_count = _shard(shard_index, shard_count)
    if batch_size % shard_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {shard_count} shards")
    n, local = num_rows(arrays), batch_size // shard_count
    for start in range(0, n, batch_size):
        idx = start + shard_index * local + np.arange(local)
        valid = idx < n
        batch = _gather(arrays, np.where(valid, idx, 0))
        if "loss_mask" in batch:
            batch["loss_mask"] = batch["loss_mask"] * valid[:, None]
        batch["weight"] = valid.astype(np.float32)
        yield batch
