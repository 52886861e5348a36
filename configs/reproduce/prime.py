r"""PRIME (Cui, Yuan, Chen, et al. 2025, "Process Reinforcement through Implicit Rewards",
arXiv 2502.01456; official code PRIME-RL/PRIME `training/examples/run_prime_main.sh`):
PPO-clip updates on RLOO advantages of outcome (verifier) rewards and an online implicit
PRM's process rewards (algorithms.md §8).

Headline (README table, greedy decoding):

| model | benchmark | number | source |
|---|---|---|---|
| Eurus-2-7B-PRIME | AIME 2024 / MATH-500 / AMC / Minerva / OlympiadBench | 26.7 / 79.2 / 57.8 / 38.6 / 42.1 | README |
| Eurus-2-7B-PRIME | average of the five | 48.9 (SFT start: 32.2) | README |

Data: `PRIME-RL/Eurus-2-RL-Data` (about 150K math and code queries with rule-verifiable
answers), columns `prompt` (messages) and `reward_model.ground_truth`, read as they are (the
prompt-only layout; the ground truth is the record's reference answer). The outcome reward
is `data.math_answers` (the last \boxed{} answer against the reference); it has no code
executor, so keep the math rows only (the dataset's `ability` column) [unverified].

One host (one process; shard the model over the host's chips):

    python -m experiments.reproduce --recipe=prime --preset=paper --workdir=/tmp/prime_paper \
        --checkpoint=/path/to/Eurus-2-7B-SFT --data=/path/to/Eurus-2-RL-Data --set=mesh.fsdp=8
    python -m experiments.iterate --config=configs/reproduce/prime.py:paper \
        --workdir=/tmp/prime_paper --config.model.init_from=/path/to/Eurus-2-7B-SFT \
        --config.data.tokenizer=/path/to/Eurus-2-7B-SFT \
        --config.data.path=/path/to/Eurus-2-RL-Data

A multi-host pod (the same command on every host; workdir and data on storage every host
sees; docs/online.md "On several hosts"; `experiments.iterate` takes the same `--distributed`):

    python -m experiments.reproduce --recipe=prime --preset=paper --workdir=/mnt/shared/prime \
        --checkpoint=/mnt/shared/Eurus-2-7B-SFT --data=/mnt/shared/Eurus-2-RL-Data \
        --distributed --set=mesh.fsdp=32 --set=grad_accum_steps=8

The tiny preset (CPU, about 3 minutes on a quiet machine: configs/prime.py:tiny, clip 0.2,
accuracy filter [0.2, 0.8]; 2 rounds of 512 prompts x 64 steps):

    python -m experiments.reproduce --recipe=prime --preset=tiny --workdir=/tmp/prime_recipe
"""

import ml_collections

from configs import base, reproduce
from configs import prime as prime_config

PAPER = {
    "title": "PRIME (Cui et al. 2025, arXiv 2502.01456)",
    "rows": [
        ("Eurus-2-7B-PRIME", "AIME24 / MATH-500 / AMC / Minerva / OlympiadBench",
         "26.7 / 79.2 / 57.8 / 38.6 / 42.1", "PRIME README"),
        ("Eurus-2-7B-PRIME (SFT start)", "average of the five", "48.9 (32.2)", "PRIME README"),
    ],
    "metric": "eval/accuracy",
}

DATA = {
    "dataset": "PRIME-RL/Eurus-2-RL-Data",
    "splits": ("train", "validation"),
    "columns": "prompt (messages), reward_model.ground_truth",
    "layout": "prompts only (messages), the math rows",
}


