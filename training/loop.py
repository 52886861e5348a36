"""The one training loop: batches -> sharded train step -> metrics, eval and checkpoints.

    summary = train(config, workdir)           # an offline run: build, then fit
    state, summary = fit(exp, state, ...)      # the loop itself, also run by every online round

`fit` is here once for every algorithm: the jitted step with explicit shardings, periodic
eval, orbax checkpoints with exact resume, SIGTERM handling, metrics to JSONL/TensorBoard/
progress bar. `train` builds an experiment (`training/experiment.py`), adds the precomputed
reference when asked, runs `fit` and plots the curves. Online algorithms run their rounds
with `training.rounds.iterate` (experiments/iterate.py), each round a `fit`.
"""

from __future__ import annotations

import os
import signal
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

import algorithms
from training import config_check
from training import workdir as workdir_lib
from training.checkpoint import Checkpointer, data_position_fn
from training.experiment import (Experiment, activation_mesh, build, logp_options,
                                 make_eval_batches, make_train_step_for)
from training.mesh import batch_sharding, put_batch, replicated
from training.metrics import MetricsWriter, plot_curves, read_metrics
from training.optim import learning_rate_schedule, make_optimizer
from training.reference import ReferenceCache, fingerprint
from training.step import (TrainState, initial_rng, make_eval_step, make_train_step,
                           pair_logps)


class NonFiniteError(FloatingPointError):
  """Raised by `config.nonfinite = "halt"` (the update of that step was not applied).

  Attributes: `step` (the update that failed, as logged in metrics.jsonl), `batch_index`
  (= step - 1, the `PreferenceBatcher.batch` index), `example_ids` of this process's rows,
  `nonfinite`, the names of the non-finite metrics (`loss` and/or `grad_norm` first), and
  `state`, the TrainState after the rejected update (params and optimizer state unchanged).
  """

  def __init__(self, step: int, example_ids: list[int], metrics: dict, state=None):
    values = {k: float(np.asarray(v)) for k, v in metrics.items() if np.size(v) == 1}
    first = [k for k in ("loss", "grad_norm") if not np.isfinite(values.get(k, 0.0))]
    self.step, self.batch_index, self.example_ids = step, step - 1, list(example_ids)
    self.state = state
    self.nonfinite = first + sorted(k for k, v in values.items()
                                    if not np.isfinite(v) and k not in first)
    shown = ", ".join(f"{k}={values[k]}" for k in self.nonfinite)
    super().__init__(
        f"non-finite {' and '.join(first) or 'metrics'} at step {step} (batch {step - 1}, "
        f"example ids {self.example_ids}): {shown}; the update was not applied and the run "
        "stopped without checkpointing this step (config.nonfinite='halt')")


def _reference_cache(exp: Experiment, workdir: str) -> tuple[ReferenceCache, ReferenceCache]:
  """Computes (or loads) the reference log-probs of the train and eval splits."""
  config = exp.config
  key = fingerprint({"data": config.data.to_dict(), "model": config.model.to_dict(),
                     "seed": config.seed, "process": jax.process_index(),
                     "source": [len(exp.train_source), len(exp.eval_source)]})
  logps_fn = jax.jit(lambda p, b: pair_logps(exp.graphdef, p, b, logp_options(config)))
  caches = []
  for split, pairs in (("train", exp.train_batches.pairs), ("eval", exp.eval_batches.pairs)):
    path = os.path.join(workdir, "reference_cache", f"{split}-{key}.npz")
    if os.path.exists(path):
      caches.append(ReferenceCache.load(path))
      continue
    logging.info("precomputing reference log-probs for the %s split -> %s", split, path)
    cache = ReferenceCache.compute(
        lambda b: logps_fn(exp.ref_params, put_batch(b, exp.mesh)),
        make_eval_batches(config, pairs),
        gather=_whole_batch if jax.process_count() > 1 else jax.device_get)
    cache.save(path)
    caches.append(cache)
  return caches[0], caches[1]


def _whole_batch(x):
  """This process's slice of a batch array (numpy), or a batch-sharded global array -> the
  whole global batch on this host: the processes' slices in process order."""
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(x, tiled=True)


def evaluate(exp: Experiment, eval_fn, params, ref_params, ref_cache=None) -> dict:
  """Exact averages of the loss metrics over the whole eval split."""
  totals, weight = None, 0.0
  for batch in exp.eval_batches:
    if ref_cache is not None:
      batch = ref_cache.attach(batch)
    sums, w = jax.device_get(eval_fn(params, ref_params, put_batch(batch, exp.mesh)))
    totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    weight += float(w)
  return {f"eval/{k}": float(v) / weight for k, v in totals.items()}


