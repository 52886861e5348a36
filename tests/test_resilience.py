"""Preemption, resume, checkpoint integrity, numerical guards and padding invariance.

The subprocess tests run `experiments.train` on the tiny preset shrunk to the micro config of
conftest.py (one layer, one bucket). They share the suite's persistent XLA compilation cache
(conftest.py), so only the first two processes compile: a resumed process then starts in ~10 s
instead of ~30 s on a 2-core CPU.
"""

import dataclasses
import gc
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algorithms
from algorithms.common import chosen_nll
from data import pipeline
from tests.conftest import ROOT, SUITE_XLA_FLAGS, micro_config
from training import loop
from training import experiment
from training.checkpoint import (Checkpointer, CheckpointMismatchError, CorruptCheckpointError,
                                 checksums, data_position_fn)
from training.mesh import put_batch
from training.metrics import MetricsWriter, read_metrics
from training.step import TrainState, advance_rng, initial_rng, loss_inputs, make_train_step

TOTAL_STEPS = 18

# A failed orbax restore (the damaged-checkpoint tests) leaves read coroutines behind, which
# the garbage collector closes later with an "Exception ignored" message: pytest.ini ignores
# exactly those messages, wherever they surface.


def _flat(tree) -> dict:
  """{path as strings: array}: a checkpoint read back has str keys for int ones (layer
  numbers) and dicts for optax's named tuples."""
  name = lambda k: str(next(getattr(k, a) for a in ("key", "idx", "name") if hasattr(k, a)))
  return {tuple(name(k) for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]}


def _assert_trees_equal(a, b):
  flat_a, flat_b = _flat(a), _flat(b)
  assert sorted(flat_a) == sorted(flat_b)
  for path, x in flat_a.items():
    np.testing.assert_array_equal(x, flat_b[path], err_msg="/".join(path))


# ----------------------------------------------------------------------------------------------
# The CLI under SIGTERM and SIGKILL


@pytest.fixture(scope="module")
def cli(tmp_path_factory, tfds_dir):
  """`start(workdir) -> Popen` of `experiments.train` on the micro config, output in
  WORKDIR.log."""
  # Prepare the TFDS cache once here: concurrent processes must not both build it.
  experiment.load_sources(micro_config(**{"data.data_dir": tfds_dir}), str(tmp_path_factory.mktemp("w")))
  # conftest.py's compilation cache and -O0, and no device count a caller may have set.
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=SUITE_XLA_FLAGS)

  def command(workdir):
    overrides = {
        "data.data_dir": tfds_dir, "total_steps": TOTAL_STEPS, "batch_size": 8,
        "eval_batch_size": 8, "log_every": 1, "eval_every": 6, "checkpoint_every": 2,
        "progress_bar": False, "optimizer.warmup_steps": 1, "model.num_layers": 1,
        "model.hidden_size": 64, "model.intermediate_size": 128, "model.num_kv_heads": 2,
        "data.synthetic_train_size": 256, "data.synthetic_test_size": 24,
        # One bucket: one train-step shape to compile.
        "data.buckets": "(64,)"}
    return ([sys.executable, "-m", "experiments.train", "--config=configs/dpo.py:tiny",
             f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()])

  def start(workdir):
    with open(workdir + ".log", "a") as log:  # the child keeps its own descriptor
      return subprocess.Popen(command(workdir), cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)

  return start


@pytest.fixture(scope="module")
def reference_run(cli, tmp_path_factory):
  """The uninterrupted run, started early so it compiles alongside the first test's run."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  proc = cli(workdir)
  yield proc, workdir
  if proc.poll() is None:
    proc.kill()
    proc.wait()


def _logged_steps(workdir) -> list[int]:
  """Steps in metrics.jsonl so far; tolerates a line being written right now."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  steps = []
  with open(path, encoding="utf-8") as f:
    for line in f:
      try:
        steps.append(json.loads(line)["step"])
      except json.JSONDecodeError:
        pass
  return steps


