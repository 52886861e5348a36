"""Gemma 2, Gemma 3 (text), Qwen3, Phi-3, OLMo 2, and Mistral / Qwen2 with sliding windows,
against Hugging Face transformers.

Each family is a tiny random-weight checkpoint written by `transformers` itself, with a
sliding window shorter than the test sequences, so that every family-specific switch
(soft-capping, sandwich / post norms, QK-norm, local / global RoPE, LongRoPE, fused Phi-3
tensors, sliding-window masks) changes the numbers being compared.
"""

import functools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from safetensors.numpy import load_file  # noqa: E402

from models import ModelConfig, from_hf, kernels, logical_axes, num_params  # noqa: E402
from models import sampling, to_hf  # noqa: E402
from models.llama import default_positions  # noqa: E402
from tests.conftest import ROOT  # noqa: E402
from tests.test_end_to_end import _write_prefs, _write_tokenizer  # noqa: E402
from tests import test_sampling as sampling_tests  # noqa: E402
from tests.test_hf_parity import (assert_bitwise_equal, assert_logits_close,  # noqa: E402
                                  build_hf_model, jax_logits, params, save_checkpoints,
                                  torch_logits)

V = 128
WINDOW = 5
COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=8,
              max_position_embeddings=256, initializer_range=0.1)
LONGROPE = {'rope_type': 'longrope', 'short_factor': [1.0, 1.3, 2.0, 3.5],
            'long_factor': [1.5, 2.5, 4.0, 9.0]}
