"""Reproduction recipes: one config per paper, `configs/reproduce/<recipe>.py:{paper,tiny}`.

Each recipe module has
  * `get_config(preset)`: `paper` (the paper's model family and size, data layout and every
    hyperparameter the paper or its official code states, each line citing its source) and
    `tiny` (the same recipe shrunk to the built-in sorting task, a few minutes on a 2-core
    CPU), built on `configs/base.algorithm_config` and the per-loss presets;
  * `PAPER`: the headline numbers the paper reports (`rows`: model, benchmark, number,
    source) and the metric our run reports beside them;
  * `DATA`: the public dataset the paper trained on, its splits and columns, and the layout
    this repo reads it with (README, "Data layouts").

`python -m experiments.reproduce --recipe=<recipe> --preset=tiny --workdir=W` runs one
(docs/recipes.md has the table of all of them).

Provenance marks in the comments follow the shared research notes
(research/algorithms.md): a line quotes the paper (section, table, appendix) or the official code (file), and `[unverified]` marks
a value we had to choose or could not check against the paper.
"""

import ml_collections

# The recipes, in the order of docs/recipes.md.
RECIPES = ("dpo", "simpo", "ld_dpo", "dno", "inpo", "gpo", "t_reg", "implicit_prm", "prime")

# Paper presets name their checkpoints under this prefix: a path to replace with a local copy
# of the Hugging Face checkpoint (`--checkpoint=DIR` of experiments/reproduce.py, or
# `--config.model.init_from=DIR --config.data.tokenizer=DIR`).
PLACEHOLDER = "/path/to/"


def checkpoint(hf_name: str) -> str:
  """The placeholder path of a Hugging Face checkpoint, e.g. '/path/to/Meta-Llama-3-8B'."""
  return PLACEHOLDER + hf_name.split("/")[-1]


def is_placeholder(path: str) -> bool:
  return path.startswith(PLACEHOLDER)


def use_checkpoint(config: ml_collections.ConfigDict, hf_name: str) -> None:
  """Policy and tokenizer from the (placeholder) checkpoint; bf16 compute, fp32 master weights
  (WORKSPACE-notes.md, "One GPU"). The shape fields set next to it only serve random-init
  memory plans (`experiments/benchmark.py --memory_only`): a checkpoint's config.json wins."""
  config.model.init_from = checkpoint(hf_name)
  config.data.tokenizer = checkpoint(hf_name)
  config.model.dtype = "bfloat16"
  config.model.param_dtype = "float32"


# The architectures of the papers' checkpoints (their config.json on the Hugging Face Hub).
def llama3_8b(model: ml_collections.ConfigDict) -> None:
  """Meta-Llama-3-8B(-Instruct) and Llama-3.1-8B(-Instruct); 3.1's rope_scaling comes from
  its config.json."""
  model.update(architecture="llama", vocab_size=128256, hidden_size=4096,
               intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
               rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=8192,
               tie_word_embeddings=False, qkv_bias=False)


def mistral_7b(model: ml_collections.ConfigDict) -> None:
  """Mistral-7B-v0.1 (sliding window 4096 from its config.json)."""
  model.update(architecture="mistral", vocab_size=32000, hidden_size=4096,
               intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
               rope_theta=10000.0, rms_norm_eps=1e-5, max_position_embeddings=32768,
               tie_word_embeddings=False, qkv_bias=False)


def qwen25_3b(model: ml_collections.ConfigDict) -> None:
  """Qwen2.5-3B (tied embeddings, QKV bias)."""
  model.update(architecture="qwen2", vocab_size=151936, hidden_size=2048,
               intermediate_size=11008, num_layers=36, num_heads=16, num_kv_heads=2,
               rope_theta=1000000.0, rms_norm_eps=1e-6, max_position_embeddings=32768,
               tie_word_embeddings=True, qkv_bias=True)


def qwen25_math_7b(model: ml_collections.ConfigDict) -> None:
  """Qwen2.5-Math-7B, the base of PRIME-RL/Eurus-2-7B-SFT."""
  model.update(architecture="qwen2", vocab_size=152064, hidden_size=3584,
               intermediate_size=18944, num_layers=28, num_heads=28, num_kv_heads=4,
               rope_theta=10000.0, rms_norm_eps=1e-6, max_position_embeddings=4096,
               tie_word_embeddings=False, qkv_bias=True)


def buckets(max_prompt_len: int, max_completion_len: int) -> tuple[int, ...]:
  """Padded lengths up to prompt + completion: powers of two from 256, then the sum."""
  longest = max_prompt_len + max_completion_len
  out, b = [], 256
  while b < longest:
    out.append(b)
    b *= 2
  return tuple(out) + (longest,)


def recipe_name(config: ml_collections.ConfigDict, recipe: str, preset: str) -> None:
  """`config.name` as metrics and benchmarks record it: 'reproduce/<recipe>:<preset>'."""
  config.name = f"reproduce/{recipe}:{preset}"


def shorter_rounds(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The online tiny presets (configs/online.py:tiny_rounds) cut to fit a recipe's minutes.

  configs/online.py's 3 rounds take 4-7 minutes on the 2-core machine (round 1 alone about
  110 s with other jobs running); a recipe keeps the same SFT warm-up (π_0 is the same
  model), rounds (512 prompts x 4 samples, 64 steps), learning rate and evaluation (all 256
  held-out prompts), and runs 2 rounds. Cutting the rounds themselves instead (256 prompts
  x 48 steps) made INPO worse than π_0 (win rate 0.39) and left PRIME at 0.50.
  """
  config.online.rounds = 2
  return config
