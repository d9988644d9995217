"""What the recorded MLP activations look like, and where a fitted replacement's error sits: the
diagnosis of why a KAN MLP does or does not re-learn a pretrained block (issue #42).

    input_stats(x, y, seq_len, windows)  -> the MLP input's range per channel (percentiles of |x|,
        the share of entries tanh saturates, outlier channels) and the first-token (attention-sink)
        activations against the rest
    error_map(mlp, x, y, windows, seq_len) -> the held-out squared error per output channel, at each
        window's first token and at the rest, and how concentrated it is

Both return plain dicts of floats and short lists (JSON records); arrays are read in window chunks
from the memory-mapped recording.
"""

from __future__ import annotations

import numpy as np

SATURATED = 2.0  # |x| beyond which tanh'(x) < 0.071: the squash flattens the input
PERCENTILES = (50, 90, 99, 99.9)
TOP = 8  # outlier channels / error channels listed per block


def _rows(a: np.ndarray, windows: np.ndarray, seq_len: int) -> np.ndarray:
    idx = (np.asarray(windows)[:, None] * seq_len + np.arange(seq_len)[None]).reshape(-1)
    return np.asarray(a[idx], np.float32).reshape(len(windows), seq_len, a.shape[-1])


def input_stats(x: np.ndarray, y: np.ndarray, seq_len: int, windows: np.ndarray) -> dict:
    """x, y: (N, d) token-major recordings; windows: the window indices to summarise.

    Percentiles of |x| over all entries and per channel; the share of entries with |x| > SATURATED;
    the channels whose 99th percentile of |x| is largest; and the first token of each window (where
    SmolLM2's late blocks put an attention-sink activation) against the other tokens: median |x|,
    max |x|, and its share of the block's output energy Σ‖y‖²."""
    xw, yw = _rows(x, windows, seq_len), _rows(y, windows, seq_len)
    ax = np.abs(xw)
    rest, first = ax[:, 1:].reshape(-1, ax.shape[-1]), ax[:, 0]
    per_channel_p99 = np.percentile(rest, 99, axis=0)
    order = np.argsort(-per_channel_p99)[:TOP]
    y2 = np.square(yw).sum(-1)  # (windows, seq_len)
    return {
        "tokens": int(xw.shape[0] * xw.shape[1]),
        "abs_x_percentiles_rest": {f"p{p:g}": float(np.percentile(rest, p)) for p in PERCENTILES},
        "abs_x_max_rest": float(rest.max()),
        "saturated_share_rest": float((rest > SATURATED).mean()),
        "saturated_share_first": float((first > SATURATED).mean()),
        "channels_p99_over_1": int((per_channel_p99 > 1).sum()),
        "channels_p99_over_3": int((per_channel_p99 > 3).sum()),
        "outlier_channels": [{"channel": int(c), "p99": float(per_channel_p99[c]), "max": float(ax[..., c].max())}
                             for c in order],
        "first_abs_x_median": float(np.median(first)), "first_abs_x_max": float(first.max()),
        "rest_abs_x_median": float(np.median(rest)),
        "first_y_energy_share": float(y2[:, 0].sum() / max(y2.sum(), 1e-30)),
        "first_abs_y_max": float(np.abs(yw[:, 0]).max()), "rest_abs_y_p99": float(np.percentile(np.abs(yw[:, 1:]), 99)),
    }


def error_map(predict, x: np.ndarray, y: np.ndarray, windows: np.ndarray, seq_len: int,
              batch_windows: int = 16) -> dict:
    """predict: (n, d) inputs -> (n, d) outputs (a fitted MLP). The held-out squared error summed per
    output channel, at first tokens and at the rest, each relative to Σ‖y‖² of the same tokens; the
    channels holding the most of the rest's error and the share the top 1% of channels hold."""
    d = x.shape[-1]
    err = {"first": np.zeros(d), "rest": np.zeros(d)}
    ref = {"first": 0.0, "rest": 0.0}
    for s in range(0, len(windows), batch_windows):
        w = np.asarray(windows[s:s + batch_windows])
        xw, yw = _rows(x, w, seq_len), _rows(y, w, seq_len)
        e = np.square(np.asarray(predict(xw.reshape(-1, d)), np.float64).reshape(yw.shape) - yw)
        err["first"] += e[:, 0].sum(0)
        err["rest"] += e[:, 1:].reshape(-1, d).sum(0)
        ref["first"] += float(np.square(yw[:, 0], dtype=np.float64).sum())
        ref["rest"] += float(np.square(yw[:, 1:], dtype=np.float64).sum())
    rest = err["rest"]
    order = np.argsort(-rest)
    top1 = max(1, d // 100)
    return {
        "rel_err_first": float(np.sqrt(err["first"].sum() / max(ref["first"], 1e-30))),
        "rel_err_rest": float(np.sqrt(rest.sum() / max(ref["rest"], 1e-30))),
        "rest_error_share_top1pct_channels": float(rest[order[:top1]].sum() / max(rest.sum(), 1e-30)),
        "rest_error_channels": [{"channel": int(c), "share": float(rest[c] / max(rest.sum(), 1e-30))}
                                for c in order[:TOP]],
    }
