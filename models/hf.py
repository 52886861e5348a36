"""Hugging Face checkpoint import/export (safetensors, no torch needed).

Families: Llama, Qwen2, Mistral, Qwen3, Gemma 2, Gemma 3 (text), Phi-3 and
OLMo 2 (see models/config.py).

`from_hf(path)` reads `config.json` plus `model.safetensors` or a sharded
set (`model.safetensors.index.json`) written by `save_pretrained`, and
returns a `Transformer`. `to_hf(model, path)` writes a directory that
`transformers.AutoModelForCausalLM.from_pretrained(path)` loads.

Weights are read with `safetensors.safe_open(framework='numpy')`, which
(safetensors >= 0.4) returns bfloat16 tensors as `ml_dtypes.bfloat16`
numpy arrays, so bf16 checkpoints load without torch.

Layout conversion (HF Linear weights are [out, in]; ours are [in, ...out]):
  q_proj.weight [N*H, D] <-> q_proj [D, N, H]    (likewise k/v with K)
  o_proj.weight [D, N*H] <-> o_proj [N, H, D]
  gate/up.weight [F, D]  <-> [D, F];   down.weight [D, F] <-> [F, D]
  lm_head.weight [V, D]  <-> lm_head [D, V]
  q/k/v_proj.bias [N*H]  <-> [N, H];   embeddings and norms unchanged
  q/k_norm.weight [N*H]  <-> [N, H]    (OLMo 2's norm over the projection)
Phi-3 fuses projections into one HF tensor, split on import and fused on export:
  qkv_proj.weight [(N + 2K)*H, D] = rows of q_proj, k_proj, v_proj
  gate_up_proj.weight [2F, D]     = rows of gate_proj, up_proj
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from models.config import ModelConfig
from models.llama import Transformer

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
# Tensors some checkpoints carry that hold no parameters (RoPE buffers).
_IGNORED = re.compile(r'model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq')
_OUR_FILES = re.compile(
    r'model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?')


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One HF tensor <-> one parameter of our model, or several (a fused tensor).

  A fused tensor stacks its parts' HF layouts along the first axis (`rows`
  each), as Phi-3's qkv_proj and gate_up_proj do.
  """

  hf_name: str
  paths: tuple[tuple[Any, ...], ...]  # key paths in nnx.to_pure_dict(params)
  hf_shape: tuple[int, ...]
  transpose: bool  # HF [out, in] Linear weight <-> ours [in, ...out]
  rows: tuple[int, ...]  # HF rows of each part

  def to_ours(self, w: np.ndarray, shapes) -> list[np.ndarray]:
    """The HF tensor -> one array per path, of the given shapes."""
    parts = np.split(w, np.cumsum(self.rows)[:-1], axis=0)
    return [(p.T if self.transpose else p).reshape(s) for p, s in zip(parts, shapes)]

  def to_hf(self, ws: list[np.ndarray]) -> np.ndarray:
    """One array per path -> the HF tensor."""
    parts = []
    for w, rows in zip(ws, self.rows):
      shape = (rows,) + self.hf_shape[1:]
      parts.append(w.reshape(shape[::-1]).T if self.transpose else w.reshape(shape))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def _entry(hf_name, path, hf_shape, transpose) -> _Entry:
  """A one-parameter entry."""
  return _Entry(hf_name, (path,), tuple(hf_shape), transpose, (hf_shape[0],))


def _fused(hf_name, paths, rows, d) -> _Entry:
  """A Linear weight [sum(rows), d] fusing the parameters at `paths`."""
  return _Entry(hf_name, tuple(paths), (sum(rows), d), True, tuple(rows))


