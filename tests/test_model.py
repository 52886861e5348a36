"""Tests for models/: forward-pass semantics, remat, dtypes and config."""

import jax
import jax.ad_checkpoint
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from models import ModelConfig, Transformer, logical_axes
from models import num_non_embedding_params, num_params

B, T = 2, 8


def tiny_config(**kw) -> ModelConfig:
  base = dict(vocab_size=64, hidden_size=32, intermediate_size=64,
              num_layers=2, num_heads=4, num_kv_heads=2)
  base.update(kw)
  return ModelConfig(**base)


@nnx.jit
def forward(model, ids, mask=None, positions=None, segment_ids=None):
  return model(ids, attention_mask=mask, positions=positions,
               segment_ids=segment_ids)


def random_model(cfg: ModelConfig, seed: int = 0, params=None) -> Transformer:
  """A model with numpy-random weights (or the given pure-dict params).

  Skips the real initialiser: on a small CPU, compiling a jax.random op for
  every parameter shape costs seconds, and test_init_like_hf covers it.
  Norm scales and biases are random too, so they are exercised.
  """
  graphdef, state = nnx.split(
      nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  if params is None:
    rng = np.random.RandomState(seed)
    params = jax.tree.map(
        lambda s: 0.1 * rng.standard_normal(s.shape) + (s.ndim == 1),
        nnx.to_pure_dict(state))
  params = jax.tree.map(lambda x: jnp.asarray(x, cfg.param_dtype), params)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def params_of(model):
  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.fixture(scope='module')
def model():
  return random_model(tiny_config(qkv_bias=True))


def random_ids(seed=0, shape=(B, T), vocab=64):
  return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, shape),
                     jnp.int32)


def test_shapes_and_split_api(model):
  ids = random_ids()
  logits = forward(model, ids)
  assert logits.shape == (B, T, 64) and logits.dtype == jnp.float32
  h = nnx.jit(lambda m, x: m.hidden_states(x))(model, ids)
  assert h.shape == (B, T, 32) and h.dtype == jnp.float32
  unembed = nnx.jit(lambda m, h: m.unembed(h))(model, h)
  np.testing.assert_allclose(unembed, logits, atol=1e-5)
  assert np.isfinite(np.asarray(logits)).all()


def test_param_count_and_logical_axes(model):
  cfg = model.config
  state = nnx.state(model, nnx.Param)
  sizes = [x.size for x in jax.tree.leaves(nnx.to_pure_dict(state))]
  assert sum(sizes) == num_params(cfg)
  embed = cfg.vocab_size * cfg.hidden_size
  assert num_non_embedding_params(cfg) == num_params(cfg) - 2 * embed
  tied = cfg.replace(tie_word_embeddings=True)
  assert num_params(tied) == num_params(cfg) - embed
  # Every parameter is annotated, with one name per dimension.
  axes = logical_axes(model)
  shapes = jax.tree.map(lambda x: x.shape, nnx.to_pure_dict(state))
  is_tuple = lambda x: isinstance(x, tuple)
  flat_axes = jax.tree.leaves(axes, is_leaf=is_tuple)
  flat_shapes = jax.tree.leaves(shapes, is_leaf=is_tuple)
  assert len(flat_axes) == len(flat_shapes) == len(sizes)
  known = {'vocab', 'embed', 'mlp', 'heads', 'kv_heads', 'head_dim', 'norm'}
  for a, s in zip(flat_axes, flat_shapes):
    assert len(a) == len(s) and set(a) <= known
  assert axes['layers'][0]['attn']['q_proj'] == ('embed', 'heads', 'head_dim')


def test_init_like_hf():
  m = Transformer(tiny_config(qkv_bias=True), rngs=nnx.Rngs(0))
  assert abs(float(jnp.std(m.embedding[...])) - 0.02) < 2e-3
  assert abs(float(jnp.std(m.layers[0].mlp.up_proj[...])) - 0.02) < 2e-3
  np.testing.assert_array_equal(m.final_norm.scale[...], 1.0)
  np.testing.assert_array_equal(m.layers[1].attn.q_bias[...], 0.0)
  assert params_of(m)['embedding'].dtype == jnp.float32


