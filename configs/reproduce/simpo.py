r"""SimPO (Meng, Xia, Chen 2024, "SimPO: Simple Preference Optimization with a
Reference-Free Reward", arXiv 2405.14734, Eq. 6; official code princeton-nlp/SimPO): the
length-normalised, reference-free reward β/|y|·log πθ(y|x) with a target margin γ.

Headline numbers (the official README's reproduction table, AlpacaEval 2 with
alpaca-eval==0.6.2 and Arena-Hard; the Llama-3-8B-Base setting of the paper's Table 4):

| model | benchmark | number | source |
|---|---|---|---|
| Llama-3-8B-Base-SFT + SimPO | AlpacaEval 2 LC / WR, Arena-Hard | 22.0 / 20.3 / 23.4 | README table |
| Llama-3-8B-Base-SFT + DPO | AlpacaEval 2 LC / WR, Arena-Hard | 18.2 / 15.5 / 15.9 | README table |
| Llama-3-8B-Base-SFT | AlpacaEval 2 LC / WR, Arena-Hard | 6.2 / 4.6 / 3.3 | README table |

This recipe is that Base setting (training_configs/llama-3-8b-base-simpo.yaml):
`HuggingFaceH4/ultrafeedback_binarized`, splits train_prefs / test_prefs, columns `prompt`
(string), `chosen` / `rejected` (whole conversations repeating the user turn),
`score_chosen` / `score_rejected` (the README's "UltraFeedback-binarized" layout), from
`princeton-nlp/Llama-3-Base-8B-SFT`.

One host:

    python -m experiments.reproduce --recipe=simpo --preset=paper --workdir=/tmp/simpo_paper \
        --checkpoint=/path/to/Llama-3-Base-8B-SFT --data=/path/to/ultrafeedback_binarized
    python -m experiments.train --config=configs/reproduce/simpo.py:paper \
        --workdir=/tmp/simpo_paper --config.model.init_from=/path/to/Llama-3-Base-8B-SFT \
        --config.data.tokenizer=/path/to/Llama-3-Base-8B-SFT \
        --config.data.path=/path/to/ultrafeedback_binarized --config.mesh.fsdp=8

A multi-host pod (the same command on every host, shared storage):

    python -m experiments.reproduce --recipe=simpo --preset=paper --workdir=gs://bucket/simpo \
        --checkpoint=/mnt/shared/Llama-3-Base-8B-SFT \
        --data=/mnt/shared/ultrafeedback_binarized --distributed \
        --set=mesh.fsdp=32 --set=grad_accum_steps=4

The tiny preset (CPU, about a minute: configs/simpo.py:tiny, whose β = 2 and γ/β = 0.5 are
this setting's):

    python -m experiments.reproduce --recipe=simpo --preset=tiny --workdir=/tmp/simpo_recipe
"""

import ml_collections

from configs import base, reproduce
from configs import simpo as simpo_config

PAPER = {
    "title": "SimPO (Meng et al. 2024, arXiv 2405.14734)",
    "rows": [
        ("Llama-3-8B-Base-SFT + SimPO", "AlpacaEval 2 LC / WR, Arena-Hard", "22.0 / 20.3 / 23.4",
         "princeton-nlp/SimPO README"),
        ("Llama-3-8B-Base-SFT + DPO", "AlpacaEval 2 LC / WR, Arena-Hard", "18.2 / 15.5 / 15.9",
         "princeton-nlp/SimPO README"),
    ],
    "metric": "eval/rewards/accuracies",
}

DATA = {
    "dataset": "HuggingFaceH4/ultrafeedback_binarized",
    "splits": ("train_prefs", "test_prefs"),
    "columns": "prompt (string), chosen, rejected (conversations), score_chosen, score_rejected",
    "layout": "UltraFeedback-binarized",
}


def paper(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  reproduce.recipe_name(config, "simpo", "paper")
  # ".yaml" below: the official training_configs/llama-3-8b-base-simpo.yaml.
  # .yaml model_name_or_path
  reproduce.use_checkpoint(config, "princeton-nlp/Llama-3-Base-8B-SFT")
  reproduce.llama3_8b(config.model)  # config.json of Meta-Llama-3-8B
  config.data.path = "/path/to/ultrafeedback_binarized"  # .yaml dataset_mixer
  config.data.train_split = "train_prefs"  # .yaml dataset_splits
  config.data.eval_split = "test_prefs"  # .yaml dataset_splits
  config.data.max_prompt_len = 1800  # .yaml max_prompt_length: 1800
  # .yaml max_length: 2048 caps prompt + response; the pipeline caps each part, so a
  # response may take the whole 2048 here. [unverified: our split of the budget]
  config.data.max_completion_len = 2048  # .yaml max_length: 2048 [unverified split]
  config.data.buckets = reproduce.buckets(1800, 2048)  # padding only [unverified: our choice]
  config.loss.beta = 2.0  # .yaml beta: 2.0; README table (Llama3-Base)
  config.loss.simpo_gamma_beta_ratio = 0.5  # .yaml gamma_beta_ratio: 0.5; README table
  config.loss.sft_weight = 0.0  # scripts/simpo_config.py sft_weight default 0 [unverified]
  config.reference.mode = "in_step"  # §2 Eq. 6: reference-free, no reference forward
  # README: "total batch size 128" = per_device_train_batch_size 2 x accumulation 16 x 4 GPUs
  config.batch_size = 128  # README; the .yaml per_device 2 x gradient_accumulation_steps 16
  config.grad_accum_steps = 16  # .yaml gradient_accumulation_steps: 16
  # Memory, not maths (the same loss and gradients): experiments/benchmark.py --memory_only on 8
  # devices (fsdp=8) plans 563.3 GiB/device without the settings below, 30.8 GiB/device with them
  # (docs/recipes.md, "Memory of the paper presets"). [unverified on a GPU]
  config.model.remat = "block"  # benchmark.py plan (docs/recipes.md)
  config.model.logits_on = "completion"  # benchmark.py plan (docs/recipes.md)
  config.mesh.shard_activations = True  # benchmark.py plan: FSDP activations
  config.eval_batch_size = 16  # .yaml per_device_eval_batch_size 4 x 4 GPUs
  config.optimizer.learning_rate = 6e-7  # .yaml learning_rate: 6.0e-7; README table
  config.optimizer.decay = "cosine"  # .yaml lr_scheduler_type: cosine
  config.optimizer.end_lr_factor = 0.0  # transformers cosine schedule default: decays to 0
  config.optimizer.weight_decay = 0.0  # .yaml adamw_torch, HF default 0
  config.optimizer.grad_clip_norm = 1.0  # HF TrainingArguments max_grad_norm default 1.0
  # .yaml num_train_epochs: 1 over the 61,135 train_prefs pairs at batch 128.
  config.total_steps = 477  # 61135 // 128 [unverified: split size from the dataset card]
  config.optimizer.warmup_steps = 48  # .yaml warmup_ratio: 0.1 of 477 steps
  config.eval_every = 400  # .yaml eval_steps: 400
  config.seed = 42  # .yaml seed: 42
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  simpo_config.tiny(config)  # β = 2, γ/β = 0.5: the Llama-3-Base setting above
  reproduce.recipe_name(config, "simpo", "tiny")
  return config


PRESETS = {"paper": paper, "tiny": tiny}


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  return base.algorithm_config("simpo", preset, PRESETS)
