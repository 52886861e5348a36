"""Reward and preference model heads on a Llama-family backbone (Flax NNX).

`PreferenceModel` = a `models.Transformer` backbone + a linear value head read at the last
real token, for the two reward models that the registry trains (`algorithms/preference.py`):

  * Bradley-Terry reward model ("bt_reward"): value_dim = 1, r(x, y) = w·h_last.
  * General Preference embedding Model ("gpm"; Zhang et al., "Beyond Bradley-Terry Models: A
    General Preference Model for Language Model Alignment", ICML 2025, arXiv 2410.02197,
    §4): value_dim = 2k, v_{y|x} = W_v h_last ∈ ℝ^{2k}, optionally L2-normalised, and with
    `prompt_head=True` the prompt-dependent eigenvalues λ(x) ∈ ℝ^k of the skew-symmetric
    operator, read at the last prompt token.

The backbone lives under the `backbone` attribute, so a policy's (or a Hugging Face LM
checkpoint's, via `models.from_hf`) parameters load into `state['backbone']` unchanged; its
lm_head is kept (unused by `values`) for that reason.

Parameter layouts (logical axes for `models/partitioning.py`):
  value_head   [D, value_dim]   ('embed', None)
  prompt_head  [D, k]           ('embed', None)      (prompt_head=True only)

Shapes: B batch, T sequence length, D hidden_size, k = value_dim // 2.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from models.config import ModelConfig
from models.llama import Transformer

GATE_FORMS = ("softmax", "scaled_softmax")
HEADS = ("bt_reward", "gpm")
# F.normalize's eps: a zero vector stays zero instead of becoming NaN.
_NORM_EPS = 1e-12


def last_token_index(attention_mask: jax.Array) -> jax.Array:
  """[B, T] mask -> [B] int32 index of the last position with mask 1.

  Works for left padding (always T − 1), right padding and holes alike. A row with no real
  token gets 0 (a filler row; its value is garbage but finite).
  """
  t = attention_mask.shape[-1]
  positions = jnp.arange(t, dtype=jnp.int32)
  return jnp.max(jnp.where(attention_mask > 0, positions, 0), axis=-1)


def last_prompt_index(attention_mask: jax.Array, completion_mask: jax.Array) -> jax.Array:
  """[B, T] masks -> [B] index of the last prompt token (real and not completion).

  Where GPM's prompt head reads h_prompt; for [pad…, prompt, completion, pad…] rows this is
  the token right before the completion, the official scorer's `T − response_len − 1` index
  for its left-padded rows.
  """
  prompt = (attention_mask > 0) & (completion_mask <= 0)
  return last_token_index(prompt)


def l2_normalize(v: jax.Array) -> jax.Array:
  """v / max(‖v‖, 1e-12) over the last axis (torch `F.normalize`), NaN-free gradient at 0."""
  sq = jnp.sum(jnp.square(v), axis=-1, keepdims=True)
  return v * jax.lax.rsqrt(jnp.maximum(sq, _NORM_EPS**2))


def _gather_rows(h: jax.Array, index: jax.Array) -> jax.Array:
  """h [B, T, D], index [B] -> h[b, index[b]] as [B, D]."""
  return jnp.take_along_axis(h, index[:, None, None].astype(jnp.int32), axis=1)[:, 0]


class PreferenceModel(nnx.Module):
  """A reward (BT, value_dim 1) or general preference (GPM, value_dim 2k) model.

  Example:
    rm = PreferenceModel(config, value_dim=4, normalize=True, rngs=nnx.Rngs(0))
    values, gates = rm.values(ids, attention_mask)          # [B, 4], None
    # start from a policy: PreferenceModel(policy_transformer, value_dim=1, rngs=...)

  Args:
    backbone: a `ModelConfig` (a fresh random backbone) or an existing `Transformer`, which
      is used as is (its parameters, e.g. from `models.from_hf`, are kept).
    value_dim: 1 for a Bradley-Terry reward, an even 2k for a GPM embedding.
    normalize: L2-normalise the values, v ← v/‖v‖ (GPM only). The same flag must serve
      training and scoring: normalisation never flips the sign of s but rescales it, which
      moves GPO's targets and its choice of chosen/rejected (algorithms.md §5.4). The
      official training file trains unnormalised (its `F.normalize` is commented out),
      while its alignment-time scorer always normalises.
    prompt_head: add the gate head λ(x) = softmax(W_p h_prompt) ∈ ℝ^k (GPM only).
    gate_form: "softmax" (default): λ = softmax(W_p h), as the official scorer
      (`LLM-Alignment/scripts/RMs/reward_model.py`) and `gpm_example_usage.py` compute it.
      "scaled_softmax": λ = k · softmax(W_p h / √D), the form of the official *training*
      file (`rw_model_general_preference.py` after commit 2494fac), whose code references
      undefined names (`math`, `hidden_dim`) and so cannot run as committed; the released
      prompt-head checkpoints were therefore scored with the plain softmax.
    rngs: initialises the heads (and the backbone when built from a config).

  Heads are initialised N(0, σ²) with σ = 1/(D+1), the official `init_value_head` (and
  `init_prompt_head`; std, not variance): small values, so unnormalised scores start near 0.
  """

  def __init__(self, backbone: ModelConfig | Transformer, *, value_dim: int,
               normalize: bool = False, prompt_head: bool = False,
               gate_form: str = "softmax", rngs: nnx.Rngs):
    _check_head_options(value_dim, normalize, prompt_head, gate_form)
    if isinstance(backbone, ModelConfig):
      backbone = Transformer(backbone, rngs=rngs)
    if not isinstance(backbone, Transformer):
      raise TypeError(f"backbone must be a ModelConfig or a Transformer, got {type(backbone)}")
    config = backbone.config
    d = config.hidden_size
    init = nnx.initializers.normal(1.0 / (d + 1))
    self.backbone = backbone
    self.value_dim = value_dim
    self.normalize = normalize
    self.gate_form = gate_form
    self.value_head = nnx.Param(init(rngs.params(), (d, value_dim), config.params_dtype),
                                logical_axes=("embed", None))
    if prompt_head:
      self.prompt_head = nnx.Param(
          init(rngs.params(), (d, value_dim // 2), config.params_dtype),
          logical_axes=("embed", None))
    else:
      self.prompt_head = None

  @property
  def config(self) -> ModelConfig:
    return self.backbone.config

  def _project(self, h: jax.Array, w: nnx.Param) -> jax.Array:
    """h [B, D] @ w [D, n] in float32 -> [B, n] (the heads are tiny; scores want fp32)."""
    return jnp.einsum("bd,dn->bn", h.astype(jnp.float32), w[...].astype(jnp.float32))

  def gates(self, h_prompt: jax.Array) -> jax.Array:
    """h_prompt [B, D] -> λ(x) [B, k], positive and summing to 1 (k for scaled_softmax)."""
    logits = self._project(h_prompt, self.prompt_head)  # [B, k]
    if self.gate_form == "scaled_softmax":
      k = logits.shape[-1]
      return k * jax.nn.softmax(logits / jnp.sqrt(float(h_prompt.shape[-1])), axis=-1)
    return jax.nn.softmax(logits, axis=-1)

  def values(self, ids: jax.Array, attention_mask: jax.Array,
             prompt_last_index: jax.Array | None = None, *,
             positions: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Head outputs at the last real token, and the prompt gates.

    Args:
      ids: [B, T] token ids, left- or right-padded.
      attention_mask: [B, T], 1 on real tokens (prompt and completion), 0 on padding.
      prompt_last_index: [B] index of the last prompt token (see `last_prompt_index`);
        required with a prompt head, ignored without one.
      positions: optional [B, T] RoPE positions; default counts real tokens, so the result
        does not depend on the amount of left padding.

    Returns:
      values [B, value_dim] float32 (L2-normalised when `normalize`), and gates [B, k]
      float32 (None without a prompt head).
    """
    if self.prompt_head is not None and prompt_last_index is None:
      raise ValueError("this PreferenceModel has a prompt head: pass prompt_last_index "
                       "(see models.heads.last_prompt_index)")
    h = self.backbone.hidden_states(ids, attention_mask=attention_mask,
                                    positions=positions)  # [B, T, D]
    h_last = _gather_rows(h, last_token_index(attention_mask))  # [B, D]
    values = self._project(h_last, self.value_head)  # [B, value_dim]
    if self.normalize:
      values = l2_normalize(values)
    if self.prompt_head is None:
      return values, None
    return values, self.gates(_gather_rows(h, prompt_last_index))

  def __call__(self, ids, attention_mask, prompt_last_index=None, *, positions=None):
    """Same as `values`."""
    return self.values(ids, attention_mask, prompt_last_index, positions=positions)