def test_causal(model):
  ids = random_ids()
  changed = ids.at[:, 5].set((ids[:, 5] + 1) % 64)
  a, b = forward(model, ids), forward(model, changed)
  np.testing.assert_array_equal(a[:, :5], b[:, :5])
  assert not np.allclose(a[:, 5:], b[:, 5:])


def test_left_and_right_padding_agree(model):
  lengths = [5, 8]
  seqs = [np.asarray(random_ids(i, (1, n)))[0] for i, n in enumerate(lengths)]
  right = np.zeros((B, T), np.int32)
  left = np.zeros((B, T), np.int32)
  rmask = np.zeros((B, T), np.int32)
  lmask = np.zeros((B, T), np.int32)
  for i, s in enumerate(seqs):
    right[i, :len(s)], rmask[i, :len(s)] = s, 1
    left[i, T - len(s):], lmask[i, T - len(s):] = s, 1
  r = np.asarray(forward(model, right, rmask))
  l = np.asarray(forward(model, left, lmask))
  # Fully masked rows (left padding queries) must not produce NaN.
  assert np.isfinite(r).all() and np.isfinite(l).all()
  for i, s in enumerate(seqs):
    alone = forward(model, jnp.asarray(s)[None])[0]
    np.testing.assert_allclose(r[i, :len(s)], alone, atol=1e-5)
    np.testing.assert_allclose(l[i, T - len(s):], alone, atol=1e-5)


def test_segment_packing_equals_separate(model):
  a, b = random_ids(3, (1, 3))[0], random_ids(4, (1, 4))[0]
  packed = jnp.concatenate([a, b, jnp.zeros((1,), jnp.int32)])[None]  # [1, 8]
  segments = jnp.asarray([[1, 1, 1, 2, 2, 2, 2, 0]])
  positions = jnp.asarray([[0, 1, 2, 0, 1, 2, 3, 0]])
  mask = (segments != 0).astype(jnp.int32)
  out = forward(model, packed, mask, positions, segments)[0]
  np.testing.assert_allclose(out[:3], forward(model, a[None])[0], atol=1e-5)
  np.testing.assert_allclose(out[3:7], forward(model, b[None])[0], atol=1e-5)
  with pytest.raises(ValueError, match='positions'):
    model(packed, segment_ids=segments)


def _loss_and_grads(model, ids):
  def loss_fn(m):
    logp = jax.nn.log_softmax(m(ids[:, :-1]))
    return -jnp.take_along_axis(logp, ids[:, 1:, None], -1).mean()
  return nnx.jit(nnx.value_and_grad(loss_fn))(model)


def test_remat_same_logits_and_grads(model):
  remat_model = random_model(model.config.replace(remat='block'),
                             params=params_of(model))
  ids = random_ids(5)
  np.testing.assert_allclose(forward(remat_model, ids), forward(model, ids),
                             atol=1e-6)
  loss, grads = _loss_and_grads(model, ids)
  rloss, rgrads = _loss_and_grads(remat_model, ids)
  np.testing.assert_allclose(rloss, loss, rtol=1e-6)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6),
               nnx.to_pure_dict(rgrads), nnx.to_pure_dict(grads))


def test_remat_saves_only_block_inputs(model, capsys):
  """With remat='block' no attention scores are kept for the backward pass.

  (Compiled memory stats on the CPU backend do not reflect remat, so this
  checks the residuals autodiff saves instead.)
  """
  scores_shape = 'f32[2,2,2,8,8]'  # [B, K, G, T, S]
  ids = random_ids(7)
  saved = {}
  for remat in ('none', 'block'):
    # The autodiff attention saves the whole [B, K, G, T, S] score matrix.
    cfg = model.config.replace(remat=remat, attention_impl='autodiff')
    m = random_model(cfg, params=params_of(model))
    graphdef, state = nnx.split(m)
    jax.ad_checkpoint.print_saved_residuals(
        lambda s, x: nnx.merge(graphdef, s)(x).sum(), state, ids)
    saved[remat] = [line for line in capsys.readouterr().out.splitlines()
                    if 'from the argument' not in line]
  assert any(scores_shape in line for line in saved['none'])
  assert not any(scores_shape in line for line in saved['block'])
  assert len(saved['block']) < len(saved['none']) / 3


