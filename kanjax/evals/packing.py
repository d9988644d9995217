"""Shared-prefix packing of scoring requests: each distinct context is run once, its continuations
after it in the same row, several questions per row.

Shape letters: b rows, t row length, w scored targets per row.

A request (context ids c, continuation ids k) asks for log p(k | c). Its scored positions are the
last context token (predicts k[0]) and the continuation's tokens but the last (k[i] predicts
k[i+1]). Requests whose (possibly left-truncated) contexts are the same token list form a group:

    row:      [ c0 c1 c2 c3 | a0 a1 | b0 | ... next group ... | pad ]
    segment:    1  1  1  1    1  1    1        2                 0
    branch:     0  0  0  0    1  1    2        0 / 1..           0
    position:   0  1  2  3    4  5    4        0 ..              0

A token sees the earlier tokens of its own segment that are the shared context (branch 0) or of its
own branch: continuation a never sees continuation b, and each sees the context exactly as an
unpacked row would, at the same positions, so the log-likelihoods are the unpacked ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Request:
    """One scoring request cut for packing: prefix (shared context), suffix = continuation[:-1]
    (the inputs after the prefix), targets = continuation (scored)."""

    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    targets: tuple[int, ...]


def cut_request(ctx_ids: Sequence[int], cont_ids: Sequence[int], max_len: int) -> Request:
    """As `evaluate.make_row`: keep the last max_len + 1 tokens of context + continuation."""
    if not cont_ids:
        raise ValueError("empty continuation: nothing to score")
    if len(cont_ids) > max_len:
        raise ValueError(f"continuation of {len(cont_ids)} tokens exceeds the model limit of {max_len}")
    if not ctx_ids:
        raise ValueError("empty context: prefix the BOS (or EOS) token, as evaluate.encode_pair does")
    prefix = tuple(int(i) for i in ctx_ids)[-(max_len + 1 - len(cont_ids)):]
    cont = tuple(int(i) for i in cont_ids)
    return Request(prefix, cont[:-1], cont)


def groups(requests: Sequence[Request], capacity: int) -> list[tuple[tuple[int, ...], list[int]]]:
    """Requests with the same prefix -> [(prefix, [request index])], each group fitting `capacity`
    tokens (prefix + all its suffixes); a group too long for one row is split, the prefix repeated."""
    by_prefix: dict[tuple[int, ...], list[int]] = {}
    for i, r in enumerate(requests):
        by_prefix.setdefault(r.prefix, []).append(i)
    out = []
    for prefix, members in by_prefix.items():
        current, used = [], len(prefix)
        for i in members:
            n = len(requests[i].suffix)
            if current and used + n > capacity:
                out.append((prefix, current))
                current, used = [], len(prefix)
            current.append(i)
            used += n
        out.append((prefix, current))
    return out


def group_length(requests: Sequence[Request], group: tuple[tuple[int, ...], list[int]]) -> int:
    prefix, members = group
    return len(prefix) + sum(len(requests[i].suffix) for i in members)


def assign_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing bin packing of group lengths into rows of `capacity` -> [[group index]]."""
    rows: list[list[int]] = []
    free: list[int] = []
    for g in sorted(range(len(lengths)), key=lambda g: -lengths[g]):
        for r, room in enumerate(free):
            if lengths[g] <= room:
                rows[r].append(g)
                free[r] -= lengths[g]
                break
        else:
            rows.append([g])
            free.append(capacity - lengths[g])
    return rows


@dataclasses.dataclass
class PackedBatch:
    """Arrays of one scoring call; target slots beyond a row's real targets have owner -1."""

    tokens: np.ndarray  # (b,t) int32
    positions: np.ndarray  # (b,t) int32
    segment: np.ndarray  # (b,t) int32, 0 = padding
    branch: np.ndarray  # (b,t) int32, 0 = shared context
    target_index: np.ndarray  # (b,w) int32: row slot whose logits predict the target
    target_token: np.ndarray  # (b,w) int32
    owner: np.ndarray  # (b,w) int32: request index, -1 = padding


def pack_rows(requests: Sequence[Request], row_groups: Sequence[Sequence[tuple[tuple[int, ...], list[int]]]],
              length: int, width: int, batch: int) -> PackedBatch:
    """Lay out `batch` rows (missing ones are padding), each a list of groups, into arrays."""
    shape = (batch, length)
    tokens, positions = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    segment, branch = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    t_index, t_token = np.zeros((batch, width), np.int32), np.zeros((batch, width), np.int32)
    owner = np.full((batch, width), -1, np.int32)
    for r, row in enumerate(row_groups):
        at, slot = 0, 0
        for seg, (prefix, members) in enumerate(row, start=1):
            n = len(prefix)
            tokens[r, at:at + n], positions[r, at:at + n], segment[r, at:at + n] = prefix, np.arange(n), seg
            last_context = at + n - 1
            at += n
            for j, i in enumerate(members, start=1):
                req = requests[i]
                m = len(req.suffix)
                tokens[r, at:at + m], positions[r, at:at + m] = req.suffix, n + np.arange(m)
                segment[r, at:at + m], branch[r, at:at + m] = seg, j
                k = len(req.targets)
                t_index[r, slot:slot + k] = [last_context] + list(range(at, at + m))
                t_token[r, slot:slot + k], owner[r, slot:slot + k] = req.targets, i
                at, slot = at + m, slot + k
    return PackedBatch(tokens, positions, segment, branch, t_index, t_token, owner)


def row_targets(requests: Sequence[Request], row: Sequence[tuple[tuple[int, ...], list[int]]]) -> int:
    return sum(len(requests[i].targets) for _, members in row for i in members)


__all__ = ["Request", "cut_request", "groups", "group_length", "assign_rows", "PackedBatch", "pack_rows",
           "row_targets"]