def _wait_for_step(proc, workdir, target, timeout=240.0) -> bool:
  """Polls until metrics.jsonl shows `target`; False if the process ended first."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if max(_logged_steps(workdir), default=-1) >= target:
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.005)
  raise TimeoutError(f"step {target} not logged in {timeout} s")


def _checkpoint_dirs(workdir):
  path = os.path.join(workdir, "checkpoints")
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


@pytest.mark.long
def test_sigterm_checkpoints_within_one_step_and_exits_0(cli, reference_run, tmp_path):
  del reference_run  # only started here, so that it compiles while this run does
  workdir = str(tmp_path / "run")
  proc = cli(workdir)
  assert _wait_for_step(proc, workdir, 3)
  before = max(_logged_steps(workdir))
  sent = time.monotonic()
  proc.send_signal(signal.SIGTERM)
  after = max(_logged_steps(workdir))  # a step finishing right now counts as before the signal
  assert proc.wait(timeout=60) == 0
  elapsed = time.monotonic() - sent
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    final = ckpt.latest_step()
  print(f"SIGTERM after step {before}: checkpoint {final}, exit 0 after {elapsed:.2f} s")
  # The step in flight when the signal came finishes, then the run checkpoints and exits.
  assert before <= final <= after + 1
  assert _logged_steps(workdir) == list(range(final + 1))


@pytest.mark.long
def test_three_sigkills_resume_to_the_uninterrupted_result(cli, reference_run, tmp_path):
  workdir = str(tmp_path / "run")
  rng = random.Random(int(os.environ.get("FAULT_SEED", "20240607")))  # vary it to soak-test
  reached, kills = 0, []
  for _ in range(3):
    proc = cli(workdir)
    # A target past everything logged so far: lines left by the killed run never count.
    target = reached + rng.randint(1, 3)
    assert _wait_for_step(proc, workdir, target), "the run ended before it could be killed"
    time.sleep(rng.uniform(0.0, 0.1))  # anywhere in a step: mid-update, mid-write, mid-save
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    reached = max(_logged_steps(workdir))
    kills.append((reached, _checkpoint_dirs(workdir)))
  print("killed after steps / checkpoint dirs:", kills)
  assert cli(workdir).wait(timeout=240) == 0

  ref_proc, ref_dir = reference_run
  assert ref_proc.wait(timeout=300) == 0
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ours, \
      Checkpointer(os.path.join(ref_dir, "checkpoints")) as ref:
    assert ours.latest_step() == ref.latest_step() == TOTAL_STEPS
    (state, meta), (ref_state, ref_meta) = ours.read(), ref.read()
  _assert_trees_equal(state, ref_state)  # params, optimizer state, rng: bitwise
  assert meta == ref_meta
  assert not [d for d in _checkpoint_dirs(workdir) if "tmp" in d]  # cleaned up on restart

  records, ref_records = read_metrics(workdir), read_metrics(ref_dir)
  assert [r["step"] for r in records] == list(range(TOTAL_STEPS + 1))
  strip = lambda r: {k: v for k, v in r.items() if not k.startswith("perf/")}
  assert [strip(r) for r in records] == [strip(r) for r in ref_records]


# ----------------------------------------------------------------------------------------------
# Checkpoint integrity and data position


def _small_state(seed=0) -> TrainState:
  k = jax.random.key(seed)
  params = {"w": jax.random.normal(k, (64, 32)), "b": jnp.arange(32, dtype=jnp.bfloat16)}
  return TrainState(step=jnp.int32(0), params=params,
                    opt_state={"mu": jax.tree.map(jnp.zeros_like, params)},
                    skipped_steps=jnp.int32(0), rng=initial_rng(seed))


def _at_step(state, step):
  """`state` as saved at `step`: that step number, params scaled by it."""
  scale = lambda x: x * jnp.asarray(step, x.dtype)
  return state.replace(step=jnp.int32(step), params=jax.tree.map(scale, state.params))


def _save_steps(directory, steps, **kwargs):
  ckpt = Checkpointer(directory, keep=5, **kwargs)
  for s in steps:
    ckpt.maybe_save(s, _at_step(_small_state(), s), force=True)
  ckpt.close()


def _largest_array_file(step_dir):
  files = [os.path.join(root, f) for root, _, names in os.walk(os.path.join(step_dir, "state"))
           for f in names if os.sep + "d" + os.sep in os.path.join(root, f) + os.sep]
  return max(files, key=os.path.getsize)


def _flip_a_bit(step_dir):
  with open(_largest_array_file(step_dir), "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x10
    f.seek(0)
    f.write(data)


def _truncate_files(step_dir):
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


@pytest.fixture
def collect_garbage():
  """Closes what failed orbax restores left behind while this module's filter applies."""
  yield
  gc.collect()


