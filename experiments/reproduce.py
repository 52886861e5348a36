r"""Runs a paper's recipe end to end: its data, its training (or rounds), the evaluation the
paper reports where it runs locally, and a results table beside the paper's numbers.

    python -m experiments.reproduce --recipe=dpo --preset=tiny --workdir=/tmp/dpo_recipe
    python -m experiments.reproduce --recipe=dpo --preset=paper --workdir=/tmp/dpo_paper \
        --checkpoint=/path/to/sft_model --data=/path/to/hh-rlhf
    # every host of a pod (workdir, checkpoint and data on storage every host sees):
    python -m experiments.reproduce --recipe=simpo --preset=paper --workdir=gs://b/simpo \
        --checkpoint=/mnt/ckpt --data=/mnt/ultrafeedback_binarized --distributed \
        --set=mesh.fsdp=32 --set=grad_accum_steps=4

Recipes are `configs/reproduce/<recipe>.py` (docs/recipes.md lists them). `--preset=tiny`
runs the recipe on the built-in sorting task in a few minutes on CPU; `--preset=paper` is the
paper's model, data and hyperparameters and needs `--checkpoint` (a Hugging Face checkpoint
directory: weights and tokenizer) and `--data`: a local copy of the paper's dataset (`DATA`
in the recipe module names it, its splits and columns; the README's "Data layouts" section
says how each layout is read; the online recipes read its prompts, prompts alone included).
`--set=field=value` overrides any config field (`--set=loss.beta=0.2`, repeatable).

What runs, by the recipe's loss: the offline losses (dpo, simpo, ld_dpo, t_reg, implicit_prm)
train with `training.loop.train` and report the held-out metrics of metrics.jsonl at step 0
and at the end (reward accuracy and loss; the implicit PRM's correctness accuracy); the
online ones (dno, inpo, gpo, prime) run `training.rounds.iterate` and report each round's
win rate, length-controlled win rate, length and accuracy against π_0. A recipe module's
`REWARD_MODELS` (gpo) trains and scores reward models first (a GPM and a BT model on cyclic
preferences, `training/reward_bench.py`), and `--reward_bench=DIR` scores an online run's
GPM / BT scorer on a local copy of RewardBench before its rounds. Both write
`WORKDIR/results.json` and `WORKDIR/results.md`: the paper's headline numbers and ours, the
tiny preset's labelled as not comparable (another task, another model).

Bad flags, configs and data are refused with one line on stderr (`error: ...`, exit 2), as
by experiments/train.py.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import time

from absl import app, flags, logging
from ml_collections import ConfigDict

from experiments.common import fail, quiet_libraries, refusals
from configs import reproduce as recipes_lib


def define_flags() -> dict:
  """The command line's flags. Defined when run as a program only, so that importing this
  module (the tests do, beside experiments.train's flags) defines no flag."""
  f = dict(
      recipe=flags.DEFINE_enum("recipe", None, list(recipes_lib.RECIPES), "The paper's recipe."),
      preset=flags.DEFINE_enum("preset", "tiny", ["tiny", "paper"], "Which preset."),
      workdir=flags.DEFINE_string("workdir", None, "Directory for the run and its results."),
      data=flags.DEFINE_string("data", None, "A local copy of the paper's dataset (the online "
                               "recipes read its prompts); the recipe's DATA says which "
                               "dataset and columns."),
      checkpoint=flags.DEFINE_string("checkpoint", None, "A Hugging Face checkpoint directory "
                                     "(weights and tokenizer) for model.init_from."),
      reward_bench=flags.DEFINE_string(
          "reward_bench", None, "A local copy of allenai/reward-bench (its 'filtered' split): "
          "the run's GPM / BT scorer (online.scorer_path) is scored on it first, RewardBench's "
          "way (training/reward_bench.py)."),
      set=flags.DEFINE_multi_string("set", [], "field=value overrides, e.g. loss.beta=0.2."),
      distributed=flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() "
                                    "first (multi-host runs, offline and online recipes)."),
      coordinator_address=flags.DEFINE_string("coordinator_address", None,
                                              "host:port of process 0."),
      num_processes=flags.DEFINE_integer("num_processes", None, "Number of processes."),
      process_id=flags.DEFINE_integer("process_id", None, "This process's index."))
  flags.mark_flags_as_required(["recipe", "workdir"])
  return f


