"""Every registered loss is selectable from its own config file and trains 20 steps
without NaNs on the spine's tiny preset (shrunk to the micro model of conftest.py)."""

import importlib
import json
import math
import os

import numpy as np
import pytest

import algorithms
from tests.conftest import micro_online, seed_round_0
from training import loop, rounds

ONLINE = set(rounds.online_algorithms())


def _micro(config, name, tfds_dir):
  """The preset at test size: 2-layer model, 20 steps (online: one round of 20 steps)."""
  if name in ONLINE:
    config = micro_online(name, tfds_dir, rounds=1)
  config.model.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2)
  config.data.update(synthetic_train_size=256, synthetic_test_size=24, data_dir=tfds_dir)
  config.update(total_steps=20, batch_size=8, eval_batch_size=8, log_every=1, eval_every=10,
                checkpoint_every=10, progress_bar=False)
  return config


def _run(config, workdir: str, online_start: str) -> dict:
  """loop.train, or one online round (rounds.iterate, from the shared π_0) for an online
  loss; the summary of the training run (an online round's training is WORKDIR/round_1)."""
  if config.loss.name not in ONLINE:
    return loop.train(config, workdir)
  seed_round_0(online_start, workdir)
  summary = rounds.iterate(config, workdir)
  with open(os.path.join(workdir, "round_1", "metrics.jsonl")) as f:
    last = [json.loads(line) for line in f][-1]
  assert [r["round"] for r in summary["rounds"]] == [0, 1]
  return {"final_step": last["step"], "skipped_steps": last["skipped_steps"]}


def test_every_registered_loss_has_a_config_file():
  missing = [n for n in algorithms.registered_names()
             if not os.path.exists(os.path.join("configs", f"{n}.py"))]
  assert not missing, f"registered losses without configs/<name>.py: {missing}"


@pytest.mark.parametrize("name", algorithms.registered_names())
def test_command_line_summary_names_the_loss_hyperparameters(name):
  """experiments/train.py and iterate.py print this line before anything runs; it read
  `loss.beta`, which GPM, BT, INPO, PRIME and SFT do not have (their runs died there)."""
  from experiments.common import run_summary  # experiments.train defines flags on import

  config = importlib.import_module(f"configs.{name}").get_config("tiny")
  line = run_summary(config, "/w")
  assert f"loss {name} (" in line
  for field, value in config.loss.items():
    if field != "name":
      assert f"{field}={value}" in line


# Online losses run a whole round here; dno stands for them in the default suite (every one of
# them trains in tests/test_rounds.py too), the others run under -m slow (the suite's budget).
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in ONLINE and n != "dno" else n
    for n in algorithms.registered_names()])
def test_config_trains_20_steps_without_nans(name, tmp_path, tfds_dir, online_start):
  config = importlib.import_module(f"configs.{name}").get_config("tiny")
  assert config.loss.name == name
  summary = _run(_micro(config, name, tfds_dir), str(tmp_path), online_start)
  assert summary["final_step"] == 20 and summary["skipped_steps"] == 0
  logs = tmp_path / ("round_1" if name in ONLINE else "") / "metrics.jsonl"
  with open(logs) as f:
    rows = [json.loads(line) for line in f]
  trained = [r for r in rows if "loss" in r]
  assert [r["step"] for r in trained] == list(range(1, 21))
  for row in rows:
    bad = {k: v for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)}
    assert not bad, f"{name}: non-finite metrics at step {row['step']}: {bad}"
  if name in ONLINE:  # the round's samples, scores and training rows are kept
    with open(tmp_path / "round_1" / "rows.json") as f:
      assert len(json.load(f)) >= config.batch_size
  else:
    evals = [r for r in rows if any(k.startswith("eval/") for k in r)]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 20
  if name == "prime":  # and PRIME's online PRM update with the CE loss
    with open(tmp_path / "round_1" / "prm.json") as f:
      losses = json.load(f)["losses"]
    assert losses and all(math.isfinite(x) for x in losses)
    assert (tmp_path / "round_1" / "prm").is_dir()


def test_gpo_round_scored_by_a_trained_gpm(tmp_path, tfds_dir, online_start):
  """The GPO paper's pipeline: train a GPM on the task's pairs, then a GPO round whose
  score table comes from it (config.online.scorer = "gpm")."""
  from configs import gpm

  gpm_dir = str(tmp_path / "gpm")
  loop.train(_micro(gpm.get_config("tiny"), "gpm", tfds_dir), gpm_dir)
  config = micro_online("gpo", tfds_dir, rounds=1, scorer="gpm", scorer_path=gpm_dir)
  seed_round_0(online_start, str(tmp_path / "gpo"))
  summary = rounds.iterate(config, str(tmp_path / "gpo"))
  assert [r["round"] for r in summary["rounds"]] == [0, 1]
  with open(tmp_path / "gpo" / "round_1" / "scores.json") as f:
    table = np.asarray(json.load(f)["scores"])
  assert table.shape == (32, 4, 4)
  np.testing.assert_allclose(table, -np.swapaxes(table, 1, 2), atol=1e-5)  # s(i,j) = −s(j,i)
  assert np.abs(table).max() > 0


@pytest.mark.parametrize("name", ["dno",  # the others: -m slow (the suite's time budget)
                                  pytest.param("t_reg", marks=pytest.mark.slow),
                                  pytest.param("ld_dpo", marks=pytest.mark.slow),
                                  pytest.param("implicit_prm", marks=pytest.mark.slow)])
def test_shared_prompt_trains_like_the_plain_forward(name, tmp_path, tfds_dir, online_start):
  """`model.share_prompt` on losses that read per-token masks and extras (LD-DPO's tail,
  T-REG's token rewards, the implicit PRM's step ends) and on an online round's pairs: no
  pair is poisoned (skipped_steps 0) and the losses follow the plain forward's (offline
  losses; the online run is only checked for poisoning, its SFT warm-up is the slow part)."""
  losses = {}
  for share in ((True,) if name in ONLINE else (False, True)):
    config = _micro(importlib.import_module(f"configs.{name}").get_config("tiny"), name,
                    tfds_dir)
    config.update(total_steps=4, eval_every=0, checkpoint_every=0)
    config.optimizer.warmup_steps = 1
    config.model.share_prompt = share
    workdir = tmp_path / f"share_{share}"
    summary = _run(config, str(workdir), online_start)
    assert summary["final_step"] == 4 and summary["skipped_steps"] == 0
    with open(workdir / ("round_1" if name in ONLINE else "") / "metrics.jsonl") as f:
      losses[share] = [r["loss"] for r in map(json.loads, f) if "loss" in r]
  if False in losses:
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-4, atol=1e-5)