def _entries(cfg: ModelConfig) -> list[_Entry]:
  """The HF tensors of a model with this config, in save order."""
  v, d, f = cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size
  h = cfg.head_dim
  nh, kh = cfg.num_heads * h, cfg.num_kv_heads * h
  fused = cfg.architecture == 'phi3'
  out = [_entry('model.embed_tokens.weight', ('embedding',), (v, d), False)]
  for i in range(cfg.num_layers):
    p = f'model.layers.{i}'
    layer, attn, mlp = ('layers', i), ('layers', i, 'attn'), ('layers', i, 'mlp')
    norm = lambda hf, ours: _entry(f'{p}.{hf}.weight', layer + (ours, 'scale'), (d,), False)
    if cfg.norm_placement != 'post':
      out.append(norm('input_layernorm', 'input_norm'))
    if fused:
      out.append(_fused(f'{p}.self_attn.qkv_proj.weight',
                        [attn + ('q_proj',), attn + ('k_proj',), attn + ('v_proj',)],
                        (nh, kh, kh), d))
    else:
      out += [
          _entry(f'{p}.self_attn.q_proj.weight', attn + ('q_proj',), (nh, d), True),
          _entry(f'{p}.self_attn.k_proj.weight', attn + ('k_proj',), (kh, d), True),
          _entry(f'{p}.self_attn.v_proj.weight', attn + ('v_proj',), (kh, d), True),
      ]
    if cfg.qkv_bias:
      out += [
          _entry(f'{p}.self_attn.q_proj.bias', attn + ('q_bias',), (nh,), False),
          _entry(f'{p}.self_attn.k_proj.bias', attn + ('k_bias',), (kh,), False),
          _entry(f'{p}.self_attn.v_proj.bias', attn + ('v_bias',), (kh,), False),
      ]
    if cfg.qk_norm != 'none':
      per_head = cfg.qk_norm == 'head'
      out += [
          _entry(f'{p}.self_attn.q_norm.weight', attn + ('q_norm', 'scale'),
                 (h if per_head else nh,), False),
          _entry(f'{p}.self_attn.k_norm.weight', attn + ('k_norm', 'scale'),
                 (h if per_head else kh,), False),
      ]
    out.append(_entry(f'{p}.self_attn.o_proj.weight', attn + ('o_proj',), (d, nh), True))
    if cfg.norm_placement == 'pre':
      out.append(norm('post_attention_layernorm', 'post_attn_norm'))
    else:
      # Gemma and OLMo 2 call the norm on the attention output post_attention_layernorm.
      out.append(norm('post_attention_layernorm', 'attn_out_norm'))
    if cfg.norm_placement == 'sandwich':
      out.append(norm('pre_feedforward_layernorm', 'post_attn_norm'))
    if fused:
      out.append(_fused(f'{p}.mlp.gate_up_proj.weight',
                        [mlp + ('gate_proj',), mlp + ('up_proj',)], (f, f), d))
    else:
      out += [
          _entry(f'{p}.mlp.gate_proj.weight', mlp + ('gate_proj',), (f, d), True),
          _entry(f'{p}.mlp.up_proj.weight', mlp + ('up_proj',), (f, d), True),
      ]
    out.append(_entry(f'{p}.mlp.down_proj.weight', mlp + ('down_proj',), (d, f), True))
    if cfg.norm_placement != 'pre':
      out.append(norm('post_feedforward_layernorm', 'mlp_out_norm'))
  out.append(_entry('model.norm.weight', ('final_norm', 'scale'), (d,), False))
  if not cfg.tie_word_embeddings:
    out.append(_entry('lm_head.weight', ('lm_head',), (v, d), True))
  return out


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


# ----------------------------------------------------------------------------
# Import.


def _weight_files(path: str) -> tuple[dict[str, str], str]:
  """(tensor name -> safetensors file holding it, file listing them all)."""
  single = os.path.join(path, SINGLE_FILE)
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(single):
    with safe_open(single, framework='numpy') as f:
      return {name: single for name in f.keys()}, single
  if os.path.exists(index):
    with open(index) as f:
      weight_map = json.load(f)['weight_map']
    files = {name: os.path.join(path, fn) for name, fn in weight_map.items()}
    for fn in sorted(set(files.values())):
      if not os.path.exists(fn):
        raise FileNotFoundError(f'{index} refers to missing file {fn}.')
    return files, index
  raise FileNotFoundError(
      f'No {SINGLE_FILE} or {INDEX_FILE} in {path} (only safetensors '
      'checkpoints are supported).')


def load_hf_config(path: str, **overrides) -> ModelConfig:
  """Reads `path/config.json` into a ModelConfig (overrides on top)."""
  with open(os.path.join(path, 'config.json')) as f:
    return ModelConfig.from_hf_dict(json.load(f), **overrides)


