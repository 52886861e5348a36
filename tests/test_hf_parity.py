"""Parity with Hugging Face transformers, and checkpoint import/export."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
from safetensors.numpy import load_file, save_file  # noqa: E402

from models import ModelConfig, from_hf, to_hf  # noqa: E402

V = 96
COMMON = dict(vocab_size=V, hidden_size=32, intermediate_size=64,
              num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256,
              initializer_range=0.1)
LLAMA3_SCALING = {'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
                  'high_freq_factor': 4.0,
                  # head_dim 8 -> wavelengths 6, 63, 628, 6283 tokens: one
                  # in each of the high / medium / low frequency bands.
                  'original_max_position_embeddings': 64}
CASES = {
    'llama_gqa': ('LlamaConfig', 'LlamaForCausalLM', {}),
    'llama3_rope': ('LlamaConfig', 'LlamaForCausalLM',
                    {'rope_scaling': LLAMA3_SCALING, 'rope_theta': 500.0}),
    # Qwen2: q/k/v bias, tied embeddings.
    'qwen2_tied': ('Qwen2Config', 'Qwen2ForCausalLM',
                   {'tie_word_embeddings': True}),
    # Default sliding_window=4096: every layer masked, but no sequence is that long
    # (tests/test_model_families.py runs Mistral and Qwen2 with shorter windows).
    'mistral': ('MistralConfig', 'MistralForCausalLM', {}),
}


def make_hf_model(case: str, seed: int = 0):
  config_cls, model_cls, extra = CASES[case]
  return build_hf_model(config_cls, model_cls, dict(COMMON, **extra), seed)


def build_hf_model(config_cls: str, model_cls: str, kwargs: dict, seed: int = 0):
  """A transformers model of random tiny weights (norms and biases randomised too)."""
  config = getattr(transformers, config_cls)(**kwargs)
  config._attn_implementation = 'eager'
  torch.manual_seed(seed)
  model = getattr(transformers, model_cls)(config).eval()
  # HF initialises norms to 1 and biases to 0; randomise them so a
  # mis-mapped norm or bias cannot go unnoticed.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.copy_(1 + 0.1 * torch.randn_like(p))
      elif name.endswith('bias'):
        p.copy_(0.1 * torch.randn_like(p))
  return model


def batch():
  """ids [3, 12]; row 0 full, row 1 left-padded, row 2 right-padded."""
  rng = np.random.RandomState(0)
  ids = rng.randint(0, V, (3, 12)).astype(np.int32)
  mask = np.ones((3, 12), np.int32)
  mask[1, :4] = 0
  mask[2, 7:] = 0
  return ids, mask


def torch_logits(model, ids, mask):
  # HF does not derive positions from the mask in a plain forward: pass the
  # same cumsum positions our model uses by default.
  pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long),
                position_ids=torch.tensor(pos, dtype=torch.long))
  return out.logits.float().numpy()


@nnx.jit
def jax_logits(model, ids, mask):
  return model(ids, attention_mask=mask)


def assert_logits_close(ours, ref, mask, rtol=1e-5):
  # Measured: ~1e-6 relative in float32 (the brief asks for 1e-4); tighter
  # catches small mistakes such as a wrong attention scale.
  real = mask.astype(bool)
  ours, ref = np.asarray(ours)[real], np.asarray(ref)[real]
  np.testing.assert_allclose(ours, ref, rtol=rtol,
                             atol=rtol * np.abs(ref).max())


def params(model):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def assert_bitwise_equal(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(
      x.view(np.uint8), y.view(np.uint8)), a, b)
  assert jax.tree.structure(a) == jax.tree.structure(b)


def save_checkpoints(tmp_path_factory, names, make) -> dict:
  """name -> (torch model `make(name)`, directory written by save_pretrained)."""
  out = {}
  for name in names:
    model = make(name)
    path = str(tmp_path_factory.mktemp(name))
    model.save_pretrained(path, safe_serialization=True)
    out[name] = (model, path)
  return out


@pytest.fixture(scope='module')
def hf_checkpoints(tmp_path_factory):
  """case -> (torch model, directory written by save_pretrained)."""
  return save_checkpoints(tmp_path_factory, CASES, make_hf_model)


@pytest.mark.parametrize('case', list(CASES))
def test_logits_match_transformers(hf_checkpoints, case):
  hf_model, path = hf_checkpoints[case]
  model = from_hf(path)
  assert model.config.architecture == case.split('_')[0].rstrip('3')
  ids, mask = batch()
  ours = jax_logits(model, ids, mask)
  assert ours.dtype == jnp.float32
  assert_logits_close(ours, torch_logits(hf_model, ids, mask), mask)


@pytest.mark.parametrize('case', list(CASES))
def test_export_loads_in_transformers(hf_checkpoints, tmp_path, case):
  hf_model, path = hf_checkpoints[case]
  model = from_hf(path)
  to_hf(model, str(tmp_path))
  # The exported tensors are exactly the original ones.
  original = load_file(os.path.join(path, 'model.safetensors'))
  exported = load_file(str(tmp_path / 'model.safetensors'))
  assert sorted(original) == sorted(exported)
  assert_bitwise_equal(exported, {k: original[k] for k in exported})
  # import -> export -> import is bitwise exact.
  assert_bitwise_equal(params(from_hf(str(tmp_path))), params(model))

  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path), attn_implementation='eager', dtype=torch.float32)
  assert type(reloaded) is type(hf_model)
  assert (reloaded.config.tie_word_embeddings
          == hf_model.config.tie_word_embeddings)
  ids, mask = batch()
  np.testing.assert_array_equal(torch_logits(reloaded, ids, mask),
                                torch_logits(hf_model, ids, mask))


def test_sharded_export_roundtrip(hf_checkpoints, tmp_path):
  hf_model, path = hf_checkpoints['llama_gqa']
  model = from_hf(path)
  out = str(tmp_path / 'sharded')
  to_hf(model, out, max_shard_bytes=16_000)
  files = sorted(os.listdir(out))
  shards = [f for f in files if f.startswith('model-')]
  assert len(shards) > 2 and 'model.safetensors.index.json' in files
  assert 'model.safetensors' not in files
  with open(os.path.join(out, 'model.safetensors.index.json')) as f:
    index = json.load(f)
  assert sorted(set(index['weight_map'].values())) == shards
  assert_bitwise_equal(params(from_hf(out)), params(model))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      out, attn_implementation='eager', dtype=torch.float32)
  ids, mask = batch()
  np.testing.assert_array_equal(torch_logits(reloaded, ids, mask),
                                torch_logits(hf_model, ids, mask))
  # Re-exporting as one file removes the stale shards.
  to_hf(model, out)
  assert sorted(os.listdir(out)) == ['config.json', 'generation_config.json',
                                     'model.safetensors']


def test_transformers_sharded_checkpoint_loads(hf_checkpoints, tmp_path):
  hf_model, path = hf_checkpoints['qwen2_tied']
  hf_model.save_pretrained(str(tmp_path), max_shard_size='20KB')
  assert os.path.exists(tmp_path / 'model.safetensors.index.json')
  assert_bitwise_equal(params(from_hf(str(tmp_path))), params(from_hf(path)))


def test_bf16_checkpoint(tmp_path):
  bf16_dir = str(tmp_path / 'bf16')
  make_hf_model('llama3_rope').to(torch.bfloat16).save_pretrained(bf16_dir)

  # Upcast on load: exactly the bf16 values, and logits match a float32 torch
  # model holding the same (bf16-rounded) weights.
  model = from_hf(bf16_dir)
  assert model.lm_head[...].dtype == jnp.float32
  # (Round the parameters only: model.to(bfloat16) would also round the
  # RoPE inv_freq buffer, which HF then uses in bf16.)
  ref = make_hf_model('llama3_rope')
  with torch.no_grad():
    for p in ref.parameters():
      p.copy_(p.bfloat16().float())
  ids, mask = batch()
  assert_logits_close(jax_logits(model, ids, mask),
                      torch_logits(ref, ids, mask), mask)

  # Kept in bf16: bitwise the checkpoint; export in bf16 round-trips.
  model16 = from_hf(bf16_dir, param_dtype='bfloat16', dtype='bfloat16')
  assert model16.lm_head[...].dtype == jnp.bfloat16
  out = str(tmp_path / 'out')
  to_hf(model16, out)
  assert_bitwise_equal(load_file(os.path.join(out, 'model.safetensors')),
                       load_file(os.path.join(bf16_dir, 'model.safetensors')))
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['torch_dtype'] == 'bfloat16'
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      out, attn_implementation='eager')
  assert reloaded.dtype == torch.bfloat16

  # A float32 model exported with dtype='bfloat16' also gives these bytes.
  to_hf(model, str(tmp_path / 'down'), dtype='bfloat16')
  assert_bitwise_equal(
      load_file(str(tmp_path / 'down' / 'model.safetensors')),
      load_file(os.path.join(bf16_dir, 'model.safetensors')))


def _copy_with_tensors(src, dst, edit):
  shutil.copytree(src, dst)
  fn = os.path.join(dst, 'model.safetensors')
  tensors = load_file(fn)
  edit(tensors)
  save_file(tensors, fn, metadata={'format': 'pt'})
  return fn


def test_missing_tensor_error_names_tensor_and_file(hf_checkpoints, tmp_path):
  _, path = hf_checkpoints['llama_gqa']
  name = 'model.layers.1.mlp.up_proj.weight'
  fn = _copy_with_tensors(path, tmp_path / 'ckpt',
                          lambda t: t.pop(name))
  with pytest.raises(ValueError, match='missing') as e:
    from_hf(str(tmp_path / 'ckpt'))
  assert name in str(e.value) and fn in str(e.value)


def test_unexpected_and_misshaped_tensor_errors(hf_checkpoints, tmp_path):
  _, path = hf_checkpoints['llama_gqa']
  _copy_with_tensors(path, tmp_path / 'extra', lambda t: t.update(
      {'model.layers.0.self_attn.o_proj.bias': np.zeros(32, np.float32)}))
  with pytest.raises(ValueError, match='unexpected.*o_proj.bias'):
    from_hf(str(tmp_path / 'extra'))

  name = 'model.layers.0.self_attn.k_proj.weight'
  fn = _copy_with_tensors(path, tmp_path / 'shape', lambda t: t.update(
      {name: np.zeros((8, 32), np.float32)}))
  with pytest.raises(ValueError, match=r'k_proj.weight has shape \(8, 32\)'
                     ) as e:
    from_hf(str(tmp_path / 'shape'))
  assert fn in str(e.value)


def _hf_attention_types(config):
  """The layer types a transformers 5 Mistral / Qwen2 model runs with."""
  if isinstance(config, transformers.MistralConfig):
    # MistralModel masks every layer whenever sliding_window is set
    # (models/mistral/modeling_mistral.py: create_sliding_window_causal_mask).
    kind = 'full_attention' if config.sliding_window is None else 'sliding_attention'
    return [kind] * config.num_hidden_layers
  # Qwen2Model: config.layer_types, derived in Qwen2Config.__post_init__ from
  # use_sliding_window / max_window_layers unless given.
  return list(config.layer_types)


@pytest.mark.parametrize('config_cls, kwargs', [
    ('MistralConfig', {}),
    ('MistralConfig', {'sliding_window': 8}),
    ('MistralConfig', {'sliding_window': None}),
    ('Qwen2Config', {'use_sliding_window': False, 'sliding_window': 8,
                     'max_window_layers': 0}),
    ('Qwen2Config', {'use_sliding_window': True, 'sliding_window': 8}),
    ('Qwen2Config', {'use_sliding_window': True, 'sliding_window': 8,
                     'max_window_layers': 0}),
    ('Qwen2Config', {'use_sliding_window': True, 'sliding_window': 8,
                     'max_window_layers': 2}),
    ('Qwen2Config', {'use_sliding_window': True, 'sliding_window': 8,
                     'layer_types': ['sliding_attention', 'full_attention',
                                     'sliding_attention']}),
])
def test_sliding_window_configs_match_transformers(config_cls, kwargs):
  """Mistral / Qwen2 windows in use are read as transformers runs them, and exported
  so that transformers runs the same layers (logits: tests/test_model_families.py)."""
  cls = getattr(transformers, config_cls)
  hf = cls(**dict(COMMON, num_hidden_layers=3), **kwargs)
  expected = _hf_attention_types(hf)
  cfg = ModelConfig.from_hf_dict(hf.to_dict())
  assert list(cfg.attention_types) == expected
  if 'sliding_attention' in expected:
    assert cfg.sliding_window == hf.sliding_window == kwargs.get('sliding_window', 4096)
  exported = cfg.to_hf_dict()
  reloaded = cls(**{k: v for k, v in exported.items()
                    if k not in ('architectures', 'model_type')})
  assert _hf_attention_types(reloaded) == expected
  if 'sliding_attention' in expected:
    assert reloaded.sliding_window == hf.sliding_window
  assert ModelConfig.from_hf_dict(exported) == cfg