def test_bf16_compute(model):
  cfg = model.config.replace(dtype='bfloat16')
  bf16 = random_model(cfg, params=params_of(model))
  ids = random_ids(6)
  out = forward(bf16, ids)
  assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()
  h = nnx.jit(lambda m, x: m.hidden_states(x))(bf16, ids)
  assert h.dtype == jnp.bfloat16
  ref = forward(model, ids)
  assert float(jnp.max(jnp.abs(out - ref))) < 0.05 * float(jnp.max(jnp.abs(ref)))


def test_bf16_params(model):
  cfg = model.config.replace(param_dtype='bfloat16', dtype='bfloat16')
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  dtypes = {x.dtype for x in jax.tree.leaves(params_of(abstract))}
  assert dtypes == {jnp.dtype(jnp.bfloat16)}
  m = random_model(cfg, params=params_of(model))
  assert forward(m, random_ids()).dtype == jnp.float32


# ----------------------------------------------------------------------------
# ModelConfig.


def test_config_validation():
  with pytest.raises(ValueError, match='num_kv_heads'):
    tiny_config(num_heads=4, num_kv_heads=3)
  with pytest.raises(ValueError, match='remat'):
    tiny_config(remat='full')
  with pytest.raises(ValueError, match='dtype'):
    tiny_config(dtype='int32')
  with pytest.raises(ValueError, match='rope_scaling'):
    tiny_config(rope_scaling={'rope_type': 'yarn', 'factor': 2.0})
  cfg = tiny_config(rope_scaling={
      'type': 'llama3', 'factor': 8, 'low_freq_factor': 1,
      'high_freq_factor': 4, 'original_max_position_embeddings': 64})
  assert cfg.head_dim == 8 and cfg.rope_scaling['rope_type'] == 'llama3'
  assert hash(cfg) == hash(cfg.replace())  # usable as a static jit arg
  assert tiny_config(dtype=jnp.bfloat16).dtype == 'bfloat16'


LLAMA3_HF = {
    'model_type': 'llama', 'vocab_size': 64, 'hidden_size': 32,
    'intermediate_size': 64, 'num_hidden_layers': 2,
    'num_attention_heads': 4, 'num_key_value_heads': 2,
    'rms_norm_eps': 1e-5, 'max_position_embeddings': 256,
    'eos_token_id': [1, 2],
}
_SCALING = {'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
            'original_max_position_embeddings': 64}


def test_from_hf_dict_v4_and_v5_formats_agree():
  v4 = dict(LLAMA3_HF, rope_theta=5e5,
            rope_scaling=dict(_SCALING, rope_type='llama3'))
  v5 = dict(LLAMA3_HF, rope_parameters=dict(
      _SCALING, rope_type='llama3', rope_theta=5e5))
  a, b = ModelConfig.from_hf_dict(v4), ModelConfig.from_hf_dict(v5)
  assert a == b and a.rope_theta == 5e5 and a.eos_token_id == (1, 2)
  assert ModelConfig.from_hf_dict(a.to_hf_dict()) == a
  assert ModelConfig.from_hf_dict(v4, remat='block').remat == 'block'


@pytest.mark.parametrize('extra, field', [
    ({'rope_scaling': {'rope_type': 'yarn', 'factor': 4.0}}, 'rope_scaling'),
    ({'rope_scaling': {'type': 'dynamic', 'factor': 2.0}}, 'rope_scaling'),
    ({'hidden_act': 'gelu'}, 'hidden_act'),
    ({'attention_bias': True}, 'attention_bias'),
    ({'mlp_bias': True}, 'mlp_bias'),
    # MistralForCausalLM ignores layer_types: one that disagrees is ambiguous.
    ({'model_type': 'mistral', 'sliding_window': 16,
      'layer_types': ['full_attention', 'sliding_attention']}, 'layer_types'),
    # Sliding layers without a window: transformers cannot build their mask.
    ({'model_type': 'qwen2', 'use_sliding_window': False, 'sliding_window': 16,
      'layer_types': ['full_attention', 'sliding_attention']}, 'layer_types'),
    ({'model_type': 'llama', 'layer_types': ['full_attention', 'sliding_attention'],
      'sliding_window': 16}, 'layer_types'),
    ({'model_type': 'gemma'}, 'model_type'),
])
def test_from_hf_dict_rejects_unsupported(extra, field):
  with pytest.raises(ValueError, match=field):
    ModelConfig.from_hf_dict(dict(LLAMA3_HF, **extra))