# What the issue asks of a tiny run (issue 16, "What it must show").
OFFLINE_TARGET = 0.9  # held-out reward accuracy at the end
ONLINE_TARGET = 0.5  # final win rate against round 0, strictly above

NOT_COMPARABLE = ("not comparable: the tiny preset trains a 4-layer byte-level model from "
                  "scratch on the built-in digit-sorting task and evaluates on its held-out "
                  "split, not the paper's model or benchmark")
PAPER_CAVEAT = ("our held-out metric of the paper's setting; the paper's benchmark "
                "(AlpacaEval, Arena-Hard, MATH, ...) is not run here")


def recipe_module(recipe: str):
  """`configs.reproduce.<recipe>`: get_config, PAPER and DATA."""
  if recipe not in recipes_lib.RECIPES:
    raise ValueError(f"unknown recipe {recipe!r}; choose from {list(recipes_lib.RECIPES)}")
  return importlib.import_module(f"configs.reproduce.{recipe}")


def is_online(config: ConfigDict) -> bool:
  import algorithms
  return algorithms.get_algorithm(config.loss.name).requirements.online is not None


def _parse_value(old, text: str):
  """`text` as the type of the field's current value `old`."""
  if isinstance(old, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"expected a boolean, got {text!r}")
  if isinstance(old, (int, float)):
    return type(old)(ast.literal_eval(text)) if isinstance(old, float) else int(text)
  if isinstance(old, (tuple, list)):
    return type(old)(ast.literal_eval(text))
  return text


def apply_overrides(config: ConfigDict, overrides) -> None:
  """`field=value` strings onto existing fields; an unknown field is a ConfigError."""
  from training.config_check import ConfigError

  for item in overrides:
    if "=" not in item:
      raise ConfigError(f"--set={item!r}: expected field=value, e.g. loss.beta=0.2")
    path, text = item.split("=", 1)
    *parents, leaf = path.split(".")
    node = config
    for p in parents + [leaf]:
      if not isinstance(node, ConfigDict) or p not in node:
        fields = ", ".join(node.keys()) if isinstance(node, ConfigDict) else "none"
        raise ConfigError(f"--set={item}: no config field {path!r} (fields there: {fields})")
      if p != leaf:
        node = node[p]
    try:
      node[leaf] = _parse_value(node[leaf], text)
    except (ValueError, SyntaxError) as e:
      raise ConfigError(f"--set={item}: {e}") from None


def placeholders(config: ConfigDict) -> list[str]:
  """The fields still holding a recipe's '/path/to/...' placeholder or a judge placeholder."""
  found = [f for f, v in (("model.init_from", config.model.init_from),
                          ("data.tokenizer", config.data.tokenizer),
                          ("data.path", config.data.path),
                          ("online.scorer_path", config.online.scorer_path))
           if v and recipes_lib.is_placeholder(v)]
  if config.online.scorer == "judge" and config.online.judge.startswith("my_pkg."):
    found.append("online.judge")
  return found


def build_config(recipe: str, preset: str, *, data: str | None = None,
                 checkpoint: str | None = None, overrides=()) -> ConfigDict:
  """The recipe's config with the local paths and overrides; checked by config_check."""
  from training import config_check

  config = recipe_module(recipe).get_config(preset)
  if checkpoint:
    config.model.init_from = checkpoint
    config.data.tokenizer = checkpoint
  if data:
    config.data.path = data
  apply_overrides(config, overrides)
  left = placeholders(config)
  if left:
    hints = {"model.init_from": "--checkpoint=DIR", "data.tokenizer": "--checkpoint=DIR",
             "data.path": "--data=PATH", "online.scorer_path": "--set=online.scorer_path=RUN",
             "online.judge": "--set=online.judge=module:function"}
    raise config_check.ConfigError(
        f"recipe {recipe}:{preset} still has placeholders in "
        + ", ".join(f"config.{f} ({hints[f]})" for f in left))
  try:
    config_check.validate(config)
  except config_check.ConfigError:
    raise
  except ValueError as e:  # an algorithm's own check of its loss fields
    raise config_check.ConfigError(str(e)) from None
  return config


