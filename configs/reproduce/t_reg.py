r"""T-REG (Zhou et al. 2025, "T-REG: Preference Optimization with Token-Level Reward
Regularization", ACL 2025, arXiv 2412.02685): DPO plus α·w·(token-level regulariser), the
token rewards from contrastive prompting of the reference model
(training/token_rewards.py, once before training).

The official code (wzhouad/T-REG) is not in our stores: every value here is [secondary]
(a paper note, the shared research notes (research/algorithms.md) §6) unless it comes from the SimPO
on-policy recipe the paper trains with.

Headline (Table 1 [secondary]):

| model | benchmark | number | source |
|---|---|---|---|
| Llama-3-8B-Instruct + DPO-REG | AlpacaEval 2 LC / Arena-Hard | 50.8 / 40.3 | Table 1 [secondary] |
| Llama-3-8B-Instruct + DPO | AlpacaEval 2 LC / Arena-Hard | 47.0 / 35.9 | Table 1 [secondary] |
| Gemma-2-9B-it + SimPO-REG | AlpacaEval 2 LC / Arena-Hard | 74.5 / 64.2 | Table 1 [secondary] |

Data: on-policy UltraFeedback pairs (5 samples of the instruct model, best / worst by
ArmoRM): `princeton-nlp/llama3-ultrafeedback-armorm`, splits train / test, columns `prompt`
(string), `chosen` / `rejected` (conversations repeating the user turn; also
`all_generated_responses`, `all_rm_scores`, unused) in the README's "UltraFeedback-binarized"
layout.

One host:

    python -m experiments.reproduce --recipe=t_reg --preset=paper --workdir=/tmp/treg_paper \
        --checkpoint=/path/to/Meta-Llama-3-8B-Instruct \
        --data=/path/to/llama3-ultrafeedback-armorm
    python -m experiments.train --config=configs/reproduce/t_reg.py:paper \
        --workdir=/tmp/treg_paper --config.model.init_from=/path/to/Meta-Llama-3-8B-Instruct \
        --config.data.tokenizer=/path/to/Meta-Llama-3-8B-Instruct \
        --config.data.path=/path/to/llama3-ultrafeedback-armorm --config.mesh.fsdp=8

A multi-host pod (the same command on every host, shared storage):

    python -m experiments.reproduce --recipe=t_reg --preset=paper --workdir=gs://bucket/treg \
        --checkpoint=/mnt/shared/Meta-Llama-3-8B-Instruct \
        --data=/mnt/shared/llama3-ultrafeedback-armorm --distributed \
        --set=mesh.fsdp=32 --set=grad_accum_steps=4

The tiny preset (CPU, about 2 minutes: configs/t_reg.py:tiny, α = 0.25 on DPO; a model trained
from scratch has near-zero contrastive token rewards, so it exercises the machinery):

    python -m experiments.reproduce --recipe=t_reg --preset=tiny --workdir=/tmp/treg_recipe
"""

import ml_collections

from configs import base, reproduce
from configs import t_reg as t_reg_config

PAPER = {
    "title": "T-REG (Zhou et al. 2025, arXiv 2412.02685)",
    "rows": [
        ("Llama-3-8B-Instruct + DPO-REG", "AlpacaEval 2 LC / Arena-Hard", "50.8 / 40.3",
         "Table 1 [secondary]"),
        ("Llama-3-8B-Instruct + DPO", "AlpacaEval 2 LC / Arena-Hard", "47.0 / 35.9",
         "Table 1 [secondary]"),
        ("Gemma-2-9B-it + SimPO-REG", "AlpacaEval 2 LC / Arena-Hard", "74.5 / 64.2",
         "Table 1 [secondary]"),
    ],
    "metric": "eval/rewards/accuracies",
}

DATA = {
    "dataset": "princeton-nlp/llama3-ultrafeedback-armorm",
    "splits": ("train", "test"),
    "columns": "prompt (string), chosen, rejected (conversations)",
    "layout": "UltraFeedback-binarized",
}


def paper(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  reproduce.recipe_name(config, "t_reg", "paper")
  reproduce.use_checkpoint(config, "meta-llama/Meta-Llama-3-8B-Instruct")  # §5 [secondary]
  reproduce.llama3_8b(config.model)  # config.json of Meta-Llama-3-8B-Instruct
  config.data.path = "/path/to/llama3-ultrafeedback-armorm"  # §5 on-policy data [secondary]
  config.data.train_split = "train"  # the dataset card's splits
  config.data.eval_split = "test"  # the dataset card's splits
  config.data.max_prompt_len = 1800  # SimPO llama-3-8b-instruct-simpo-v2.yaml max_prompt_length
  config.data.max_completion_len = 2048  # same yaml max_length 2048 [unverified split]
  config.data.buckets = reproduce.buckets(1800, 2048)  # padding only [unverified: our choice]
  config.loss.t_reg_base = "dpo"  # Table 1: DPO-REG on Llama-3-8B-Instruct [secondary]
  config.loss.t_reg_alpha = 0.25  # §5: α tuned in {0.1, 0.25, 0.5} [secondary; 0.25 unverified]
  config.loss.beta = 0.01  # SimPO README, DPO on Llama3-Instruct v0.2: β 0.01 [secondary]
  config.optimizer.learning_rate = 3e-7  # SimPO README, DPO on Llama3-Instruct v0.2: 3e-7
  config.batch_size = 128  # SimPO README: total batch 128
  config.grad_accum_steps = 16  # simpo-v2.yaml gradient_accumulation_steps: 16
  # Memory, not maths (the same loss and gradients): experiments/benchmark.py --memory_only on 8
  # devices (fsdp=8) plans 574.4 GiB/device without the settings below, 40.1 GiB/device with them
  # (docs/recipes.md, "Memory of the paper presets"). [unverified on a GPU]
  config.model.remat = "block"  # benchmark.py plan (docs/recipes.md)
  config.model.logits_on = "completion"  # benchmark.py plan (docs/recipes.md)
  config.mesh.shard_activations = True  # benchmark.py plan: FSDP activations
  config.optimizer.decay = "cosine"  # simpo-v2.yaml lr_scheduler_type: cosine
  config.optimizer.end_lr_factor = 0.0  # transformers cosine schedule default: decays to 0
  # simpo-v2.yaml num_train_epochs: 1 over ~59,876 training pairs at batch 128.
  config.total_steps = 467  # 59876 // 128 [unverified: split size from the dataset card]
  config.optimizer.warmup_steps = 47  # simpo-v2.yaml warmup_ratio: 0.1
  config.optimizer.grad_clip_norm = 1.0  # HF TrainingArguments max_grad_norm default
  # §3 contrastive revision prompts; the paper's wording is not recovered. [unverified]
  config.t_reg.better_prefix = "Answer helpfully, correctly and concisely. "  # [unverified]
  config.t_reg.worse_prefix = "Answer unhelpfully, incorrectly and verbosely. "  # [unverified]
  config.seed = 42  # simpo-v2.yaml seed: 42
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  t_reg_config.tiny(config)  # α = 0.25 on DPO
  reproduce.recipe_name(config, "t_reg", "tiny")
  return config


PRESETS = {"paper": paper, "tiny": tiny}


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  return base.algorithm_config("t_reg", preset, PRESETS)
