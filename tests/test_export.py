"""A trained run back out to Hugging Face: `config.export.hf_dir` and `experiments.export`.

The run: the tiny DPO preset at test size, from a Llama-3-style checkpoint directory with
a chat template, on conversational records (tests/test_chat_template.py's `_llama3_run`).
transformers must load the export (model and tokenizer, chat template included) and give
the trained model's logits.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.conftest import ROOT  # noqa: E402
from tests.test_chat_template import SHAPES, _llama3_run, tokenizer_json  # noqa: E402,F401
from training import export, loop  # noqa: E402
from training.experiment import load_trained  # noqa: E402


def _files(directory) -> dict:
  out = {}
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name), "rb") as f:
      out[name] = f.read()
  return out


@pytest.mark.long
def test_a_trained_run_exports_and_loads_in_transformers(tokenizer_json, tmp_path):  # noqa: F811
  config, _, hf_dir = _llama3_run(tmp_path, tokenizer_json)
  out = str(tmp_path / "exported")
  config.export.hf_dir = out
  workdir = str(tmp_path / "run")
  summary = loop.train(config, workdir)
  assert summary["final_step"] == 2 and summary["export"]["step"] == 2
  assert {"tokenizer.json", "tokenizer_config.json"} <= set(summary["export"]["files"])

  hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert hf_tokenizer.chat_template == SHAPES["llama3"][0]
  messages = [{"role": "user", "content": "Sort 312, please."}]
  ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True)
  ids = list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
  with torch.no_grad():
    theirs = hf_model(torch.tensor([ids])).logits.numpy()
  _, graphdef, params = load_trained(workdir)
  ours = np.asarray(nnx.merge(graphdef, jax.device_get(params))(np.asarray([ids])))
  np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
  # The trained weights, not the initial ones.
  initial = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
  with torch.no_grad():
    assert not np.allclose(initial(torch.tensor([ids])).logits.numpy(), theirs)

  # The CLI writes the same files from the workdir.
  again = str(tmp_path / "again")
  done = subprocess.run([sys.executable, "-m", "experiments.export", f"--workdir={workdir}",
                         f"--out={again}"], cwd=ROOT, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(done.stdout.splitlines()[-1])["step"] == 2
  assert _files(again) == _files(out)


def test_refusals(tmp_path):
  with pytest.raises(export.ExportError, match="no config.json"):
    export.export_run(str(tmp_path), str(tmp_path / "out"))
  (tmp_path / "config.json").write_text(json.dumps({"loss": {"name": "gpm"}}))
  with pytest.raises(export.ExportError, match="'gpm' run: its model has a gpm head"):
    export.export_run(str(tmp_path), str(tmp_path / "out"))
  (tmp_path / "config.json").write_text(json.dumps({"loss": {"name": "dpo"}}))
  with pytest.raises(export.ExportError, match="no checkpoint to export"):
    export.export_run(str(tmp_path), str(tmp_path / "out"))
  done = subprocess.run([sys.executable, "-m", "experiments.export", f"--workdir={tmp_path}",
                         f"--out={tmp_path / 'out'}"], cwd=ROOT, capture_output=True,
                        text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=120)
  assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
  assert done.stderr.strip().splitlines()[-1].startswith("error: ")


def test_the_newest_round_is_the_online_policy(tmp_path):
  for path in ("round_1/checkpoints/8", "round_2/checkpoints/4", "round_10/rollout_0/x",
               "round_10/rollout_1/checkpoints/3", "round_10/rollout_0/checkpoints/9"):
    os.makedirs(tmp_path / path)
  assert export.policy_checkpoints(str(tmp_path)) == str(
      tmp_path / "round_10" / "rollout_1" / "checkpoints")
  os.makedirs(tmp_path / "checkpoints" / "5")
  assert export.policy_checkpoints(str(tmp_path)) == str(tmp_path / "checkpoints")
