"""Where metrics go: WORKDIR/metrics.jsonl, TensorBoard events, a progress bar, a PNG.

Each JSONL line is one object with key `step` (optimizer updates done) and the metrics logged
at that step; eval metrics carry the prefix `eval/`. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np

PLOTTED = ("loss", "rewards/accuracies", "rewards/margins", "eval/loss",
           "eval/rewards/accuracies", "eval/rewards/margins")


def _to_python(value):
  value = np.asarray(value)
  return value.item() if value.size == 1 else value.tolist()


class MetricsWriter:
  """Appends metrics to JSONL and TensorBoard; keeps the progress bar's rates."""

  def __init__(self, workdir: str, *, total_steps: int, start_step: int = 0,
               progress_bar: bool = True):
    self.workdir = workdir
    self._is_main = jax.process_index() == 0
    self._total_steps = total_steps
    self._tb = None
    self._bar = None
    self._last_time, self._last_step, self._tokens = time.perf_counter(), start_step, 0
    if not self._is_main:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._truncate_after(start_step)
    self._jsonl = open(self.path, "a", encoding="utf-8")
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)
    except ImportError:  # TensorBoard is optional; the JSONL file is the record
      self._tb = None
    if progress_bar:
      from tqdm import tqdm
      self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

  def _truncate_after(self, step: int):
    """A resumed run rewrites the steps after its checkpoint: no step logged twice."""
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8") as f:
      kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path, "w", encoding="utf-8") as f:
      f.writelines(kept)

  def write(self, step: int, metrics: dict):
    if not self._is_main:
      return
    record = {"step": int(step), **{k: _to_python(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def advance(self, step: int, tokens: int, metrics: dict | None = None) -> dict:
    """Progress bar update after `step`; returns throughput numbers for the log."""
    self._tokens += tokens
    now = time.perf_counter()
    elapsed = now - self._last_time
    rates = {}
    if step > self._last_step and elapsed > 0:
      rates = {"perf/steps_per_s": (step - self._last_step) / elapsed,
               "perf/tokens_per_s": self._tokens / elapsed}
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      shown = {"tok/s": f"{rates.get('perf/tokens_per_s', 0):.0f}"}
      if metrics and "loss" in metrics:
        shown["loss"] = f"{float(metrics['loss']):.4f}"
      self._bar.set_postfix(shown, refresh=False)
    self._last_time, self._last_step, self._tokens = now, step, 0
    return rates

  def close(self):
    if not self._is_main:
      return
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    self._jsonl.close()


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(workdir: str, keys=PLOTTED) -> str | None:
  """Writes WORKDIR/curves.png with one panel per logged key in `keys`; returns its path."""
  records = read_metrics(workdir)
  present = [k for k in keys if any(k in r for r in records)]
  if not present:
    return None
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  cols = min(3, len(present))
  rows = math.ceil(len(present) / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
  for ax in axes.flat[len(present):]:
    ax.axis("off")
  for ax, key in zip(axes.flat, present):
    points = [(r["step"], r[key]) for r in records if key in r]
    ax.plot(*zip(*points), marker="." if len(points) < 30 else None)
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  path = os.path.join(workdir, "curves.png")
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