PHI3_ORIGINAL_LEN = 24  # LongRoPE's short factors below, long factors above
# family -> (HF config class, HF model class, config kwargs on top of COMMON).
FAMILIES = {
    # Small caps put tanh in its non-linear range at these weight scales.
    'gemma2': ('Gemma2Config', 'Gemma2ForCausalLM',
               dict(sliding_window=WINDOW, query_pre_attn_scalar=12,
                    attn_logit_softcapping=2.0, final_logit_softcapping=4.0)),
    # Two local layers, then a global one; linear RoPE scaling on the global layer.
    'gemma3_text': ('Gemma3TextConfig', 'Gemma3ForCausalLM',
                    dict(num_hidden_layers=3, sliding_window=WINDOW, sliding_window_pattern=3,
                         query_pre_attn_scalar=12, rope_theta=1000.0,
                         rope_local_base_freq=50.0,
                         rope_scaling={'rope_type': 'linear', 'factor': 4.0})),
    # Layer 0 global, layer 1 sliding (Qwen3's max_window_layers).
    'qwen3': ('Qwen3Config', 'Qwen3ForCausalLM',
              dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
    'phi3': ('Phi3Config', 'Phi3ForCausalLM',
             dict(head_dim=None, pad_token_id=0, sliding_window=WINDOW,
                  original_max_position_embeddings=PHI3_ORIGINAL_LEN,
                  rope_scaling=LONGROPE)),
    'olmo2': ('Olmo2Config', 'Olmo2ForCausalLM', dict(pad_token_id=0, eos_token_id=1)),
    # Mistral masks every layer with its window (Mistral-7B-v0.1: 4096 of 32768 positions).
    'mistral_sliding': ('MistralConfig', 'MistralForCausalLM', dict(sliding_window=WINDOW)),
    # Qwen2 (q/k/v biases): layer 0 global, layer 1 sliding, as for Qwen3.
    'qwen2_sliding': ('Qwen2Config', 'Qwen2ForCausalLM',
                      dict(use_sliding_window=True, sliding_window=WINDOW,
                           max_window_layers=1)),
}
SLIDING = ('gemma2', 'gemma3_text', 'qwen3', 'phi3', 'mistral_sliding', 'qwen2_sliding')


def architecture(family: str) -> str:
  return family.removesuffix('_sliding')


def make_hf_model(family: str, seed: int = 0):
  config_cls, model_cls, extra = FAMILIES[family]
  kwargs = {k: v for k, v in dict(COMMON, **extra).items() if v is not None}
  return build_hf_model(config_cls, model_cls, kwargs, seed)


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
  """family -> (torch model, directory written by save_pretrained)."""
  return save_checkpoints(tmp_path_factory, FAMILIES, make_hf_model)


def padded_batch(length: int = 20, seed: int = 0):
  """ids [3, length]: row 0 full, row 1 left-padded by 4, row 2 right-padded by 5."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(0, V, (3, length)).astype(np.int32)
  mask = np.ones((3, length), np.int32)
  mask[1, :4] = 0
  mask[2, length - 5:] = 0
  return ids, mask


# ----------------------------------------------------------------------------
# 1. Import: logits equal transformers'.


@pytest.mark.parametrize('family', list(FAMILIES))
def test_logits_match_transformers(checkpoints, family):
  hf_model, path = checkpoints[family]
  model = from_hf(path)
  cfg = model.config
  assert cfg.architecture == architecture(family)
  sizes = [x.size for x in jax.tree.leaves(params(model))]
  assert sum(sizes) == num_params(cfg)
  assert len(jax.tree.leaves(logical_axes(model), is_leaf=lambda x: isinstance(x, tuple))
             ) == len(sizes)  # every parameter has logical axes for sharding
  ids, mask = padded_batch()  # 20 tokens > WINDOW; Phi-3: below PHI3_ORIGINAL_LEN
  ours = np.asarray(jax_logits(model, ids, mask))
  assert_logits_close(ours, torch_logits(hf_model, ids, mask), mask)
  if family in SLIDING:
    # The window is a real mask: without it the logits differ.
    assert 'sliding_attention' in cfg.attention_types
    plain = from_hf(path, sliding_window=None, layer_types=None)
    assert not np.allclose(np.asarray(jax_logits(plain, ids, mask)), ours, atol=1e-3)


def test_phi3_longrope_long_factors_match_transformers(checkpoints):
  """Past original_max_position_embeddings LongRoPE switches to its long factors."""
  hf_model, path = checkpoints['phi3']
  model = from_hf(path)
  ids, mask = padded_batch(length=PHI3_ORIGINAL_LEN + 8, seed=1)
  assert_logits_close(jax_logits(model, ids, mask), torch_logits(hf_model, ids, mask), mask)


# ----------------------------------------------------------------------------
# 2. Export: transformers reloads the same model.


@pytest.mark.parametrize('family', list(FAMILIES))
def test_export_reloads_in_transformers(checkpoints, tmp_path, family):
  hf_model, path = checkpoints[family]
  model = from_hf(path)
  to_hf(model, str(tmp_path))
  with open(tmp_path / 'config.json') as f:
    written = json.load(f)
  assert written['model_type'] == hf_model.config.model_type
  assert written['architectures'] == [type(hf_model).__name__]
  # The exported tensors are exactly the original ones (Phi-3's fused ones re-fused).
  original = load_file(os.path.join(path, 'model.safetensors'))
  exported = load_file(str(tmp_path / 'model.safetensors'))
  assert sorted(original) == sorted(exported)
  assert_bitwise_equal(exported, {k: original[k] for k in exported})
  assert_bitwise_equal(params(from_hf(str(tmp_path))), params(model))
  assert from_hf(str(tmp_path)).config == model.config

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), attn_implementation='eager', dtype=torch.float32)
  assert type(reloaded) is type(hf_model)
  for key in ('sliding_window', 'layer_types', 'attn_logit_softcapping',
              'final_logit_softcapping', 'query_pre_attn_scalar', 'rope_parameters',
              'tie_word_embeddings'):
    assert getattr(reloaded.config, key, None) == getattr(hf_model.config, key, None), key
  ids, mask = padded_batch()
  np.testing.assert_array_equal(torch_logits(reloaded, ids, mask),
                                torch_logits(hf_model, ids, mask))


# ----------------------------------------------------------------------------
# 3. The KV-cache sampler, past the sliding window.


def left_padded_prompts(lengths, width, seed=0):
  return sampling_tests.left_padded_prompts(lengths, width, V, seed)


@nnx.jit
def _next_token(model, seq, seq_mask, pos):
  return jnp.argmax(model(seq, attention_mask=seq_mask)[:, pos], axis=-1)


def plain_greedy(model, ids, mask, num_tokens):
  """Greedy decoding by a full no-cache forward per token over one fixed buffer."""
  b, p = ids.shape
  seq = np.concatenate([ids, np.zeros((b, num_tokens), np.int32)], axis=1)
  seq_mask = np.concatenate([mask, np.zeros((b, num_tokens), np.int32)], axis=1)
  for i in range(num_tokens):
    seq[:, p + i] = np.asarray(_next_token(model, seq, seq_mask, p + i - 1))
    seq_mask[:, p + i] = 1
  return seq[:, p:]


@pytest.mark.parametrize('family', list(FAMILIES))
def test_cached_greedy_equals_plain_forward(checkpoints, family):
  model = from_hf(checkpoints[family][1])
  # Prompts of 1 to 7 tokens and 12 new ones: every row decodes past the window, and
  # Phi-3 stays within its short-factor range (the sampler's cache keeps the factors a
  # token was written with, as transformers' does).
  ids, mask = left_padded_prompts([3, 7, 1, 5], width=7, seed=1)
  m = 12
  assert ids.shape[1] + m <= PHI3_ORIGINAL_LEN
  tokens, cmask, _ = sampling.sample(model, ids, mask, key=jax.random.key(0),
                                     max_new_tokens=m, temperature=0.0, eos_id=V + 1,
                                     pad_id=0)
  assert np.asarray(cmask).all()
  np.testing.assert_array_equal(np.asarray(tokens), plain_greedy(model, ids, mask, m))
  assert len(np.unique(np.asarray(tokens))) > 3  # not one collapsed token: the test has teeth


# ----------------------------------------------------------------------------
# The training layouts: packed rows and shared prompts, with sliding windows.


@nnx.jit
def _packed_logits(model, ids, positions, segments):
  return model(ids, attention_mask=(segments != 0).astype(jnp.int32), positions=positions,
               segment_ids=segments)


# Gemma 2: soft-capped autodiff attention; Gemma 3: the custom kernel, local/global RoPE.
@pytest.mark.parametrize('family', ['gemma2', 'gemma3_text'])
def test_packed_rows_equal_separate_rows(checkpoints, family):
  """Segment ids and per-segment positions: each packed sequence sees its own window."""
  model = from_hf(checkpoints[family][1])
  rng = np.random.RandomState(2)
  a, b = rng.randint(1, V, 9), rng.randint(1, V, 8)
  packed = np.concatenate([a, b, [0, 0, 0]])[None].astype(np.int32)  # [1, 20]
  segments = np.asarray([[1] * 9 + [2] * 8 + [0] * 3], np.int32)
  positions = np.asarray([list(range(9)) + list(range(8)) + [0] * 3], np.int32)
  out = np.asarray(_packed_logits(model, packed, positions, segments))[0]
  for seq, start in ((a, 0), (b, 9)):
    alone = np.asarray(jax_logits(model, seq[None].astype(np.int32),
                                  np.ones((1, len(seq)), np.int32)))[0]
    np.testing.assert_allclose(out[start:start + len(seq)], alone, rtol=1e-5, atol=1e-5)


# Gemma 3: per-layer-type RoPE and masks; Phi-3: one LongRoPE choice for prefix and suffix.
@pytest.mark.parametrize('family', ['gemma3_text', 'phi3'])
def test_shared_prompt_equals_full_forward(checkpoints, family):
  """`prefix_shared_hidden_states` (model.share_prompt) keeps the windows and the RoPE of
  each layer type: the suffixes' hidden states equal the full sequences'."""
  model = from_hf(checkpoints[family][1])
  rng = np.random.RandomState(3)
  prefix_lens, suffix_lens, p, c = [6, 3], [[7, 9], [4, 8]], 6, 9
  prefix = np.zeros((2, p), np.int32)
  prefix_mask = np.zeros((2, p), np.int32)
  suffix = np.zeros((4, c), np.int32)
  suffix_mask = np.zeros((4, c), np.int32)
  full = np.zeros((4, p + c), np.int32)
  full_mask = np.zeros((4, p + c), np.int32)
  for row, n in enumerate(prefix_lens):
    prefix[row, :n], prefix_mask[row, :n] = rng.randint(1, V, n), 1
  for side in range(2):
    for row, n in enumerate(prefix_lens):
      k = suffix_lens[row][side]
      r = side * 2 + row
      suffix[r, :k], suffix_mask[r, :k] = rng.randint(1, V, k), 1
      full[r, :n + k] = np.concatenate([prefix[row, :n], suffix[r, :k]])
      full_mask[r, :n + k] = 1

  @nnx.jit
  def both(model):
    shared = model.prefix_shared_hidden_states(prefix, prefix_mask, suffix, suffix_mask)
    return shared, model.hidden_states(full, attention_mask=full_mask)

  (prefix_h, suffix_h), full_h = jax.tree.map(np.asarray, both(model))
  # Float rounding only (the keys are summed in another order): ~1e-6 of the scale.
  atol = 1e-5 * np.abs(full_h).max()
  for side in range(2):
    for row, n in enumerate(prefix_lens):
      r, k = side * 2 + row, suffix_lens[row][side]
      np.testing.assert_allclose(prefix_h[row, :n], full_h[r, :n], rtol=1e-5, atol=atol)
      np.testing.assert_allclose(suffix_h[r, :k], full_h[r, n:n + k], rtol=1e-5, atol=atol)


def test_gemma2_fused_completion_head_is_refused(checkpoints):
  """The completion-window head computes plain h·W logits: soft-capped logits are refused."""
  from training.fused_logprobs import head_weight  # what both fused heads call

  with pytest.raises(ValueError, match='final_logit_softcapping'):
    head_weight(from_hf(checkpoints['gemma2'][1]))
  head_weight(from_hf(checkpoints['gemma3_text'][1]))  # no cap: fine


# ----------------------------------------------------------------------------
# Kernels and config parsing.


def test_geglu_kernel_grads():
  """The hand-written GeGLU backward (SwiGLU's is in tests/test_kernels.py)."""
  activation = 'gelu_pytorch_tanh'
  keys = jax.random.split(jax.random.key(0), 5)
  x = jax.random.normal(keys[0], (2, 5, 8))
  wg, wu = (0.5 * jax.random.normal(k, (8, 12)) for k in keys[1:3])
  wd = 0.3 * jax.random.normal(keys[3], (12, 8))
  dy = jax.random.normal(keys[4], (2, 5, 8))

  @functools.partial(jax.jit, static_argnums=0)  # one compile, not op-by-op dispatch
  def value_and_vjp(fn, *args):
    out, vjp = jax.vjp(lambda *a: fn(*a, activation), *args)
    return out, vjp(dy)

  out, grads = value_and_vjp(kernels.gated_mlp, x, wg, wu, wd)
  ref, ref_grads = value_and_vjp(kernels.gated_mlp_reference, x, wg, wu, wd)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5),
               (out, grads), (ref, ref_grads))