SLIDING, FULL = 'sliding_attention', 'full_attention'


@pytest.mark.parametrize('extra, window, types', [
    # Mistral: the window masks every layer whenever it is set, as MistralModel does
    # (even when it exceeds max_position_embeddings), and MistralConfig's default is 4096.
    ({'model_type': 'mistral', 'sliding_window': 16}, 16, (SLIDING,) * 2),
    ({'model_type': 'mistral', 'sliding_window': 4096}, 4096, (SLIDING,) * 2),
    ({'model_type': 'mistral'}, 4096, (SLIDING,) * 2),
    ({'model_type': 'mistral', 'sliding_window': None}, None, (FULL,) * 2),
    ({'model_type': 'mistral', 'sliding_window': 16,
      'layer_types': [SLIDING, SLIDING]}, 16, (SLIDING,) * 2),
    # Qwen2: off unless use_sliding_window; then layers >= max_window_layers (default 28)
    # slide, unless explicit layer_types say otherwise.
    ({'model_type': 'qwen2', 'sliding_window': 16}, None, (FULL,) * 2),
    ({'model_type': 'qwen2', 'use_sliding_window': False, 'sliding_window': 16,
      'max_window_layers': 0}, None, (FULL,) * 2),
    ({'model_type': 'qwen2', 'use_sliding_window': True, 'sliding_window': 16,
      'max_window_layers': 1}, 16, (FULL, SLIDING)),
    ({'model_type': 'qwen2', 'use_sliding_window': True, 'sliding_window': 16,
      'max_window_layers': 0}, 16, (SLIDING,) * 2),
    ({'model_type': 'qwen2', 'use_sliding_window': True, 'sliding_window': 16},
     None, (FULL,) * 2),
    ({'model_type': 'qwen2', 'use_sliding_window': True, 'max_window_layers': 1},
     4096, (FULL, SLIDING)),
    ({'model_type': 'qwen2', 'use_sliding_window': True, 'sliding_window': None,
      'max_window_layers': 0}, None, (FULL,) * 2),
    ({'model_type': 'qwen2', 'use_sliding_window': True, 'sliding_window': 16,
      'max_window_layers': 0, 'layer_types': [SLIDING, FULL]}, 16, (SLIDING, FULL)),
])
def test_from_hf_dict_reads_sliding_windows(extra, window, types):
  cfg = ModelConfig.from_hf_dict(dict(LLAMA3_HF, **extra))
  assert cfg.sliding_window == window and cfg.attention_types == types
  assert cfg.qkv_bias == (extra['model_type'] == 'qwen2')
  # The export reads back as the same model.
  hf = cfg.to_hf_dict()
  assert ModelConfig.from_hf_dict(hf).attention_types == types
  if cfg.architecture == 'qwen2':
    assert hf['use_sliding_window'] == (SLIDING in types)
    assert hf['layer_types'] == list(types)
    assert hf['max_window_layers'] == (types.index(SLIDING) if SLIDING in types else 2)
  else:
    assert 'layer_types' not in hf
    assert hf['sliding_window'] == (window if SLIDING in types else None)


def test_mixed_layer_types_cannot_be_exported_as_mistral():
  cfg = ModelConfig.from_hf_dict(dict(LLAMA3_HF, model_type='mistral', sliding_window=8))
  cfg = cfg.replace(layer_types=(FULL, SLIDING))
  with pytest.raises(ValueError, match='layer_types'):
    cfg.to_hf_dict()
  assert cfg.replace(architecture='qwen2', qkv_bias=True).to_hf_dict()['max_window_layers'] == 1
