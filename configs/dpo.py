"""Sigmoid DPO (Rafailov et al., 2023).

Presets (`--config=configs/dpo.py:PRESET`):
  tiny      a 4-layer byte-level Llama trained from scratch on the built-in sorting task; CPU,
            about a minute. Held-out reward accuracy rises from ~0.5 to >= 0.9.
  1b        the 1B Llama shape of the TRL benchmark anchor (vocab 32000, hidden 2048, 16 layers,
            16 heads, 8 KV heads, MLP 5632), bf16 compute with fp32 master weights; set
            --config.model.init_from and --config.data.path/tokenizer for real data.
  bench_tiny  throughput benchmark (`experiments/benchmark.py`) at the TRL anchor's tiny shape
            (vocab 1024, hidden 256, 4 layers, 4 heads, 4 KV heads, MLP 688, untied), 8 pairs of
            64 prompt + 192 completion tokens, fp32 (CPU), each pair's prompt run once.
  bench_1b    the benchmark at the anchor's 1b shape, 8 pairs of 256 + 768 tokens, bf16 compute
            with fp32 master weights.
"""

import ml_collections

from configs import base


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.total_steps = 120
  config.batch_size = 32
  config.eval_batch_size = 64
  config.model.update(vocab_size=512, hidden_size=128, intermediate_size=344, num_layers=4,
                      num_heads=4, num_kv_heads=2, max_position_embeddings=128,
                      rms_norm_eps=1e-6)
  config.data.update(max_prompt_len=32, max_completion_len=32, buckets=(32, 48, 64),
                     synthetic_train_size=4096, synthetic_test_size=256)
  config.optimizer.update(learning_rate=1e-3, warmup_steps=10, decay="cosine",
                          end_lr_factor=0.1)
  config.log_every = 10
  config.eval_every = 40
  config.checkpoint_every = 60
  return config


def one_b(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.total_steps = 1000
  config.batch_size = 64
  config.model.update(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=16,
                      num_heads=16, num_kv_heads=8, max_position_embeddings=4096,
                      dtype="bfloat16", param_dtype="float32")
  config.data.update(max_prompt_len=256, max_completion_len=768, buckets=(256, 512, 1024, 1040))
  config.optimizer.update(learning_rate=5e-7, warmup_steps=100, decay="cosine")
  # Block inputs only, recomputed in the backward: bench_1b's shape plans 23.9 GiB per step
  # with it against 68.7 without (XLA's plan with the remat barriers kept; TRL measured
  # 44.4 GiB without checkpointing on an H200), for 10-17% fewer tokens/s on CPU (bench_tiny,
  # docs/performance.md, "Remat policies").
  config.model.remat = "block"
  return config


def _bench(config: ml_collections.ConfigDict, prompt_len: int,
           completion_len: int) -> ml_collections.ConfigDict:
  """What the bench presets share: the TRL anchor's loss, batch and optimizer.

  Sigmoid DPO with beta 0.1 and an in-step reference, 8 pairs per step, AdamW at a constant
  1e-6 behind a global-norm clip of 1.0 (the anchor decays linearly over its few steps; a
  schedule costs the same per step either way). Each pair's prompt runs through the model
  once (`model.share_prompt`, training/shared_prompt.py): the same losses and gradients up
  to float rounding, 1/8 fewer tokens through the model at 64 + 192 and 256 + 768;
  `--config.model.share_prompt=False` runs the anchors' plain [2B, T] forward.
  """
  config.total_steps = 1000
  config.batch_size = 8
  config.eval_batch_size = 8
  config.reference.mode = "in_step"
  config.model.tie_word_embeddings = False
  config.data.update(max_prompt_len=prompt_len, max_completion_len=completion_len,
                     buckets=(prompt_len + completion_len,))
  config.optimizer.update(learning_rate=1e-6, warmup_steps=0, decay="constant",
                          weight_decay=0.0, grad_clip_norm=1.0)
  config.progress_bar = False
  config.model.share_prompt = True
  return config


def bench_tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.model.update(vocab_size=1024, hidden_size=256, intermediate_size=688, num_layers=4,
                      num_heads=4, num_kv_heads=4, max_position_embeddings=1024,
                      rms_norm_eps=1e-6, dtype="float32", param_dtype="float32")
  return _bench(config, prompt_len=64, completion_len=192)


def bench_1b(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config.model.update(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=16,
                      num_heads=16, num_kv_heads=8, max_position_embeddings=2048,
                      rms_norm_eps=1e-6, dtype="bfloat16", param_dtype="float32")
  return _bench(config, prompt_len=256, completion_len=768)


PRESETS = {"tiny": tiny, "1b": one_b, "bench_tiny": bench_tiny, "bench_1b": bench_1b}


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  return base.algorithm_config("dpo", preset, PRESETS)
