"""What a person sees of a run: JSON-lines metrics, TensorBoard events, curves, a summary table."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import jax

# Dense bf16 peak FLOP/s per chip, for model-FLOPs utilisation; CPUs have no useful entry.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
              "TPU v6e": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def peak_flops_per_device(override: float = 0.0) -> float | None:
    if override:
        return float(override)
    kind = jax.devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if kind.startswith(name):
            return flops
    return None


def flops_per_token(num_params: int, num_layers: int, seq_len: int, width: int) -> float:
    """Training FLOPs per token: 6N for the weights plus 12·L·T·d for attention (PaLM's count)."""
    return 6.0 * num_params + 12.0 * num_layers * seq_len * width


def _json_number(v: float):
    """Strict JSON has no NaN or Infinity: non-finite values are written as the strings "NaN",
    "Infinity", "-Infinity" (what `read_metrics` turns back into floats)."""
    return v if math.isfinite(v) else str(v).replace("nan", "NaN").replace("inf", "Infinity")


def _encode(row: dict) -> str:
    return json.dumps({k: _json_number(v) if isinstance(v, float) else v for k, v in row.items()},
                      allow_nan=False) + "\n"


class MetricWriter:
    """Appends metrics to <workdir>/metrics.jsonl and TensorBoard events; only process 0 writes.

    resume_step: a run resumed from that step first drops the rows it logged after it (they are
    about to be logged again); a row for a (step, split) the file already holds is not written
    again. So the file never holds two rows for one step of one split."""

    def __init__(self, workdir: str | Path, resume_step: int | None = None):
        self.workdir = Path(workdir)
        self.active = jax.process_index() == 0
        self.path = self.workdir / "metrics.jsonl"
        self._tb = None
        if self.active:
            self.workdir.mkdir(parents=True, exist_ok=True)
            rows = read_metrics(self.path)
            if resume_step is not None:
                kept = [r for r in rows if r["step"] <= resume_step]
                if len(kept) != len(rows):
                    self.path.write_text("".join(_encode(r) for r in kept))
                rows = kept
            self._logged = {(r["step"], r["split"]) for r in rows}
            # tensorboardX takes ~2 s to import: done beside the first compile and step (which release
            # the GIL) instead of before them; `tb` waits for it.
            self._tb_thread = threading.Thread(target=self._open_tensorboard, daemon=True)
            self._tb_thread.start()

    def _open_tensorboard(self) -> None:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    @property
    def tb(self):
        """The TensorBoard writer (process 0 only), once its import has finished."""
        if self._tb is None and self.active:
            self._tb_thread.join()
            if self._tb is None:  # the import failed in the thread: raise its error here
                self._open_tensorboard()
        return self._tb

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self.active:
            return
        if (int(step), split) in self._logged:
            return
        self._logged.add((int(step), split))
        row = {"step": int(step), "split": split, "time": time.time(), **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(_encode(row))
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.active:
            self.tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: float(v) if isinstance(v, str) and v in ("NaN", "Infinity", "-Infinity") else v
             for k, v in r.items()} for r in rows]


def plot_curves(metrics_path: str | Path, png_path: str | Path, title: str = "") -> Path:
    """Loss (train, validation) and accuracy (validation, test) against step, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for split, style in (("train", "-"), ("validation", "o-"), ("test", "s")):
        pts = [(r["step"], r["loss"]) for r in rows if r["split"] == split and "loss" in r]
        if pts:
            ax_loss.plot(*zip(*pts), style, label=split, ms=4)
        acc = [(r["step"], r["accuracy"]) for r in rows if r["split"] == split and "accuracy" in r]
        if acc:
            ax_acc.plot(*zip(*acc), style, label=split, ms=4)
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def summary_table(summary: Mapping[str, object]) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for key, value in summary.items():
        shown = f"{value:.4f}" if isinstance(value, float) else f"{value}"
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)