@pytest.mark.parametrize("damage", ["flip_a_bit", "truncate_files", "empty_dir"])
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(tmp_path, damage, caplog,
                                                             collect_garbage):
  directory = str(tmp_path / "ckpt")
  _save_steps(directory, [2, 4, 6])
  if damage == "flip_a_bit":  # orbax alone restores this silently: the checksum catches it
    _flip_a_bit(os.path.join(directory, "6"))
  elif damage == "truncate_files":
    _truncate_files(os.path.join(directory, "6"))
  else:
    os.makedirs(os.path.join(directory, "8"))
  # A save killed mid-write leaves only a tmp directory, which is never a candidate.
  os.makedirs(os.path.join(directory, "9.orbax-checkpoint-tmp-123", "state"))

  ckpt = Checkpointer(directory, keep=5)
  state = ckpt.restore(_small_state())
  good = 6 if damage == "empty_dir" else 4
  assert int(state.step) == good
  _assert_trees_equal(state, _at_step(_small_state(), good))
  assert "cannot be restored" in caplog.text
  if damage == "flip_a_bit":
    assert "checksum mismatch" in caplog.text
  bad = "8" if damage == "empty_dir" else "6"
  assert os.path.isdir(os.path.join(directory, bad + ".corrupt"))
  assert not os.path.exists(os.path.join(directory, "9.orbax-checkpoint-tmp-123"))
  # The resumed run can save the damaged step's number again.
  assert ckpt.maybe_save(int(bad), _at_step(_small_state(), int(bad)), force=True)
  ckpt.close()
  with Checkpointer(directory) as ckpt:
    assert int(ckpt.restore(_small_state()).step) == int(bad)


def test_a_checkpoint_no_older_one_can_replace_raises_and_is_left_alone(tmp_path,
                                                                       collect_garbage):
  directory = str(tmp_path / "ckpt")
  _save_steps(directory, [2])
  bigger = _small_state().replace(params={"w": jnp.zeros((64, 64)), "b": jnp.zeros(32)})
  with Checkpointer(directory) as ckpt, pytest.raises(
      CorruptCheckpointError, match=r"no checkpoint in .* restores \(the newest, step 2: "):
    ckpt.restore(bigger)  # a changed model shape: every checkpoint fails the same way
  assert os.listdir(directory).count("2") == 1


def test_checksums_see_one_flipped_bit_and_swapped_elements():
  x = jax.random.normal(jax.random.key(1), (8, 16))
  base = checksums({"x": x})["['x']"]
  bits = np.asarray(x).view(np.uint32).copy()
  bits[3, 5] ^= 1 << 31
  assert checksums({"x": jnp.asarray(bits.view(np.float32))})["['x']"] != base
  swapped = np.asarray(x).copy()
  swapped[[0, 1]] = swapped[[1, 0]]
  assert checksums({"x": jnp.asarray(swapped)})["['x']"] != base


# The in-process tests below compile less with one layer and a reference-free loss (SimPO:
# no reference forward pass); they are about the step and the loop, not about DPO.
SMALL = {"model.num_layers": 1, "loss.name": "simpo"}


@pytest.fixture(scope="module")
def micro(tmp_path_factory, tfds_dir):
  """One built micro experiment (SMALL), shared by the tests below."""
  return experiment.build(micro_config(**{"data.data_dir": tfds_dir}, **SMALL),
                    str(tmp_path_factory.mktemp("micro")))


def test_data_position_is_saved_and_a_changed_seed_is_refused(micro, tmp_path):
  exp = micro
  directory = str(tmp_path / "ckpt")
  position = data_position_fn(exp.train_batches)
  _save_steps(directory, [3], data_position=position)
  with Checkpointer(directory, data_position=position) as ckpt:
    saved = ckpt.read(3)[1]["data_position"]
    assert int(ckpt.restore(_small_state()).step) == 3
  assert saved["step"] == 3 and saved["seed"] == exp.config.seed
  assert saved["next_batch_example_ids"] == exp.train_batches.batch(3)["example_id"].tolist()

  other = micro_config(**{"data.data_dir": exp.config.data.data_dir, "seed": 1})
  reseeded = experiment.make_batcher(other, exp.train_batches.pairs)
  with Checkpointer(directory, data_position=data_position_fn(reseeded)) as ckpt, \
      pytest.raises(CheckpointMismatchError, match="seed=0 but this run has seed=1"):
    ckpt.restore(_small_state())
  assert os.path.isdir(os.path.join(directory, "3"))  # a config error is not damage