class _StopRequest:
  """SIGTERM/SIGINT ask the loop to checkpoint at the next step boundary and exit cleanly."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: checkpointing at the next step boundary", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _tokens(batch) -> int:
  return int(sum(np.sum(v) for k, v in batch.items() if k.endswith("_attention_mask")))


def _checkpoint(checkpointer: Checkpointer, writer: MetricsWriter, step: int, state, *,
                force: bool = False) -> bool:
  """Saves a due checkpoint after making metrics.jsonl durable; True if one was due.

  Order matters for resume: metrics.jsonl is truncated to the checkpoint's step on restart,
  so it must hold every step up to the checkpoint even after a machine crash (fsync first);
  lines logged after the checkpoint are rewritten by the resumed run.
  """
  if not checkpointer.is_due(step, force=force):
    return False
  writer.sync()
  checkpointer.maybe_save(step, state, force=force)
  return True


def train_side_model(exp: Experiment, loss_name: str, loss_cfg, opt_cfg, steps: int, params,
                     ref_params, batches):
  """`steps` plain jitted updates of a model beside the run (the SFT warm-up, PRIME's PRM):
  no checkpoints, metrics files or eval. Returns (params, per-step losses)."""
  optimizer = make_optimizer(opt_cfg, steps)
  step_fn = jax.jit(make_train_step(exp.graphdef, algorithms.get_algorithm(loss_name), loss_cfg,
                                    optimizer, learning_rate_schedule(opt_cfg, steps),
                                    mesh=activation_mesh(exp.config, exp.mesh)))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params), skipped_steps=jnp.zeros((), jnp.int32))
  losses = []
  for step in range(steps):
    state, metrics = step_fn(state, ref_params, put_batch(batches.batch(step), exp.mesh))
    losses.append(metrics["loss"])
  return state.params, [float(x) for x in jax.device_get(losses)]


def fresh_state(exp: Experiment, params) -> TrainState:
  """A TrainState at step 0 holding `params` (in the experiment's shardings) and a new
  optimizer state: what every online round starts from."""
  sharding = exp.state_sharding
  # New arrays throughout: the step donates its state, so nothing may alias exp.state.
  params = jax.tree.map(jnp.copy, jax.device_put(params, sharding.params))
  opt_state = jax.jit(exp.optimizer.init, out_shardings=sharding.opt_state)(params)
  zero = lambda: jax.device_put(jnp.zeros((), jnp.int32), sharding.step)  # noqa: E731
  return TrainState(step=zero(), params=params, opt_state=opt_state, skipped_steps=zero(),
                    rng=jax.device_put(initial_rng(exp.config.seed), sharding.rng))


def fit(exp: Experiment, state: TrainState, batches, workdir: str, *,
        evaluate_split: Optional[Callable[[object], dict]] = None, ref_params=None,
        train_cache: Optional[ReferenceCache] = None, stop_at: Optional[int] = None,
        total_steps: Optional[int] = None,
        on_start: Optional[Callable[[int], dict]] = None) -> tuple[TrainState, dict]:
  """Runs (or resumes from `workdir/checkpoints`) `total_steps` updates on `batches`.

  `batches.batch(s)` is the global batch of step s (a `data.PreferenceBatcher`);
  `ref_params` the frozen model of the step (None when the batches carry its log-probs);
  `train_cache` precomputed reference log-probs attached to each batch; `evaluate_split(params)`
  the held-out metrics logged at step 0, every `config.eval_every` steps and at the end.
  Metrics go to `workdir/metrics.jsonl` (resumed runs truncate it to their checkpoint).
  `stop_at` ends after that step with a checkpoint, as a preemption would.
  `on_start(start_step)` runs once the checkpoint (if any) has restored, before anything is
  written; the dict it returns is logged in metrics.jsonl at the start step.
  A failed checkpoint save or metrics write stops the run at once (`WorkdirIOError`).
  Returns (final state, summary: start_step, final_step, stopped_early, final_metrics,
  skipped_steps).
  """
  config, mesh = exp.config, exp.mesh
  total_steps = config.total_steps if total_steps is None else total_steps
  ref_sharding = None if ref_params is None else jax.tree.map(lambda x: x.sharding, ref_params)
  train_step = jax.jit(make_train_step_for(exp),
                       in_shardings=(exp.state_sharding, ref_sharding, batch_sharding(mesh)),
                       out_shardings=(exp.state_sharding, replicated(mesh)), donate_argnums=(0,))
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                              keep=config.keep_checkpoints, save_every=config.checkpoint_every,
                              data_position=data_position_fn(batches))
  writer = None
  # From here on SIGTERM/SIGINT end the run cleanly (exit 0 from the CLI) at the next step
  # boundary, with a checkpoint; a restore or eval in progress finishes first.
  with _StopRequest() as stop:
    try:
      if checkpointer.latest_step() is not None:
        state = checkpointer.restore(state)
        logging.info("resumed from step %d", int(state.step))
      start = int(state.step)
      note = on_start(start) if on_start is not None else {}
      writer = MetricsWriter(workdir, total_steps=total_steps, start_step=start,
                             progress_bar=config.progress_bar)
      if note:
        writer.note(start, note)
      if start == 0 and evaluate_split is not None:
        writer.write(0, evaluate_split(state.params))
      writer.restart_clock(start)

      step, metrics = start, {}
      last = total_steps if stop_at is None else min(stop_at, total_steps)
      while step < last and not stop.requested:
        batch = batches.batch(step)
        if train_cache is not None:
          batch = train_cache.attach(batch)
        state, metrics = train_step(state, ref_params, put_batch(batch, mesh))
        step += 1
        checkpointer.check_for_errors()  # a failed background save stops the run here
        log_now = step % config.log_every == 0 or step == total_steps
        if log_now:  # throughput is measured on finished steps, not dispatched ones
          metrics = jax.block_until_ready(metrics)
        rates = writer.advance(step, _tokens(batch) * jax.process_count(), measure=log_now)
        if config.nonfinite == "halt" and float(metrics["nonfinite"]):
          raise NonFiniteError(step, batch["example_id"].tolist(), jax.device_get(metrics),
                               state)
        logged = {}
        if log_now:
          logged.update(jax.device_get(metrics), skipped_steps=int(state.skipped_steps), **rates)
        evaluate_now = evaluate_split is not None and (
            (config.eval_every and step % config.eval_every == 0) or step == total_steps)
        if evaluate_now:
          logged.update(evaluate_split(state.params))
        if logged:
          writer.write(step, logged)
        if _checkpoint(checkpointer, writer, step, state, force=stop.requested) or evaluate_now:
          writer.restart_clock(step)
      _checkpoint(checkpointer, writer, step, state, force=True)
    except BaseException:
      # Also on an exception (a halt included): an in-flight save completes instead of
      # leaving a tmp directory behind; the state of a failed step is never saved. The first
      # error is the one reported.
      _close_quietly(checkpointer, writer)
      raise
    checkpointer.close()
    if writer is not None:
      writer.close()
  if stop.requested:
    logging.warning("stopped on request after step %d; its checkpoint is complete", step)
  summary = dict(start_step=start, final_step=step, stopped_early=step < total_steps,
                 stop_requested=stop.requested,
                 final_metrics={k: float(np.asarray(v)) for k, v in metrics.items()},
                 skipped_steps=int(state.skipped_steps))
  return state, summary


def _close_quietly(*closeables) -> None:
  for c in closeables:
    if c is not None:
      try:
        c.close()
      except Exception as e:  # noqa: BLE001 - an error is already on its way up
        logging.warning("while stopping: %s: %s", type(e).__name__, e)


def maybe_export(config, workdir: str) -> dict | None:
  """The finished run written to `config.export.hf_dir` as a HF checkpoint, when set."""
  out = config.get("export", {}).get("hf_dir")
  if not out:
    return None
  from training.export import export_run
  return export_run(workdir, out)


def recorder(config, workdir: str, changes: dict) -> Callable[[int], dict]:
  """`fit`'s `on_start`: writes config.json and the history of accepted changes once the
  checkpoint has restored (every check passed), and returns the note metrics.jsonl keeps."""
  def record(step: int) -> dict:
    if jax.process_index() == 0:
      workdir_lib.record_config(config, workdir, changes, step=step)
    return workdir_lib.change_note(changes)
  return record


def train(config, workdir: str, *, stop_at: int | None = None) -> dict:
  """Runs (or resumes) an offline training run; returns a summary with the first and last
  eval metrics. Online algorithms run rounds instead (`training.rounds.iterate`).

  `stop_at` ends this run after that step with a checkpoint, as a preemption would (for
  time-sliced jobs and resume tests); a later call with the same workdir continues.
  """
  if algorithms.get_algorithm(config.loss.name).requirements.online is not None:
    raise config_check.ConfigError(
        f"loss {config.loss.name!r} is an online algorithm: its data comes from rounds of "
        "sampling; run it with `python -m experiments.iterate` (training.rounds.iterate)")
  with workdir_lib.claim(workdir, writer=jax.process_index() == 0):
    changes = workdir_lib.check_resume(config, workdir)
    return _train(config, workdir, changes, stop_at)


def _train(config, workdir: str, changes: dict, stop_at: int | None) -> dict:
  exp = build(config, workdir)
  ref_params = exp.ref_params
  train_cache = eval_cache = None
  if ref_params is not None and config.reference.mode == "precomputed":
    train_cache, eval_cache = _reference_cache(exp, workdir)
    ref_params = None  # the step never sees the reference weights
  exp.ref_params = None
  eval_fn = jax.jit(make_eval_step(exp.graphdef, exp.algorithm, config.loss,
                                   logps=logp_options(config),
                                   mesh=activation_mesh(config, exp.mesh)))
  state, summary = fit(
      exp, exp.state, exp.train_batches, workdir, ref_params=ref_params,
      train_cache=train_cache, stop_at=stop_at, on_start=recorder(config, workdir, changes),
      evaluate_split=lambda params: evaluate(exp, eval_fn, params, ref_params, eval_cache))
  if summary["final_step"] == config.total_steps and jax.process_index() == 0:
    evals = [r for r in read_metrics(workdir) if any(k.startswith("eval/") for k in r)]
    if evals:
      summary["first_eval"] = {k: v for k, v in evals[0].items() if k.startswith("eval/")}
      summary["final_eval"] = {k: v for k, v in evals[-1].items() if k.startswith("eval/")}
    summary["plot"] = plot_curves(workdir)
    summary["export"] = maybe_export(config, workdir)
  summary["state"] = state
  return summary
