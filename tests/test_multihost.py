"""Two local processes with jax.distributed train exactly like one process with 2 devices."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, SUITE_XLA_FLAGS
from training.metrics import read_metrics

OVERRIDES = ["--config=configs/dpo.py:tiny", "--config.total_steps=4",
             "--config.optimizer.warmup_steps=1", "--config.batch_size=8",
             "--config.eval_batch_size=8", "--config.eval_every=2", "--config.log_every=1",
             "--config.checkpoint_every=2", "--config.progress_bar=False",
             "--config.model.num_layers=1", "--config.model.hidden_size=64",
             "--config.model.intermediate_size=128", "--config.data.synthetic_train_size=128",
             "--config.data.synthetic_test_size=24"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


# Three processes compile the same programs on a 2-core machine: XLA:CPU's LLVM passes are
# most of their time, and these tiny models run no slower without them (every run compiles
# alike, so the comparisons are unchanged).
_FAST_COMPILE = f"{SUITE_XLA_FLAGS} --xla_llvm_disable_expensive_passes=true"


def _env(devices: int) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices} {_FAST_COMPILE}"
  return env


# Variants under -m slow (suite time), each against the same plain single process:
# * packed: one 64-token bucket, so two of the 19-31-token sequences share a row; each
#   process packs its slice into 6 of the 12 rows (the layout is also checked in one process,
#   tests/test_packing.py);
# * precomputed: each process computes its slices of the reference log-probs, and every
#   process keeps all of them (its training batches hold the other slices' examples).
VARIANTS = {"plain": ([], []),
            "packed": (["--config.data.buckets=(64,)"],
                       ["--config.data.pack_rows=12", "--config.data.buckets=(64,)"]),
            "precomputed": ([], ["--config.reference.mode=precomputed"])}


def _rounding_only(record: dict, key: str) -> bool:
  """Whether `record[key]` is a share of margins > 0 while the margins are 0 up to float
  rounding: the policy still equals its reference (steps 0 and 1 here, the first update's
  warmup learning rate being 0), so the share is the sign of the rounding (the packed run:
  margins 0.0 in one process, 9.5e-8 in two, accuracies 0.5 and 0.5625)."""
  margins = key.replace("accuracies", "margins")
  return key.endswith("accuracies") and abs(record.get(margins, 1.0)) < 1e-5


@pytest.mark.parametrize("variant", [pytest.param("plain", marks=pytest.mark.long),
                                     pytest.param("packed", marks=pytest.mark.slow),
                                     pytest.param("precomputed", marks=pytest.mark.slow)])
def test_two_processes_match_one_process_with_two_devices(tmp_path, variant):
  single_args, multi_args = VARIANTS[variant]
  tfds_dir = str(tmp_path / "tfds")
  common = [sys.executable, "-m", "experiments.train", *OVERRIDES,
            f"--config.data.data_dir={tfds_dir}"]
  single = subprocess.run(common + [f"--workdir={tmp_path / 'single'}"] + single_args,
                          cwd=ROOT, env=_env(2), capture_output=True, text=True, timeout=300)
  assert single.returncode == 0, single.stderr[-3000:]

  port = _free_port()
  multi_dir = tmp_path / "multi"
  procs = [subprocess.Popen(
      common + [f"--workdir={multi_dir}", "--distributed", f"--coordinator_address=localhost:{port}",
                "--num_processes=2", f"--process_id={i}"] + multi_args,
      cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]

  expected, got = read_metrics(str(tmp_path / "single")), read_metrics(str(multi_dir))
  assert [r["step"] for r in got] == [r["step"] for r in expected]
  for want, have in zip(expected, got):
    for key, value in want.items():
      if key.startswith("perf/") or not isinstance(value, float) or _rounding_only(want, key):
        continue
      assert have[key] == pytest.approx(value, abs=1e-5), (want["step"], key)
  assert os.path.isdir(multi_dir / "checkpoints" / "4")
  if variant == "precomputed":  # a train and an eval cache per process
    assert len(os.listdir(multi_dir / "reference_cache")) == 4


# ---------------------------------------------------------------------------------------
# Online rounds (training/rounds.py) on two processes.

# An online preset at its smallest: rounds of 4 prompts x 2 samples, 2 updates of 4 pairs, 8
# held-out prompts (8 rows, like a rollout's: one sampler compilation).
ONLINE_OVERRIDES = [
    "--config.total_steps=2", "--config.batch_size=4", "--config.eval_batch_size=4",
    "--config.log_every=1", "--config.checkpoint_every=2", "--config.optimizer.warmup_steps=1",
    "--config.progress_bar=False", "--config.model.num_layers=1", "--config.model.hidden_size=64",
    "--config.model.intermediate_size=128", "--config.data.synthetic_train_size=64",
    "--config.data.synthetic_test_size=16", "--config.online.rounds=2",
    "--config.online.num_prompts=4", "--config.online.num_samples=2",
    "--config.online.max_new_tokens=8", "--config.online.eval_prompts=8"]

# The variants, each on both layouts:
# * dno_judge: DNO from a random π_0 (no SFT), scored by `judge_in_text_order` below, a user's
#   judge, which separates any two different responses (so a random policy's rollouts still
#   give DNO a best and a worst) and which only process 0 may call;
# * prime (-m slow): PRIME with the verifier, every prompt kept, after 2 SFT steps: the SFT
#   warm-up, the PRM's update and the log-probs of π_ref and the PRM on the rollout;
# * dno_gpm (-m slow): DNO scored by a GPM (a random-init `gpm` run, restored on the mesh by
#   each process, tests/test_oracles.py:finished_run).
ONLINE_VARIANTS = {
    "dno_judge": ["--config=configs/dno.py:tiny", "--config.online.sft_steps=0",
                  "--config.online.scorer=judge",
                  "--config.online.judge=tests.test_multihost:judge_in_text_order"],
    "prime": ["--config=configs/prime.py:tiny", "--config.online.sft_steps=2",
              "--config.online.accuracy_range=(0.0,1.0)"],
    "dno_gpm": ["--config=configs/dno.py:tiny", "--config.online.sft_steps=0",
                "--config.online.scorer=gpm"]}


def judge_in_text_order(prompts, first, second):
  """A pairwise judge for these runs: the response that comes first as text wins (any fixed
  rule serves; what the test checks is who calls it). Each call appends a line to
  $JUDGE_CALLS/process_<index>.txt."""
  import jax

  with open(os.path.join(os.environ["JUDGE_CALLS"], f"process_{jax.process_index()}.txt"),
            "a") as f:
    f.write(f"{len(prompts)}\n")
  return [1.0 if a < b else 0.0 if a > b else 0.5 for a, b in zip(first, second)]


def _run_both(tmp_path, module: str, overrides: list[str], timeout: int = 600):
  """`python -m <module>` in one process with 2 devices (workdir tmp_path/single) and, at the
  same time, in two processes with 1 device each (tmp_path/multi); each run has its own TFDS
  directory, and its judge's calls go to tmp_path/calls_<run>. Returns both stdouts."""
  def start(name: str, devices: int, flags: list[str]):
    os.makedirs(tmp_path / f"calls_{name}", exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", module, *overrides, f"--workdir={tmp_path / name}",
         f"--config.data.data_dir={tmp_path / f'tfds_{name}'}", *flags],
        cwd=ROOT, env=dict(_env(devices), JUDGE_CALLS=str(tmp_path / f"calls_{name}")),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

  port = _free_port()
  procs = [start("single", 2, [])] + [
      start("multi", 1, ["--distributed", f"--coordinator_address=localhost:{port}",
                         "--num_processes=2", f"--process_id={i}"]) for i in range(2)]
  outputs = [p.communicate(timeout=timeout) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return outputs[0][0], outputs[1][0]


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _assert_close(want, have, where: str):
  """Nested JSON values: ints and strings equal, floats within 1e-5."""
  if isinstance(want, dict):
    assert sorted(have) == sorted(want), where
    for key in want:
      _assert_close(want[key], have[key], f"{where}.{key}")
  elif isinstance(want, list):
    assert len(have) == len(want), where
    for i, (a, b) in enumerate(zip(want, have)):
      _assert_close(a, b, f"{where}[{i}]")
  elif isinstance(want, float):
    assert have == pytest.approx(want, abs=1e-5), where
  else:
    assert have == want, where


def _param_checksums(round_dir) -> dict:
  """{array path: checksum} of the newest checkpoint's params (training/checkpoint.py keeps a
  bitwise checksum of every state array in the checkpoint's meta item)."""
  checkpoints = round_dir / "checkpoints"
  step = max(int(s) for s in os.listdir(checkpoints) if s.isdigit())
  meta = _read_json(checkpoints / str(step) / "meta" / "metadata")
  return {k: v for k, v in meta["checksums"].items() if k.startswith("['params']")}


@pytest.mark.parametrize("variant", [pytest.param("dno_judge", marks=pytest.mark.long),
                                     pytest.param("prime", marks=pytest.mark.slow),
                                     pytest.param("dno_gpm", marks=pytest.mark.slow)])
def test_online_rounds_on_two_processes_match_one_process_with_two_devices(tmp_path, variant):
  """Two online rounds (sampling, scoring, rows with the frozen models' log-probs, training,
  evaluation) on two processes end like one process with two devices: the same samples,
  verdicts and rows files, the same training and per-round eval metrics, bitwise the same
  parameters; a judge is called by process 0 only, as often as in the single run."""
  flags = ONLINE_VARIANTS[variant] + ONLINE_OVERRIDES
  if variant == "dno_gpm":
    from tests.test_oracles import finished_run
    flags.append("--config.online.scorer_path="
                 + finished_run(str(tmp_path / "gpm"), "gpm", value_dim=4, prompt_head=True))
  single_out, multi_out = _run_both(tmp_path, "experiments.iterate", flags)
  single, multi = tmp_path / "single", tmp_path / "multi"
  assert [line for line in multi_out.splitlines() if line.startswith("round ")] == \
      [line for line in single_out.splitlines() if line.startswith("round ")]
  _assert_close(read_metrics(str(single)), read_metrics(str(multi)), "metrics.jsonl")
  without_perf = lambda rows: [{k: v for k, v in r.items() if not k.startswith("perf/")}  # noqa
                               for r in rows]
  for name in ("eval_samples.json", "eval.json"):  # π_0's held-out responses and their eval
    _assert_close(_read_json(single / "round_0" / name), _read_json(multi / "round_0" / name),
                  f"round_0/{name}")
  for t in (1, 2):
    files = ["samples.json", "scores.json", "rows.json", "eval_samples.json", "eval.json"]
    files += ["prm.json"] if variant == "prime" else []  # the PRM's losses
    for name in files:
      _assert_close(_read_json(single / f"round_{t}" / name),
                    _read_json(multi / f"round_{t}" / name), f"round_{t}/{name}")
    _assert_close(without_perf(read_metrics(str(single / f"round_{t}"))),
                  without_perf(read_metrics(str(multi / f"round_{t}"))), f"round_{t}/metrics")
    checksums = _param_checksums(single / f"round_{t}")
    assert checksums and _param_checksums(multi / f"round_{t}") == checksums
  if variant == "dno_judge":
    assert os.listdir(tmp_path / "calls_multi") == ["process_0.txt"]
    with open(tmp_path / "calls_single" / "process_0.txt") as a, \
        open(tmp_path / "calls_multi" / "process_0.txt") as b:
      assert a.read() == b.read()
