"""Training from a Hugging Face checkpoint directory on local TRL-layout files."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import models
from tests.conftest import micro_config
from training import loop
from training import experiment

WORDS = ["red", "green", "blue", "cat", "dog", "runs", "sleeps", "fast", "slow", "the"]


def _write_tokenizer(directory):
  from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

  vocab = {"[UNK]": 0, "<pad>": 1, "<s>": 2, "</s>": 3}
  vocab.update({w: i + 4 for i, w in enumerate(WORDS)})
  raw = Tokenizer(tok_models.WordLevel(vocab, unk_token="[UNK]"))
  raw.pre_tokenizer = pre_tokenizers.Whitespace()
  raw.add_special_tokens(["<pad>", "<s>", "</s>"])
  os.makedirs(directory, exist_ok=True)
  raw.save(os.path.join(directory, "tokenizer.json"))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, f)


def _write_prefs(path, n, seed):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for _ in range(n):
      prompt = " ".join(rng.choice(WORDS, 4))
      chosen = " ".join(rng.choice(WORDS[:5], 3))
      rejected = " ".join(rng.choice(WORDS[5:], 3))
      f.write(json.dumps({"prompt": prompt, "chosen": chosen, "rejected": rejected}) + "\n")


def test_train_from_hf_checkpoint_on_local_jsonl(tmp_path):
  hf_dir = str(tmp_path / "hf")
  cfg = models.ModelConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, max_position_embeddings=64)
  models.to_hf(models.Transformer(cfg, rngs=nnx.Rngs(3)), hf_dir)
  _write_tokenizer(hf_dir)
  data_dir = tmp_path / "prefs"
  data_dir.mkdir()
  _write_prefs(data_dir / "train.jsonl", 64, 0)
  _write_prefs(data_dir / "test.jsonl", 16, 1)

  config = micro_config(**{"model.init_from": hf_dir, "data.tokenizer": hf_dir,
                           "data.path": str(data_dir), "data.data_dir": str(tmp_path / "tfds"),
                           "total_steps": 4, "eval_every": 0})
  summary = loop.train(config, str(tmp_path / "run"))
  assert summary["final_step"] == 4
  assert abs(summary["first_eval"]["eval/loss"] - math.log(2)) < 1e-5
  assert summary["final_eval"]["eval/loss"] < math.log(2)
  # The policy started from the checkpoint's weights, not a random init.
  exp = experiment.build(config, str(tmp_path / "fresh"))
  start = nnx.to_pure_dict(nnx.state(models.from_hf(hf_dir), nnx.Param))
  np.testing.assert_array_equal(np.asarray(exp.state.params["embedding"]),
                                np.asarray(start["embedding"]))


def test_bf16_compute_keeps_fp32_master_weights(tmp_path):
  config = micro_config(**{"model.dtype": "bfloat16", "data.data_dir": str(tmp_path / "tfds"),
                           "total_steps": 3, "eval_every": 0})
  summary = loop.train(config, str(tmp_path / "run"))
  assert abs(summary["first_eval"]["eval/loss"] - math.log(2)) < 1e-2
  assert math.isfinite(summary["final_eval"]["eval/loss"]) and summary["skipped_steps"] == 0
  state = summary["state"]
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
