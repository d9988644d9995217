"""What a person sees of a run: JSON-lines metrics, TensorBoard events, curves, a summary table."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Mapping, Optional

import jax

# Dense bf16 peak FLOP/s per chip, for model-FLOPs utilisation; CPUs have no useful entry.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
              "TPU v6e": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def peak_flops_per_device(override: float = 0.0) -> Optional[float]:
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


class MetricWriter:
    """Appends metrics to <workdir>/metrics.jsonl and TensorBoard events; only process 0 writes."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)
        self.active = jax.process_index() == 0
        self.path = self.workdir / "metrics.jsonl"
        self._tb = None
        if self.active:
            self.workdir.mkdir(parents=True, exist_ok=True)
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(self.workdir / "tensorboard"))

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        if not self.active:
            return
        row = {"step": int(step), "split": split, "time": time.time(),
               **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
