"""Where metrics go: WORKDIR/metrics.jsonl, TensorBoard events, a progress bar, a PNG.

Each JSONL line is one object with key `step` (optimizer updates done) and the metrics logged
at that step; eval metrics carry the prefix `eval/`. Only process 0 writes.

Resume keeps the file exact: a run restarted from the checkpoint of step s first drops every
line after s (the resumed run logs those steps again) and a last line cut short by a kill, so
no step is missing or duplicated.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time

import jax
import numpy as np
from absl import logging

from training.workdir import io_error

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
    self._rates: dict = {}
    if not self._is_main:
      return
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    with self._io("write"):
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
    """Keeps the lines of steps this run will not log again: those up to its checkpoint.

    A run from step 0 logs step 0 (the first eval) itself, so it keeps nothing: a run killed
    before its first checkpoint leaves no duplicate step 0 behind.
    """
    if not os.path.exists(self.path):
      return
    kept = [line for line, record in _parse_lines(self.path)
            if step > 0 and record["step"] <= step]
    tmp = self.path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(kept)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self.path)  # a kill now leaves the old file or the new one, never half

  @contextlib.contextmanager
  def _io(self, what: str):
    """A failed write (no space left, ...) as one line naming the file (WorkdirIOError)."""
    try:
      yield
    except OSError as e:
      raise io_error(e, f"{what} {self.path}") from e

  def _append(self, record: dict):
    with self._io("write"):
      self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
      self._jsonl.flush()

  def note(self, step: int, fields: dict):
    """A line of non-numeric facts about `step` (e.g. `config/changed`), JSONL only."""
    if self._is_main:
      self._append({"step": int(step), **fields})

  def write(self, step: int, metrics: dict):
    if not self._is_main:
      return
    record = {"step": int(step), **{k: _to_python(v) for k, v in metrics.items()}}
    self._append(record)
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def sync(self):
    """Makes every line written so far durable (called before each checkpoint)."""
    if self._is_main:
      with self._io("write"):
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())

  def advance(self, step: int, tokens: int, metrics: dict | None = None, *,
              measure: bool = True) -> dict:
    """Progress bar update after `step`; with `measure`, returns the throughput since the
    last measurement (or `restart_clock`).

    Steps are dispatched asynchronously, so the caller measures only after blocking on the
    step's results (the loop does so at logging steps); timing one unblocked step would
    time its dispatch, not its compute.
    """
    self._tokens += tokens
    if measure:
      now = time.perf_counter()
      elapsed = now - self._last_time
      if step > self._last_step and elapsed > 0:
        self._rates = {"perf/steps_per_s": (step - self._last_step) / elapsed,
                       "perf/tokens_per_s": self._tokens / elapsed}
      self._last_time, self._last_step, self._tokens = now, step, 0
    if self._bar is not None:
      self._bar.update(step - self._bar.n)
      shown = {"tok/s": f"{self._rates.get('perf/tokens_per_s', 0):.0f}"}
      if metrics and "loss" in metrics:
        shown["loss"] = f"{float(metrics['loss']):.4f}"
      self._bar.set_postfix(shown, refresh=False)
    return dict(self._rates) if measure else {}

  def restart_clock(self, step: int):
    """Starts the next throughput window now: time spent in eval or checkpoints is not
    training throughput."""
    self._last_time, self._last_step, self._tokens = time.perf_counter(), step, 0

  def close(self):
    if not self._is_main:
      return
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.close()
    with self._io("write"):
      self._jsonl.close()


def _parse_lines(path: str) -> list[tuple[str, dict]]:
  """(line, record) pairs of a metrics.jsonl; a last line cut short by a kill is dropped."""
  with open(path, encoding="utf-8") as f:
    lines = [line for line in f if line.strip()]
  out = []
  for i, line in enumerate(lines):
    try:
      out.append((line if line.endswith("\n") else line + "\n", json.loads(line)))
    except json.JSONDecodeError:
      if i != len(lines) - 1:
        raise ValueError(f"{path}: line {i + 1} is not JSON: {line[:200]!r}") from None
      logging.warning("%s: ignoring a last line cut short (%d characters)", path, len(line))
  return out


def read_metrics(workdir: str) -> list[dict]:
  """The records of WORKDIR/metrics.jsonl, in order (a half-written last line is skipped)."""
  return [record for _, record in _parse_lines(os.path.join(workdir, "metrics.jsonl"))]


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