def run(config: ConfigDict, workdir: str) -> dict:
  """Trains (offline) or iterates (online) in this process; the entry points' summaries."""
  if is_online(config):
    from training import rounds
    return rounds.iterate(config, workdir)
  from training import loop
  return loop.train(config, workdir)


def _float(x):
  try:
    return float(x)
  except (TypeError, ValueError):
    return None


def our_numbers(config: ConfigDict, summary: dict, metric: str) -> dict:
  """The evaluation our run reports: first and final values of the recipe's metric and
  the other held-out metrics, and whether the issue's tiny target is met."""
  if is_online(config):
    rows = summary.get("rounds") or []
    first, final = (rows[0], rows[-1]) if rows else ({}, {})
    keys = ("eval/win_rate", "eval/lc_win_rate", "eval/length", "eval/accuracy")
    target = {"metric": "eval/win_rate", "above": ONLINE_TARGET}
    value = _float(final.get("eval/win_rate"))
    passed = value is not None and len(rows) > 1 and value > ONLINE_TARGET
    per_round = [{k: r[k] for k in ("round",) + keys if k in r} for r in rows]
  else:
    first, final = summary.get("first_eval", {}), summary.get("final_eval", {})
    keys = tuple(sorted({metric, "eval/loss", "eval/rewards/accuracies",
                         "eval/rewards/margins"} & (set(first) | set(final))))
    target = {"metric": metric, "at_least": OFFLINE_TARGET}
    value = _float(final.get(metric))
    passed = value is not None and value >= OFFLINE_TARGET
    per_round = None
  out = {
      "metric": metric,
      "first": {k: _float(first.get(k)) for k in keys if k in first},
      "final": {k: _float(final.get(k)) for k in keys if k in final},
      "target": target,
      "passed": passed,
  }
  if per_round is not None:
    out["rounds"] = per_round
  for extra in ("best_of_n", "reward_models", "reward_bench"):
    if extra in summary:
      out[extra] = summary[extra]
  return out


def results_record(recipe: str, preset: str, config: ConfigDict, summary: dict,
                   seconds: float) -> dict:
  module = recipe_module(recipe)
  return {
      "recipe": recipe,
      "preset": preset,
      "config": config.name,
      "loss": config.loss.name,
      "online": is_online(config),
      "seconds": round(seconds, 1),
      "model": config.model.init_from or (f"{config.model.architecture} "
                                          f"{config.model.num_layers} layers x "
                                          f"{config.model.hidden_size} (random init)"),
      "data": config.data.path or "the built-in sorting task",
      "paper": {"title": module.PAPER["title"],
                "rows": [dict(zip(("model", "benchmark", "number", "source"), r))
                         for r in module.PAPER["rows"]]},
      "paper_data": dict(module.DATA),
      "ours": our_numbers(config, summary, module.PAPER["metric"]),
      "comparable": False,
      "note": NOT_COMPARABLE if preset == "tiny" else PAPER_CAVEAT,
  }