def _check_head_options(value_dim, normalize, prompt_head, gate_form) -> None:
  if isinstance(value_dim, bool) or not isinstance(value_dim, int) or value_dim < 1:
    raise ValueError(f"value_dim must be a positive int, got {value_dim!r}")
  if value_dim != 1 and value_dim % 2:
    raise ValueError(f"value_dim must be 1 (Bradley-Terry) or even (GPM: 2k), got {value_dim}")
  if value_dim == 1 and normalize:
    raise ValueError("normalize=True needs a GPM head (even value_dim): a normalised scalar "
                     "reward is ±1")
  if value_dim == 1 and prompt_head:
    raise ValueError("prompt_head=True needs a GPM head (even value_dim >= 2)")
  if gate_form not in GATE_FORMS:
    raise ValueError(f"gate_form={gate_form!r} not in {GATE_FORMS}")


def build_preference_model(backbone: ModelConfig | Transformer, head: str,
                           preference_cfg: Mapping, *, rngs: nnx.Rngs) -> PreferenceModel:
  """The model an algorithm's `Requirements.head` asks for, from `config.preference_model`.

  "bt_reward" -> value_dim 1 (config value_dim is ignored; normalize and prompt_head, GPM
  options, must be False); "gpm" -> value_dim, normalize, prompt_head and gate_form (default
  "softmax" where the config has none) from the config.
  """
  if head not in HEADS:
    raise ValueError(f"head={head!r} is not a preference model head; expected one of {HEADS}")
  normalize = bool(preference_cfg["normalize"])
  prompt_head = bool(preference_cfg["prompt_head"])
  if head == "bt_reward":
    if normalize or prompt_head:
      raise ValueError("config.preference_model.normalize and prompt_head are GPM options; "
                       "set them to False for loss 'bt_reward'")
    return PreferenceModel(backbone, value_dim=1, rngs=rngs)
  value_dim = preference_cfg["value_dim"]
  if isinstance(value_dim, bool) or not isinstance(value_dim, int) or value_dim < 2 \
      or value_dim % 2:
    raise ValueError(f"config.preference_model.value_dim must be an even int >= 2 for loss "
                     f"'gpm', got {value_dim!r}")
  return PreferenceModel(backbone, value_dim=value_dim, normalize=normalize,
                         prompt_head=prompt_head,
                         gate_form=preference_cfg.get("gate_form", "softmax"), rngs=rngs)