def paper(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  reproduce.recipe_name(config, "prime", "paper")
  # README: policy and PRM both start from PRIME-RL/Eurus-2-7B-SFT (Qwen2.5-Math-7B base)
  reproduce.use_checkpoint(config, "PRIME-RL/Eurus-2-7B-SFT")
  reproduce.qwen25_math_7b(config.model)  # config.json of Qwen2.5-Math-7B
  config.online.scorer = "verifier"  # run_prime_main.sh: rule-based outcome reward acc ∈ {0, 1}
  config.online.num_prompts = 256  # run_prime_main.sh data.train_batch_size=256
  config.online.num_samples = 4  # run_prime_main.sh data.n_samples=4
  config.online.accuracy_range = (0.2, 0.8)  # run_prime_main.sh filter_accuracy [0.2, 0.8]
  config.online.temperature = 1.0  # verl rollout.temperature default 1.0 [unverified]
  config.online.max_new_tokens = 3072  # run_prime_main.sh data.max_response_length=3072
  config.online.sft_steps = 0  # README: π_0 is Eurus-2-7B-SFT
  # run_prime_main.sh total_epochs=1 over ~150K prompts at 256 a rollout ≈ 586 rollouts,
  # evaluated every 16. [unverified: our grouping of rollouts into rounds]
  config.online.rollouts_per_round = 16  # [unverified: evaluation cadence]
  config.online.rounds = 37  # 37 x 16 = 592 rollouts [unverified]
  config.online.eval_prompts = 500  # MATH-500, greedy (README table)
  config.data.path = "/path/to/Eurus-2-RL-Data"  # README: the RL data, math rows [unverified]
  config.data.train_split = "train"  # Eurus-2-RL-Data dataset card: splits
  config.data.eval_split = "validation"  # dataset card: validation (not MATH-500) [unverified]
  config.online.eval_temperature = 0.0  # README: greedy decoding
  config.loss.ppo_clip = 0.2  # verl actor clip_ratio 0.2 (run_prime_main.sh)
  config.loss.prm_beta = 0.05  # run_prime_main.sh reward_model.model.beta_train=0.05
  config.loss.prime_rloo_form = "code"  # core_algos.compute_rloo_returns (algorithms.md §8.1)
  config.data.max_prompt_len = 1024  # run_prime_main.sh data.max_prompt_length=1024
  config.data.max_completion_len = 3072  # run_prime_main.sh data.max_response_length=3072
  config.data.buckets = reproduce.buckets(1024, 3072)  # padding only [unverified: our choice]
  config.optimizer.learning_rate = 5e-7  # run_prime_main.sh actor.optim.lr=5e-7
  # The PRM update shares this optimizer; the official PRM lr is 1e-6 with grad clip 10.
  # [unverified: one optimizer for both here]
  config.optimizer.decay = "constant"  # verl actor default: constant lr [unverified]
  config.optimizer.warmup_steps = 0  # verl actor lr_warmup_steps_ratio 0 [unverified]
  config.optimizer.grad_clip_norm = 1.0  # verl actor grad_clip 1.0 [unverified]
  # ppo_epochs=1 with mini-batch = the whole batch: one update per rollout; the rows of a
  # rollout (<= 1024 responses after filtering) go through in 4 steps here. [unverified]
  config.batch_size = 256  # [unverified: rows per step]
  # Memory, not maths (the same loss and gradients): experiments/benchmark.py --memory_only on 8
  # devices (fsdp=8) plans 3,058.9 GiB/device without the settings below, 26.0 GiB/device with them
  # (docs/recipes.md, "Memory of the paper presets"). [unverified on a GPU]
  config.grad_accum_steps = 32  # benchmark.py plan: micro-batch 8 responses (global batch 256 kept)
  config.model.remat = "block"  # benchmark.py plan (docs/recipes.md)
  config.model.logits_on = "completion"  # benchmark.py plan (docs/recipes.md)
  config.mesh.shard_activations = True  # benchmark.py plan: FSDP activations
  config.total_steps = 4  # [unverified: updates per rollout]
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  prime_config.tiny(config)  # clip 0.2, accuracy filter [0.2, 0.8], online PRM
  reproduce.shorter_rounds(config)
  reproduce.recipe_name(config, "prime", "tiny")
  return config


PRESETS = {"paper": paper, "tiny": tiny}


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  return base.algorithm_config("prime", preset, PRESETS)