def _fmt(x) -> str:
  return "—" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def results_markdown(record: dict) -> str:
  """One table: the paper's headline rows, then ours (labelled not comparable)."""
  ours = record["ours"]
  label = (f"ours, `{record['preset']}` preset (NOT comparable)" if record["preset"] == "tiny"
           else f"ours, `{record['preset']}` preset")
  lines = [f"# {record['paper']['title']}: recipe `{record['recipe']}`", "",
           f"Config `{record['config']}` (loss `{record['loss']}`), model {record['model']}, "
           f"data {record['data']}; {record['seconds']:.0f} s.", "",
           "| who | model | benchmark / metric | number | source |", "|---|---|---|---|---|"]
  for r in record["paper"]["rows"]:
    lines.append(f"| paper | {r['model']} | {r['benchmark']} | {r['number']} | {r['source']} |")
  for k in ours["final"]:
    start = ours["first"].get(k)
    lines.append(f"| {label} | {record['model']} | held-out `{k}` "
                 f"| {_fmt(start)} → {_fmt(ours['final'][k])} | WORKDIR/metrics.jsonl |")
  if "best_of_n" in ours:
    bon = ours["best_of_n"]
    for key, what in (("bon/accuracy", "the PRM's pick right"),
                      ("bon/random_accuracy", "a random pick right (floor)"),
                      ("bon/oracle_accuracy", "any of the N right (pass@N, ceiling)")):
      lines.append(f"| {label} | {record['model']} | best-of-{bon['bon/n']} on "
                   f"{bon['bon/prompts']} held-out prompts: {what} | {_fmt(bon[key])} "
                   f"| WORKDIR/best_of_n.json |")
  if "reward_models" in ours:
    rm = ours["reward_models"]
    for name in ("gpm", "bt_reward"):
      if name in rm:
        lines.append(f"| {label} | {name} (2-layer tiny decoder) | held-out pairwise accuracy, "
                     f"{rm['data']} (no ranking passes {rm['ranking_ceiling']:.1f}) "
                     f"| {_fmt(rm[name]['accuracy'])} | WORKDIR/reward_models.json |")
  if "reward_bench" in ours:
    rb = ours["reward_bench"]
    shown = {**{k: v for k, v in rb["sections"].items() if k != "score"},
             "average": rb["sections"].get("score"), "all pairs": rb["accuracy"]}
    for what, value in shown.items():
      lines.append(f"| {label} | the scorer {rb['loss']} ({rb['workdir']}) | RewardBench "
                   f"{what} ({rb['pairs']} pairs, {rb['dropped']} dropped) "
                   f"| {_fmt(None if value is None else 100 * value)} "
                   f"| WORKDIR/results.json |")
  if "rounds" in ours:
    lines += ["", "| round | " + " | ".join(k for k in ours["rounds"][0] if k != "round") + " |",
              "|---" * len(ours["rounds"][0]) + "|"]
    for row in ours["rounds"]:
      lines.append(f"| {row['round']} | " + " | ".join(_fmt(v) for k, v in row.items()
                                                        if k != "round") + " |")
  target = ours["target"]
  bound = (f"> {target['above']}" if "above" in target else f">= {target['at_least']}")
  lines += ["", f"Target of the tiny run (issue 16): final `{target['metric']}` {bound}: "
            f"{'met' if ours['passed'] else 'NOT met'}.", "", f"Note: {record['note']}.", ""]
  return "\n".join(lines)