def test_step_rng_is_a_pure_function_of_seed_and_step():
  rng = initial_rng(0)
  chain = [rng]
  for s in range(3):
    chain.append(advance_rng(chain[-1], jnp.int32(s))[0])
  assert len({tuple(np.asarray(k).tolist()) for k in chain}) == 4
  again = advance_rng(chain[2], jnp.int32(2))[0]
  np.testing.assert_array_equal(np.asarray(again), np.asarray(chain[3]))
  assert not np.array_equal(np.asarray(initial_rng(1)), np.asarray(rng))


# ----------------------------------------------------------------------------------------------
# metrics.jsonl across kills


def _write_lines(workdir, steps, tail=""):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for s in steps:
      f.write(json.dumps({"step": s, "loss": 0.5}) + "\n")
    f.write(tail)


def test_metrics_resume_drops_lines_after_the_checkpoint_and_a_cut_last_line(tmp_path):
  workdir = str(tmp_path)
  # Killed mid-write of step 6's line, with steps 5 and 6 logged after checkpoint 4.
  _write_lines(workdir, range(6), tail='{"loss": 0.5, "st')
  assert [r["step"] for r in read_metrics(workdir)] == list(range(6))
  writer = MetricsWriter(workdir, total_steps=8, start_step=4, progress_bar=False)
  for s in (5, 6):
    writer.write(s, {"loss": 0.25})
  writer.close()
  assert [r["step"] for r in read_metrics(workdir)] == list(range(7))


def test_metrics_of_a_run_killed_before_its_first_checkpoint_are_replaced(tmp_path):
  workdir = str(tmp_path)
  _write_lines(workdir, [0, 1])
  writer = MetricsWriter(workdir, total_steps=8, start_step=0, progress_bar=False)
  writer.write(0, {"eval/loss": 0.7})
  writer.close()
  assert read_metrics(workdir) == [{"step": 0, "eval/loss": 0.7}]


# ----------------------------------------------------------------------------------------------
# Numerical guards


def test_halt_reports_step_examples_and_metric_and_leaves_params_untouched(
    tmp_path, tfds_dir, monkeypatch):
  build, built = experiment.build, []

  def build_with_a_bad_batch(config, workdir):
    exp = build(config, workdir)
    built.append(exp)
    real_batch = exp.train_batches.batch

    def batch(step):  # a NaN in a loss mask: same keys and shapes, so no recompilation
      b = real_batch(step)
      if step == 2:
        b["chosen_loss_mask"][0, -1] = np.nan
      return b

    exp.train_batches.batch = batch
    return exp

  monkeypatch.setattr(loop, "build", build_with_a_bad_batch)
  config = micro_config(**{"data.data_dir": tfds_dir, "nonfinite": "halt", "eval_every": 0,
                           "checkpoint_every": 1}, **SMALL)
  workdir = str(tmp_path / "run")
  with pytest.raises(loop.NonFiniteError) as info:
    loop.train(config, workdir)
  error = info.value
  bad_ids = built[0].train_batches.batch(2)["example_id"].tolist()
  assert error.step == 3 and error.batch_index == 2 and error.example_ids == bad_ids
  assert error.nonfinite[0] == "loss"
  message = str(error)
  assert "non-finite loss" in message and "at step 3" in message and str(bad_ids) in message
  assert "loss=nan" in message
  # The rejected update left params and optimizer state as after step 2, which is saved.
  with Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    assert ckpt.latest_step() == 2
    saved, _ = ckpt.read(2)
  _assert_trees_equal(error.state.params, saved["params"])
  _assert_trees_equal(error.state.opt_state, saved["opt_state"])
  assert [r["step"] for r in read_metrics(workdir)] == [0, 1, 2]


def _nan_gradient_algorithm(base):
  """`base` plus a term whose value is 0 but whose gradient is NaN (0 * d sqrt(0))."""

  def loss_fn(inputs, cfg):
    loss, metrics = base.loss_fn(inputs, cfg)
    return loss + jnp.sqrt(0.0 * jnp.sum(inputs.policy_chosen_logps)), metrics

  return dataclasses.replace(base, name="nan_grad", loss_fn=loss_fn)


