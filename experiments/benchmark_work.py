"""The work of a train step at sequence length S, attention included (length_scaling.py).

`experiments.benchmark.model_flops_per_step` counts 6·N·T (+ 2·N·T) like the TRL anchor, so
that MFU compares across tools; it leaves out attention, which grows with S. This counts it,
as the PaLM paper's appendix B does (forward 2 FLOPs per multiply-add, backward twice the
forward, attention over the full S × S square, no causal saving), with an in-step reference:

    W(S) = T · (8·N + 8·D·V + 16·L·A·S)        T = 2 · batch · S tokens per step

    8·N        policy forward + backward (6·N) and reference forward (2·N), N non-embedding
    8·D·V      the lm_head, D hidden size, V vocabulary (not in N)
    16·L·A·S   attention: Q·Kᵀ and P·V, 4·A·S per token and layer forward, ×3 with the
               backward, +1 for the reference; L layers, A = heads × head_dim

Without an in-step reference: 6·N, 6·D·V, 12·L·A·S.
"""


def work_per_step(config, seq_len: int, *, sides: int = 2,
                  reference_in_step: bool | None = None) -> float:
  """W(S) of the module doc, in FLOPs, for `config`'s model, batch and reference mode.

  `sides`: rows per batch entry (2 for pairs, 1 for single responses: T = sides·batch·S).
  `reference_in_step`: whether a frozen model runs in the step; None reads
  config.reference.mode (an online round stores its frozen log-probs: pass False).
  """
  import models
  from training import experiment

  m = experiment.model_config(config)
  tokens = sides * config.batch_size * seq_len
  n = models.num_non_embedding_params(m)
  if reference_in_step is None:
    reference_in_step = config.reference.mode == "in_step"
  dense, attention = (8, 16) if reference_in_step else (6, 12)
  attn_width = m.num_heads * m.head_dim
  return tokens * (dense * (n + m.hidden_size * m.vocab_size)
                   + attention * m.num_layers * attn_width * seq_len)


def split_length(config, seq_len: int) -> tuple[int, int]:
  """(prompt, completion) tokens summing to seq_len, in the config's prompt : completion ratio."""
  d = config.data
  prompt = round(seq_len * d.max_prompt_len / (d.max_prompt_len + d.max_completion_len))
  return prompt, seq_len - prompt