def write_results(workdir: str, record: dict) -> tuple[str, str]:
  os.makedirs(workdir, exist_ok=True)
  json_path = os.path.join(workdir, "results.json")
  md_path = os.path.join(workdir, "results.md")
  with open(json_path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(json_path + ".tmp", json_path)
  with open(md_path, "w") as f:
    f.write(results_markdown(record))
  return json_path, md_path


def config_of(spec: str) -> ConfigDict:
  """'configs/gpm.py:tiny' -> that file's config of that preset."""
  path, _, preset = spec.partition(":")
  name = os.path.splitext(path)[0].replace("/", ".")
  module = importlib.import_module(name)
  return module.get_config(preset) if preset else module.get_config()


def score_reward_models(workdir: str, *, data: str, configs: dict, overrides=()) -> dict:
  """A recipe's `REWARD_MODELS`: each config of `configs` ({name: 'file:preset'}) with the
  `overrides`, trained on `data` ('cyclic': data/cyclic.py's tournament, written under
  WORKDIR/cyclic_data) and scored on its held-out pairs (training/reward_bench.py)."""
  from data import cyclic
  from training import reward_bench

  if data != "cyclic":
    raise ValueError(f"REWARD_MODELS data {data!r}: only 'cyclic' is built in")
  from training import multihost

  path = os.path.join(workdir, "cyclic_data")
  if multihost.is_main():  # the others read what process 0 wrote
    cyclic.write_splits(path, 512, 128)
  multihost.barrier("cyclic data written")
  built = {}
  for name, spec in configs.items():
    config = config_of(spec)
    apply_overrides(config, overrides)
    config.data.path, config.progress_bar = path, False
    built[name] = config
  reports = reward_bench.train_and_score(built, workdir)
  return {"data": "data/cyclic.py (rock-paper-scissors-lizard-Spock), 512 train / 128 held-out",
          "ranking_ceiling": cyclic.best_order_accuracy(),
          **{name: {k: r[k] for k in ("accuracy", "pairs")} for name, r in reports.items()}}


def scorer_on_reward_bench(config: ConfigDict, data: str) -> dict:
  """The online run's GPM / BT scorer (`online.scorer_path`) on RewardBench's 'filtered'
  split at `data`: the paper's RewardBench table for the model that scores the rounds."""
  from training import config_check, oracles, reward_bench

  if not is_online(config) or config.online.scorer not in oracles.MODEL_ORACLES:
    raise config_check.ConfigError(
        f"--reward_bench scores the run's preference-model scorer; config.online.scorer is "
        f"{config.online.get('scorer')!r} (needs one of {list(oracles.MODEL_ORACLES)})")
  return reward_bench.evaluate(config.online.scorer_path, data, "filtered")


def reproduce(recipe: str, preset: str, workdir: str, *, data: str | None = None,
              checkpoint: str | None = None, overrides=(),
              reward_bench_data: str | None = None) -> dict:
  """Builds, runs and evaluates one recipe; writes WORKDIR/results.{json,md} (process 0)
  and returns the record."""
  import jax

  start = time.time()
  config = build_config(recipe, preset, data=data, checkpoint=checkpoint, overrides=overrides)
  module = recipe_module(recipe)
  reward_models = getattr(module, "REWARD_MODELS", {}).get(preset)
  rollouts = getattr(module, "ROLLOUTS", {}).get(preset)
  bon = getattr(module, "BEST_OF_N", {}).get(preset)
  if rollouts or bon:
    from training import best_of_n  # local: only the implicit PRM recipe uses it
  if rollouts:  # the paper's data built in miniature first (implicit PRM)
    config.model.init_from, config.data.path = best_of_n.prepare_rollout_data(
        config, workdir, **rollouts)
  scored = score_reward_models(workdir, **reward_models) if reward_models else None
  bench = scorer_on_reward_bench(config, reward_bench_data) if reward_bench_data else None
  summary = run(config, workdir)
  if scored:
    summary["reward_models"] = scored
  if bench:
    summary["reward_bench"] = bench
  if bon:
    summary["best_of_n"] = best_of_n.evaluate(config, workdir, best_of_n.BestOfN(**bon))
  record = results_record(recipe, preset, config, summary, time.time() - start)
  if jax.process_index() == 0:
    write_results(workdir, record)
  return record


def main(argv, flag=None):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  v = {k: holder.value for k, holder in flag.items()}
  quiet_libraries()
  if v["distributed"]:
    import jax
    jax.distributed.initialize(coordinator_address=v["coordinator_address"],
                               num_processes=v["num_processes"], process_id=v["process_id"])
  try:
    record = reproduce(v["recipe"], v["preset"], v["workdir"], data=v["data"],
                       checkpoint=v["checkpoint"], overrides=v["set"],
                       reward_bench_data=v["reward_bench"])
  except refusals() as e:
    fail(e)
  ours = record["ours"]
  shown = " ".join(f"{k}={_fmt(ours['first'].get(k))}->{_fmt(x)}" for k, x in ours["final"].items())
  print(f"{record['recipe']}:{record['preset']} ({record['seconds']:.0f} s): {shown}; target "
        f"{'met' if ours['passed'] else 'NOT met'}; {os.path.join(v['workdir'], 'results.md')}")
  logging.info("results: %s", json.dumps(record, default=str))


if __name__ == "__main__":
  _flags = define_flags()
  app.run(lambda argv: main(argv, _flags))