def test_skip_never_lets_a_nan_gradient_into_params(micro):
  """A finite loss with a NaN gradient is caught too (a NaN loss: test_training.py)."""
  exp = micro
  batch = put_batch(exp.train_batches.batch(0), exp.mesh)
  bad_step = jax.jit(make_train_step(exp.graphdef, _nan_gradient_algorithm(exp.algorithm),
                                     exp.config.loss, exp.optimizer, exp.schedule))
  state, metrics = bad_step(exp.state, exp.ref_params, batch)
  assert np.isfinite(metrics["loss"]) and not np.isfinite(metrics["grad_norm"])
  assert metrics["nonfinite"] == 1.0 and int(state.skipped_steps) == 1
  _assert_trees_equal(state.params, exp.state.params)
  _assert_trees_equal(state.opt_state, exp.state.opt_state)
  assert int(state.step) == 1 and not np.array_equal(state.rng, exp.state.rng)


# ----------------------------------------------------------------------------------------------
# Equivalences


def _pad_right(batch, extra, pad_id):
  out = dict(batch)
  for side in ("chosen", "rejected"):
    for key, value in (("ids", pad_id), ("attention_mask", 0), ("loss_mask", 0)):
      name = f"{side}_{key}"
      out[name] = np.pad(batch[name], ((0, 0), (0, extra)), constant_values=value)
  return out


def test_left_right_and_extra_padding_give_the_same_loss(micro):
  """SimPO: its loss depends on the policy's log-probs and lengths (DPO at init is log 2
  whatever the padding, since policy = reference)."""
  exp = micro

  @jax.jit  # the train step's own inputs: loss_inputs runs the forward pass
  def loss_and_logps(params, batch):
    inputs = loss_inputs(exp.graphdef, params, exp.ref_params, batch, exp.algorithm)
    loss, metrics = exp.algorithm.loss_fn(inputs, exp.config.loss)
    per_pair = jnp.stack([jnp.sum(inputs.policy_chosen_logps * inputs.chosen_mask, axis=1),
                          jnp.sum(inputs.policy_rejected_logps * inputs.rejected_mask, axis=1)])
    return loss, metrics, per_pair

  right = exp.train_batches.batch(0)
  longer = _pad_right(right, 16, exp.train_batches.pairs.pad_id)
  variants = {"right": right, "left": pipeline.left_pad(right), "right+16": longer,
              "left+16": pipeline.left_pad(longer)}
  results = {name: jax.device_get(loss_and_logps(exp.state.params, put_batch(b, exp.mesh)))
             for name, b in variants.items()}
  base_loss, base_metrics, base_logps = results["right"]
  assert base_logps.min() < -10  # real sequences, not an all-masked batch
  for name, (loss, metrics, logps) in results.items():
    assert loss == pytest.approx(base_loss, abs=1e-6), name
    np.testing.assert_allclose(logps, base_logps, rtol=1e-5, err_msg=name)
    for key in ("rewards/margins", "logps/chosen", "logps/rejected"):
      assert metrics[key] == pytest.approx(base_metrics[key], rel=1e-5, abs=1e-6), (name, key)


def _random_inputs(key, pairs=8, length=12):
  """Every LossInputs field filled, so any registered loss finds what it reads."""
  keys = jax.random.split(key, 16)
  lengths = jax.random.randint(keys[0], (2, pairs), 2, length)
  masks = (jnp.arange(length)[None, None, :] < lengths[..., None]).astype(jnp.float32)
  masks = masks.at[..., 0].set(0.0)
  logps = lambda k: -jax.random.uniform(k, (pairs, length), minval=0.1, maxval=3.0)
  unit = lambda k, shape: jax.random.uniform(k, shape)
  return algorithms.LossInputs(
      policy_chosen_logps=logps(keys[1]), policy_rejected_logps=logps(keys[2]),
      chosen_mask=masks[0], rejected_mask=masks[1], ref_chosen_logps=logps(keys[3]),
      ref_rejected_logps=logps(keys[4]), prev_chosen_logps=logps(keys[5]),
      prev_rejected_logps=logps(keys[6]),
      chosen_values=jax.random.normal(keys[12], (pairs, 4)),
      rejected_values=jax.random.normal(keys[13], (pairs, 4)),
      targets={
          "preference_prob": unit(keys[7], (pairs,)),
          "chosen_score": unit(keys[8], (pairs,)), "rejected_score": -unit(keys[9], (pairs,)),
          "chosen_token_rewards": (unit(keys[10], (pairs, length)) - 0.5) * masks[0],
          "rejected_token_rewards": (unit(keys[11], (pairs, length)) - 0.5) * masks[1],
          "chosen_label": jnp.ones((pairs,)), "rejected_label": jnp.zeros((pairs,)),
          "chosen_advantages": jax.random.normal(keys[14], (pairs, length)) * masks[0]})


