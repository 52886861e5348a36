"""The registry: each loss owns its hyperparameters, its targets are the data's fields, and
`config.loss` holds that loss's keys and no other."""

import ast
import pathlib

import pytest

import algorithms
from algorithms import Requirements
from algorithms.validation import ConfigError
from configs import base, ipo
from data.readers import PAIR_FIELDS, TOKEN_FIELDS
from training import config_check

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_targets_are_the_data_layers_fields():
  """Every number a record or a round's row carries, but the frozen models' log-probs (those
  fill the typed `ref_*` / `prev_*` fields)."""
  frozen = {f for f in TOKEN_FIELDS if f.endswith("_logps")}
  assert set(algorithms.TARGETS) == set(PAIR_FIELDS) | (set(TOKEN_FIELDS) - frozen)


def test_requirements_refuse_an_unknown_target():
  with pytest.raises(ValueError, match=r"unknown \['chosen_scores'\]"):
    Requirements(targets=("chosen_scores",))


@pytest.mark.parametrize("name", algorithms.registered_names())
def test_every_loss_validates_its_own_defaults(name):
  algorithm = algorithms.get_algorithm(name)
  cfg = algorithm.loss_config()
  assert set(cfg) == {"name", *algorithm.defaults}
  algorithm.validate(cfg)


def test_set_loss_switches_the_hyperparameters():
  config = base.set_loss(base.get_config(), "inpo", inpo_eta=0.01)
  assert dict(config.loss) == {"name": "inpo", "inpo_eta": 0.01, "inpo_ratio": 1.0 / 3.0,
                               "sft_weight": 0.0}
  with pytest.raises(KeyError, match="loss 'inpo' has no hyperparameter 'beta'"):
    base.set_loss(base.get_config(), "inpo", beta=0.1)


def test_a_key_of_another_loss_is_refused_by_name():
  config = ipo.get_config("tiny")
  config.loss.sft_weight = 0.0  # DPO's knob: IPO never reads it
  with pytest.raises(ConfigError, match=r"config\.loss\.sft_weight=0\.0 has no effect on loss "
                     r"'ipo': it is not one of its hyperparameters \(beta, ipo_average_logps\)"):
    config_check.validate(config, num_devices=1, process_count=1)


def test_a_missing_key_is_refused_by_name():
  config = ipo.get_config("tiny")
  del config.loss["ipo_average_logps"]
  with pytest.raises(ConfigError, match=r"config\.loss\.ipo_average_logps is required by loss "
                     r"'ipo'"):
    config_check.validate(config, num_devices=1, process_count=1)


def test_config_and_loss_checks_share_one_message_style():
  config = ipo.get_config("tiny")
  config.loss.beta = -1.0
  with pytest.raises(ConfigError, match=r"^config\.loss\.beta must be > 0\.0 for loss 'ipo', "
                     r"got -1\.0$"):
    config_check.validate(config, num_devices=1, process_count=1)
  config = ipo.get_config("tiny")
  config.optimizer.eps = float("inf")
  with pytest.raises(ConfigError, match=r"^config\.optimizer\.eps must be a finite number, "
                     r"got inf$"):
    config_check.validate(config, num_devices=1, process_count=1)


def _imports(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
  return names


def test_losses_import_the_shared_modules_not_each_other_for_helpers():
  """algorithms/ depends on nothing above it, and no loss module reaches into dpo.py for a
  helper that is not DPO's (the reductions live in common.py, the checks in validation.py)."""
  for path in (ROOT / "algorithms").glob("*.py"):
    imports = _imports(path)
    assert not {m for m in imports
                if m.split(".")[0] in ("configs", "training", "data", "models", "experiments",
                                       "verification")}, path.name
  dpo_names = {"masked_float32", "log_ratios", "policy_sequence_logps", "check_number",
               "check_bool", "check_unused_zero", "config_value", "optional_value"}
  for path in (ROOT / "algorithms").glob("*.py"):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module == "algorithms.dpo":
        assert not {a.name for a in node.names} & dpo_names, path.name
