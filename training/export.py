"""A trained run back out to Hugging Face: weights, config, tokenizer and chat template.

    python -m experiments.export --workdir=W --out=DIR    # any finished (or paused) run
    --config.export.hf_dir=DIR                            # at the end of a train/iterate run

The policy is the newest checkpoint of the run: `WORKDIR/checkpoints` for an offline run,
the last round's (`WORKDIR/round_<t>[/rollout_<u>]/checkpoints`) for an online one. The
model is rebuilt from the run's own `config.json`, written by `models.to_hf` (safetensors,
`config.json`, `generation_config.json`), and the tokenizer directory the run trained with
(`config.data.tokenizer`) is copied beside it: `tokenizer.json`, `tokenizer_config.json`
(which may hold the chat template), `chat_template.jinja`, `special_tokens_map.json` and the
other files `transformers` reads. A run on the byte-level tokenizer has no tokenizer files to
copy (logged).
"""

from __future__ import annotations

import json
import os
import re
import shutil

from absl import logging

# What a Hugging Face tokenizer directory may hold besides the weights and model config.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "chat_template.json", "added_tokens.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")


class ExportError(ValueError):
  """A run that cannot be exported; the message names the workdir and why."""


def _steps(checkpoints: str) -> list[int]:
  if not os.path.isdir(checkpoints):
    return []
  return sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())


def policy_checkpoints(workdir: str) -> str:
  """The checkpoint directory holding the run's newest policy (offline or online)."""
  offline = os.path.join(workdir, "checkpoints")
  if _steps(offline):
    return offline
  rounds = []
  for name in os.listdir(workdir) if os.path.isdir(workdir) else ():
    match = re.fullmatch(r"round_(\d+)", name)
    if not match:
      continue
    path = os.path.join(workdir, name)
    rollouts = sorted((int(m.group(1)), os.path.join(path, m.group(0)))
                      for m in map(lambda n: re.fullmatch(r"rollout_(\d+)", n),
                                   os.listdir(path)) if m)
    for u, directory in rollouts or [(0, path)]:
      if _steps(os.path.join(directory, "checkpoints")):
        rounds.append(((int(match.group(1)), u), os.path.join(directory, "checkpoints")))
  if not rounds:
    raise ExportError(f"{workdir}: no checkpoint to export (neither {offline} nor a round's "
                      "checkpoints exist)")
  return max(rounds)[1]


def copy_tokenizer_files(tokenizer_dir: str, out: str) -> list[str]:
  """Copies the tokenizer files of `tokenizer_dir` into `out`; returns their names."""
  copied = []
  for name in TOKENIZER_FILES:
    src = os.path.join(tokenizer_dir, name)
    if os.path.isfile(src):
      shutil.copyfile(src, os.path.join(out, name))
      copied.append(name)
  return copied


def export_run(workdir: str, out: str, *, dtype=None) -> dict:
  """Writes the run's newest policy and its tokenizer to `out` as a HF checkpoint directory.

  Returns {"checkpoint": the checkpoint directory read, "step", "files": tokenizer files}.
  """
  import jax
  from flax import nnx

  import algorithms
  import models
  from training.experiment import load_trained

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise ExportError(f"{workdir}: no config.json (not the workdir of a run)")
  with open(path) as f:
    loss = json.load(f).get("loss", {}).get("name", "dpo")
  head = algorithms.get_algorithm(loss).requirements.head
  if head != "lm":
    raise ExportError(f"{workdir} is a {loss!r} run: its model has a {head} head, which has no "
                      "Hugging Face causal-LM class to export to")
  checkpoints = policy_checkpoints(workdir)
  config, graphdef, params = load_trained(workdir, checkpoints=checkpoints)
  model = nnx.merge(graphdef, jax.device_get(params))
  models.to_hf(model, out, dtype=dtype)
  files = []
  if config.data.tokenizer:
    files = copy_tokenizer_files(config.data.tokenizer, out)
  else:
    logging.warning("%s trained with the built-in byte-level tokenizer: %s has no tokenizer "
                    "files", workdir, out)
  step = _steps(checkpoints)[-1]
  logging.info("exported %s (step %d) to %s with %s", checkpoints, step, out,
               ", ".join(files) or "no tokenizer files")
  return {"checkpoint": checkpoints, "step": step, "files": files}