def test_attention_kernel_with_scale_and_sliding_mask():
  b, t, kv, g, h = 2, 9, 2, 2, 4
  keys = jax.random.split(jax.random.key(1), 4)
  q, k, v = (jax.random.normal(key, shape) for key, shape in
             zip(keys, [(b, t, kv, g, h), (b, t, kv, h), (b, t, kv, h)]))
  dout = jax.random.normal(keys[3], (b, t, kv, g, h))
  attention_mask = jnp.array([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
  pos = default_positions(attention_mask, attention_mask)  # [B, T]
  causal = jnp.arange(t)[:, None] >= jnp.arange(t)[None, :]
  mask = (causal[None] & (attention_mask[:, None, :] != 0)
          & (pos[:, :, None] - pos[:, None, :] < 3))
  cotangent = dout * attention_mask[:, :, None, None, None]  # padding rows are never read

  @functools.partial(jax.jit, static_argnums=0)  # one compile, not op-by-op dispatch
  def value_and_vjp(fn, q, k, v):
    out, vjp = jax.vjp(fn, q, k, v)
    return out, vjp(cotangent)

  out, grads = value_and_vjp(lambda *a: kernels.attention(*a, mask, 3, scale=0.3), q, k, v)
  ref, ref_grads = value_and_vjp(
      lambda *a: kernels.attention_reference(*a, mask, scale=0.3), q, k, v)
  real = np.asarray(attention_mask, bool)
  np.testing.assert_allclose(np.asarray(out)[real], np.asarray(ref)[real], atol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), grads, ref_grads)


GEMMA3_V4 = {  # a transformers 4.x Gemma 3 config.json (1B-style keys), 12 layers
    'model_type': 'gemma3_text', 'vocab_size': 64, 'hidden_size': 32,
    'intermediate_size': 64, 'num_hidden_layers': 12, 'num_attention_heads': 4,
    'num_key_value_heads': 1, 'head_dim': 8, 'query_pre_attn_scalar': 8,
    'sliding_window': 16, 'sliding_window_pattern': 6, 'rope_theta': 1e6,
    'rope_local_base_freq': 1e4, 'rope_scaling': {'rope_type': 'linear', 'factor': 8.0},
    'hidden_activation': 'gelu_pytorch_tanh', 'final_logit_softcapping': None,
    'attn_logit_softcapping': None,
}


def test_gemma3_v4_config_and_five_to_one_pattern():
  cfg = ModelConfig.from_hf_dict(GEMMA3_V4)
  assert cfg.attention_types == (('sliding_attention',) * 5 + ('full_attention',)) * 2
  assert cfg.rope_local_theta == 1e4 and cfg.rope_theta == 1e6
  assert cfg.rope_scaling == {'rope_type': 'linear', 'factor': 8.0}
  assert cfg.tie_word_embeddings and cfg.scale_embeddings and cfg.qk_norm == 'head'
  assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
  # transformers reads the exported config the same way.
  hf = transformers.Gemma3TextConfig(**{k: v for k, v in cfg.to_hf_dict().items()
                                       if k not in ('architectures', 'model_type')})
  assert list(hf.layer_types) == list(cfg.attention_types)
  assert hf.rope_parameters['full_attention']['factor'] == 8.0


def test_phi3_configs_without_scaling_and_in_the_v4_su_form():
  common = dict(COMMON, model_type='phi3', head_dim=None)
  plain = ModelConfig.from_hf_dict(transformers.Phi3Config(
      **{k: v for k, v in common.items() if v is not None and k != 'model_type'},
      pad_token_id=0).to_dict())
  assert plain.rope_scaling is None and plain.sliding_window is None
  assert ModelConfig.from_hf_dict(plain.to_hf_dict()) == plain
  # transformers 4.x Phi-3-128k style: "su" scaling, original length at the top level.
  v4 = ModelConfig.from_hf_dict(dict(
      common, original_max_position_embeddings=64, sliding_window=32,
      rope_scaling={'type': 'su', 'short_factor': [1.0] * 4, 'long_factor': [2.0] * 4}))
  assert v4.rope_scaling == {'rope_type': 'longrope', 'short_factor': (1.0,) * 4,
                             'long_factor': (2.0,) * 4,
                             'original_max_position_embeddings': 64}
  assert v4.attention_types == ('sliding_attention',) * 2
  assert ModelConfig.from_hf_dict(v4.to_hf_dict()) == v4


@pytest.mark.parametrize('family, extra, field', [
    ('gemma2', {'use_bidirectional_attention': True}, 'use_bidirectional_attention'),
    ('gemma2', {'hidden_activation': 'gelu'}, 'hidden_activation'),
    ('gemma3_text', {'rope_parameters': {
        'full_attention': {'rope_type': 'yarn', 'factor': 2.0, 'rope_theta': 1e6},
        'sliding_attention': {'rope_type': 'default', 'rope_theta': 1e4}}}, 'rope'),
    ('qwen3', {'attention_bias': True}, 'attention_bias'),
    ('phi3', {'partial_rotary_factor': 0.75}, 'partial_rotary_factor'),
    ('phi3', {'rope_scaling': {'type': 'longrope', 'short_factor': [1.0] * 3,
                               'long_factor': [1.0] * 3}}, 'short_factor'),
    ('olmo2', {'layer_types': ['sliding_attention', 'full_attention'],
               'sliding_window': 4}, 'layer_types'),
])
def test_unsupported_family_fields_are_refused(family, extra, field):
  base = dict(COMMON, model_type=family, num_hidden_layers=2)
  with pytest.raises(ValueError, match=field):
    ModelConfig.from_hf_dict(dict(base, **extra))


# ----------------------------------------------------------------------------
# 4. Five DPO steps from each checkpoint through the command line.


@pytest.mark.slow
@pytest.mark.parametrize('family', list(FAMILIES))
def test_cli_trains_five_steps_from_checkpoint(checkpoints, tmp_path, family):
  _, path = checkpoints[family]
  ckpt = str(tmp_path / 'ckpt')
  to_hf(from_hf(path), ckpt)
  _write_tokenizer(ckpt)
  data = tmp_path / 'prefs'
  data.mkdir()
  _write_prefs(data / 'train.jsonl', 32, 0)
  _write_prefs(data / 'test.jsonl', 8, 1)
  workdir = tmp_path / 'run'
  flags = {'model.init_from': ckpt, 'data.tokenizer': ckpt, 'data.path': str(data),
           'data.data_dir': str(tmp_path / 'tfds'), 'total_steps': 5, 'batch_size': 8,
           'eval_batch_size': 8, 'log_every': 1, 'eval_every': 0, 'checkpoint_every': 5,
           'optimizer.warmup_steps': 1, 'progress_bar': False}
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.train', '--config=configs/dpo.py:tiny',
       f'--workdir={workdir}', *(f'--config.{k}={v}' for k, v in flags.items())],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert done.returncode == 0, done.stderr[-3000:]
  with open(workdir / 'metrics.jsonl') as f:
    rows = [json.loads(line) for line in f]
  steps = [r for r in rows if 'loss' in r]
  assert [r['step'] for r in steps][-1] == 5
  assert all(math.isfinite(r['loss']) for r in steps)
  assert abs(steps[0]['loss'] - math.log(2)) < 1e-3  # policy == reference at step 1