def from_hf(path: str, *, dtype=None, param_dtype=None,
            **overrides) -> Transformer:
  """Loads a HF safetensors checkpoint of a supported family (models/config.py).

  Args:
    path: directory with config.json and model.safetensors (or a sharded set
      with model.safetensors.index.json).
    dtype: compute dtype (default: ModelConfig's, float32).
    param_dtype: parameter dtype (default: ModelConfig's, float32); the
      checkpoint's tensors are cast to it.
    **overrides: other ModelConfig fields, e.g. remat='block'.

  Returns:
    A `Transformer` with the checkpoint's weights (on the default device).

  Raises:
    ValueError: naming the file and tensor, for missing, unexpected or
      wrongly shaped tensors; or naming the config field for unsupported
      features.
  """
  if dtype is not None:
    overrides['dtype'] = dtype
  if param_dtype is not None:
    overrides['param_dtype'] = param_dtype
  cfg = load_hf_config(path, **overrides)
  files, where = _weight_files(path)
  entries = _entries(cfg)
  expected = {e.hf_name for e in entries}

  missing = [e.hf_name for e in entries if e.hf_name not in files]
  if missing:
    raise ValueError(
        f'{where}: missing tensor(s) {_short(missing)} for config '
        f'{os.path.join(path, "config.json")}.')
  unexpected = [
      n for n in files
      if n not in expected and not _IGNORED.fullmatch(n)
      # Tied checkpoints sometimes still store the (identical) lm_head.
      and not (n == 'lm_head.weight' and cfg.tie_word_embeddings)
  ]
  if unexpected:
    raise ValueError(
        f'{files[unexpected[0]]}: unexpected tensor(s) {_short(unexpected)} '
        '(unsupported architecture feature or wrong config.json?).')

  # Build the module structure without allocating random weights.
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  shapes = nnx.to_pure_dict(state)
  param_dtype_np = np.dtype(cfg.params_dtype)
  pure: dict[str, Any] = {}
  by_file: dict[str, list[_Entry]] = {}
  for e in entries:
    by_file.setdefault(files[e.hf_name], []).append(e)
  for fn, file_entries in by_file.items():
    with safe_open(fn, framework='numpy') as f:
      for e in file_entries:
        if e.hf_name not in f.keys():
          raise ValueError(f'{fn}: missing tensor {e.hf_name} (listed in '
                           f'{INDEX_FILE}).')
        w = f.get_tensor(e.hf_name)
        if tuple(w.shape) != e.hf_shape:
          raise ValueError(
              f'{fn}: tensor {e.hf_name} has shape {tuple(w.shape)}, '
              f'expected {e.hf_shape} from config.json.')
        if not jnp.issubdtype(w.dtype, jnp.floating):
          raise ValueError(f'{fn}: tensor {e.hf_name} has non-float dtype '
                           f'{w.dtype}.')
        parts = e.to_ours(w, [_get(shapes, path).shape for path in e.paths])
        for path, part in zip(e.paths, parts):
          _set(pure, path, jnp.asarray(part.astype(param_dtype_np)))
  nnx.replace_by_pure_dict(state, pure)
  leftover = [x for x in jax.tree.leaves(state)
              if isinstance(x, jax.ShapeDtypeStruct)]
  assert not leftover, f'parameters not covered by the HF mapping: {leftover}'
  return nnx.merge(graphdef, state)


def _short(names: list[str], limit: int = 8) -> str:
  more = f' (+{len(names) - limit} more)' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


# ----------------------------------------------------------------------------
# Export.


def to_hf(model: Transformer, path: str, *, dtype=None,
          max_shard_bytes: int | None = None) -> None:
  """Writes `model` as a HF checkpoint directory.

  Writes config.json, generation_config.json (token ids only, when known)
  and model.safetensors, or model-0000i-of-0000n.safetensors shards plus
  model.safetensors.index.json when the weights exceed max_shard_bytes.
  Stale model*.safetensors / index files already in `path` are removed so
  transformers cannot pick up a previous export.

  Args:
    model: the Transformer (parameters must be addressable from this
      process, i.e. single-host).
    path: output directory (created if needed).
    dtype: dtype of the saved tensors (default: the model's param_dtype).
    max_shard_bytes: maximum bytes of tensor data per file (a single tensor
      larger than this gets a file of its own); None -> one file.
  """
  cfg = model.config
  out_dtype = np.dtype(jnp.dtype(dtype or cfg.params_dtype))
  entries = _entries(cfg)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))

  # Plan the shards from shapes alone, then materialise one shard at a time
  # so host memory holds at most one shard of converted weights.
  shards: list[list[_Entry]] = [[]]
  shard_bytes = 0
  for e in entries:
    nbytes = int(np.prod(e.hf_shape)) * out_dtype.itemsize
    if (max_shard_bytes is not None and shards[-1]
        and shard_bytes + nbytes > max_shard_bytes):
      shards.append([])
      shard_bytes = 0
    shards[-1].append(e)
    shard_bytes += nbytes

  os.makedirs(path, exist_ok=True)
  for fn in os.listdir(path):
    if _OUR_FILES.fullmatch(fn):
      os.remove(os.path.join(path, fn))

  n = len(shards)
  weight_map, total = {}, 0
  for i, shard in enumerate(shards):
    fn = SINGLE_FILE if n == 1 else f'model-{i + 1:05d}-of-{n:05d}.safetensors'
    tensors = {}
    for e in shard:
      ws = [np.asarray(jax.device_get(_get(params, path))).astype(out_dtype)
            for path in e.paths]
      tensors[e.hf_name] = np.ascontiguousarray(e.to_hf(ws))
      weight_map[e.hf_name] = fn
      total += tensors[e.hf_name].nbytes
    save_file(tensors, os.path.join(path, fn), metadata={'format': 'pt'})
  if n > 1:
    with open(os.path.join(path, INDEX_FILE), 'w') as f:
      json.dump({'metadata': {'total_size': total}, 'weight_map': weight_map},
                f, indent=2)

  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(cfg.to_hf_dict(torch_dtype=out_dtype.name), f, indent=2)
  gen = {k: getattr(cfg, k) for k in
         ('bos_token_id', 'eos_token_id', 'pad_token_id')
         if getattr(cfg, k) is not None}
  if gen:
    if isinstance(gen.get('eos_token_id'), tuple):
      gen['eos_token_id'] = list(gen['eos_token_id'])
    with open(os.path.join(path, 'generation_config.json'), 'w') as f:
      json.dump(gen, f, indent=2)