def _micro_batches(inputs, k):
  """The step's split: micro-batch i holds pairs i, i + k, i + 2k, ..."""
  return [jax.tree.map(lambda x: x[i::k], inputs) for i in range(k)]


def _trained_fields(algorithm) -> tuple[str, str]:
  """The LossInputs fields a loss differentiates: head outputs or policy log-probs."""
  if algorithm.requirements.head != "lm":
    return "chosen_values", "rejected_values"
  return "policy_chosen_logps", "policy_rejected_logps"


def _policy_grad(loss_fn, inputs, fields=("policy_chosen_logps", "policy_rejected_logps")):
  def f(chosen, rejected):
    return loss_fn(inputs.replace(**{fields[0]: chosen, fields[1]: rejected}))
  return jax.grad(f, argnums=(0, 1))(getattr(inputs, fields[0]), getattr(inputs, fields[1]))


def _interleave(parts, k):
  out = jnp.zeros((sum(p.shape[0] for p in parts),) + parts[0].shape[1:])
  for i, p in enumerate(parts):
    out = out.at[i::k].set(p)
  return out


def _with_token_share(micro, inputs, k):
  """What the step gives each micro-batch: the whole batch's chosen-token count / k."""
  count = algorithms.chosen_token_count(inputs) / k
  return [m.replace(chosen_token_count=count) for m in micro]


@pytest.mark.parametrize("name", algorithms.registered_names())
def test_accumulation_average_is_exact_for_every_registered_loss(name):
  """The mean of k micro-batch gradients is the big-batch one, for pair means and, with the
  step's whole-batch token share, for token means (sft, SimPO's sft term, PRIME)."""
  algorithm, k = algorithms.get_algorithm(name), 4
  cfg = micro_config(**{"loss.name": name}).loss
  if name == "gpm":
    cfg.preference_tau = 1.0
  if name == "simpo":
    cfg.sft_weight = 0.5  # the token-mean term
  inputs = _random_inputs(jax.random.key(0))
  if algorithm.requirements.head == "bt_reward":  # one scalar reward per response
    inputs = inputs.replace(chosen_values=inputs.chosen_values[:, :1],
                            rejected_values=inputs.rejected_values[:, :1])
  loss_fn = lambda x: algorithm.loss_fn(x, cfg)[0]
  fields = _trained_fields(algorithm)
  full = _policy_grad(loss_fn, inputs, fields)
  micro = _with_token_share(_micro_batches(inputs, k), inputs, k)
  grads = [_policy_grad(loss_fn, m, fields) for m in micro]
  for side in range(2):
    averaged = _interleave([g[side] / k for g in grads], k)
    np.testing.assert_allclose(averaged, full[side], rtol=1e-5, atol=1e-7)


def test_a_token_mean_term_needs_token_weighted_accumulation():
  """Why the step passes `chosen_token_count`: a token mean computed per micro-batch (each
  dividing by its own token count) does not average to the big-batch gradient; weighting
  each micro-batch by its share of the tokens does."""
  inputs, k = _random_inputs(jax.random.key(1)), 4
  token_mean = chosen_nll

  full = _policy_grad(token_mean, inputs)[0]
  micro = _micro_batches(inputs, k)
  grads = [_policy_grad(token_mean, m)[0] for m in micro]
  tokens = [float(jnp.sum(m.chosen_mask)) for m in micro]
  plain = _interleave([g / k for g in grads], k)
  weighted = _interleave([g * t / sum(tokens) for g, t in zip(grads, tokens)], k)
  assert not np.allclose(plain, full, rtol=1e-3)
  np.testing.assert_allclose(weighted, full, rtol=1e-5, atol=1e-7)
