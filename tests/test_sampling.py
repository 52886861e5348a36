"""Tests for models/sampling.py and the KV-cache decode path of models/llama.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data.tokenizer import ByteTokenizer
from models import ModelConfig, Transformer
from models import sampling
from training.logprobs import token_logps

PAD = 0
NO_EOS = 10_000  # an id the model can never emit: rows run to max_new_tokens


def tiny_config(**kw) -> ModelConfig:
  base = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_layers=2,
              num_heads=4, num_kv_heads=2)  # GQA: 2 query heads per kv head
  base.update(kw)
  return ModelConfig(**base)


def random_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
  """numpy-random weights (no jax init compiles); std 0.3 gives peaked-enough logits."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
  rng = np.random.RandomState(seed)
  params = jax.tree.map(
      lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape) + (s.ndim == 1),
                            cfg.param_dtype),
      nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def left_padded_prompts(lengths, width, vocab, seed=0):
  """Random prompts of the given lengths, left-padded to width: (ids, mask) [B, width]."""
  rng = np.random.RandomState(seed)
  ids = np.full((len(lengths), width), PAD, np.int32)
  mask = np.zeros((len(lengths), width), np.int32)
  for row, n in enumerate(lengths):
    ids[row, width - n:] = rng.randint(1, vocab, n)
    mask[row, width - n:] = 1
  return ids, mask


@nnx.jit
def training_logps(model, ids, mask):
  return token_logps(model, ids, mask)


def rescore(model, prompt_ids, prompt_mask, tokens, completion_mask):
  """Completion log-probs [B, M] from the training forward on concat(prompt, tokens)."""
  ids = jnp.concatenate([prompt_ids, tokens], axis=1)
  mask = jnp.concatenate([prompt_mask, completion_mask], axis=1)
  return np.asarray(training_logps(model, ids, mask))[:, prompt_ids.shape[1]:]


@pytest.fixture(scope='module')
def model():
  return random_model(tiny_config())


@pytest.fixture(scope='module')
def prompts():
  return left_padded_prompts([3, 7, 1, 5], width=7, vocab=96, seed=1)


# ----------------------------------------------------------------------------
# Cache correctness.


def test_greedy_with_cache_equals_full_forward_without_cache(model, prompts):
  ids, mask = prompts
  m = 10
  tokens, cmask, logps = sampling.sample(model, ids, mask, key=jax.random.key(0),
                                         max_new_tokens=m, temperature=0.0,
                                         eos_id=NO_EOS, pad_id=PAD)
  assert tokens.shape == cmask.shape == logps.shape == (4, m)
  np.testing.assert_array_equal(cmask, 1)

  # Reference: re-run the full (training) forward over the whole growing sequence each
  # step, in one fixed [B, P + M] buffer (not-yet-generated slots are masked out).
  @nnx.jit
  def next_token(model, seq, seq_mask, pos):
    logits = model(seq, attention_mask=seq_mask)[:, pos]  # [B, V]
    return jnp.argmax(logits, -1), jax.nn.log_softmax(logits)

  p = ids.shape[1]
  seq = np.concatenate([ids, np.full((4, m), PAD, np.int32)], axis=1)
  seq_mask = np.concatenate([mask, np.zeros((4, m), np.int32)], axis=1)
  ref_logps = np.zeros((4, m), np.float32)
  for i in range(m):
    tok, log_probs = next_token(model, seq, seq_mask, p + i - 1)
    seq[:, p + i], seq_mask[:, p + i] = np.asarray(tok), 1
    ref_logps[:, i] = np.asarray(log_probs)[np.arange(4), np.asarray(tok)]
  np.testing.assert_array_equal(tokens, seq[:, p:])
  np.testing.assert_allclose(logps, ref_logps, atol=1e-5)
  # Random greedy paths that do not all collapse to one token: the test has teeth.
  assert len(np.unique(np.asarray(tokens))) > 3


def test_cached_prefill_equals_hidden_states(model, prompts):
  """The cache path over a whole prompt is the training forward (cache longer than T)."""
  ids, mask = map(jnp.asarray, prompts)

  @nnx.jit
  def both(model, ids, mask):
    cache = model.init_cache(ids.shape[0], ids.shape[1] + 5)
    key_mask = jnp.pad(mask, ((0, 0), (0, 5)))
    positions = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
    h, _ = model.cached_hidden_states(ids, positions=positions, cache=cache, index=0,
                                      key_mask=key_mask)
    return h, model.hidden_states(ids, attention_mask=mask)

  cached, full = both(model, ids, mask)
  real = np.asarray(mask, bool)
  np.testing.assert_allclose(np.asarray(cached)[real], np.asarray(full)[real], atol=1e-5)


# ----------------------------------------------------------------------------
# Log-probs agree with training.


def check_rescoring(model, ids, mask, key, m=8, eos_id=NO_EOS):
  tokens, cmask, logps = sampling.sample(model, ids, mask, key=key, max_new_tokens=m,
                                         temperature=1.0, eos_id=eos_id, pad_id=PAD)
  ref = rescore(model, jnp.asarray(ids), jnp.asarray(mask), tokens, cmask)
  live = np.asarray(cmask, bool)
  np.testing.assert_allclose(np.asarray(logps)[live], ref[live], atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(logps)[~live], 0.0)
  assert np.isfinite(np.asarray(logps)).all()
  return tokens, cmask, logps


def test_logps_equal_training_rescoring_under_left_padding(model, prompts):
  ids, mask = prompts
  tokens, cmask, _ = check_rescoring(model, ids, mask, jax.random.key(3))
  np.testing.assert_array_equal(cmask, 1)
  # The amount of left padding changes nothing: same prompt, more padding, same key.
  wide_ids, wide_mask = (np.pad(a, ((0, 0), (4, 0))) for a in prompts)
  wide = sampling.sample(model, wide_ids, wide_mask, key=jax.random.key(3),
                         max_new_tokens=8, temperature=1.0, eos_id=NO_EOS, pad_id=PAD)
  np.testing.assert_array_equal(wide[0], tokens)


def test_logps_with_eos_mid_completion(model, prompts):
  """Rescoring also holds when rows stop early (eos taken from an earlier sample)."""
  ids, mask = prompts
  tokens, _, _ = sampling.sample(model, ids, mask, key=jax.random.key(4), max_new_tokens=8,
                                 temperature=1.0, eos_id=NO_EOS, pad_id=PAD)
  eos = int(tokens[0, 2])
  _, cmask, _ = check_rescoring(model, ids, mask, jax.random.key(4), eos_id=eos)
  assert np.asarray(cmask)[0].sum() <= 3


@pytest.mark.parametrize('variant', [
    dict(tie_word_embeddings=True, qkv_bias=True, architecture='qwen2'),
    dict(num_kv_heads=4, attention_impl='autodiff', mlp_impl='autodiff',
         rope_scaling=dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0,
                           high_freq_factor=4.0, original_max_position_embeddings=8)),
    dict(num_kv_heads=1, head_dim=16, attention_query_blocks=3),
])
def test_config_variants(variant):
  cfg = tiny_config(**variant)
  model = random_model(cfg, seed=2)
  ids, mask = left_padded_prompts([2, 6, 4], width=6, vocab=cfg.vocab_size, seed=5)
  check_rescoring(model, ids, mask, jax.random.key(7), m=6)


def test_bfloat16_compute_runs_and_roughly_matches():
  cfg = tiny_config(dtype='bfloat16')
  model = random_model(cfg, seed=3)
  ids, mask = left_padded_prompts([2, 5], width=5, vocab=cfg.vocab_size, seed=6)
  tokens, cmask, logps = sampling.sample(model, ids, mask, key=jax.random.key(0),
                                         max_new_tokens=5, eos_id=NO_EOS, pad_id=PAD)
  ref = rescore(model, jnp.asarray(ids), jnp.asarray(mask), tokens, cmask)
  assert np.isfinite(np.asarray(logps)).all()
  np.testing.assert_allclose(logps, ref, atol=0.1)


# ----------------------------------------------------------------------------
# eos, determinism, temperature and top-p.


def test_eos_handling(model, prompts):
  ids, mask = prompts
  m = 8
  free, _, free_logps = sampling.sample(model, ids, mask, key=jax.random.key(0),
                                        max_new_tokens=m, temperature=0.0, eos_id=NO_EOS,
                                        pad_id=PAD)
  free, free_logps = np.asarray(free), np.asarray(free_logps)
  eos = int(free[1, 3])  # row 1 greedily emits this token at step 3 (or earlier)
  pad = 95
  tokens, cmask, logps = map(np.asarray, sampling.sample(
      model, ids, mask, key=jax.random.key(0), max_new_tokens=m, temperature=0.0,
      eos_id=eos, pad_id=pad))
  for row in range(4):
    hits = np.flatnonzero(free[row] == eos)
    stop = hits[0] + 1 if hits.size else m  # eos itself is part of the completion
    np.testing.assert_array_equal(tokens[row, :stop], free[row, :stop])
    np.testing.assert_array_equal(cmask[row, :stop], 1)
    np.testing.assert_allclose(logps[row, :stop], free_logps[row, :stop], atol=1e-6)
    np.testing.assert_array_equal(tokens[row, stop:], pad)
    np.testing.assert_array_equal(cmask[row, stop:], 0)
    np.testing.assert_array_equal(logps[row, stop:], 0.0)
  assert cmask[1].sum() <= 4
  # Several eos ids: a row stops at whichever comes first.
  other = int(free[0, 1])
  tokens2, cmask2, _ = sampling.sample(model, ids, mask, key=jax.random.key(0),
                                       max_new_tokens=m, temperature=0.0,
                                       eos_id=(eos, other), pad_id=pad)
  assert np.asarray(cmask2)[0].sum() <= 2
  assert np.asarray(cmask2)[1].sum() <= 4


def test_all_rows_stop_early(model, prompts):
  """The while_loop exits once every row has finished; outputs stay well formed."""
  ids, mask = prompts
  first, _, _ = sampling.sample(model, ids, mask, key=jax.random.key(0), max_new_tokens=1,
                                temperature=0.0, eos_id=NO_EOS, pad_id=PAD)
  eos_ids = tuple(int(t) for t in np.unique(np.asarray(first)))
  tokens, cmask, logps = map(np.asarray, sampling.sample(
      model, ids, mask, key=jax.random.key(0), max_new_tokens=6, temperature=0.0,
      eos_id=eos_ids, pad_id=PAD))
  np.testing.assert_array_equal(tokens[:, 0], np.asarray(first)[:, 0])
  np.testing.assert_array_equal(cmask, np.eye(6, dtype=np.int32)[[0] * 4])
  np.testing.assert_array_equal(tokens[:, 1:], PAD)
  np.testing.assert_array_equal(logps[:, 1:], 0.0)


def test_deterministic_per_key_and_different_across_keys(model, prompts):
  ids, mask = prompts
  run = lambda seed, **kw: np.asarray(sampling.sample(
      model, ids, mask, key=jax.random.key(seed), max_new_tokens=8, eos_id=NO_EOS,
      pad_id=PAD, **kw)[0])
  a, b, c = run(0), run(0), run(1)
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  # Repeated rows (K samples of one prompt) get different samples from one key.
  rep_ids, rep_mask = np.repeat(ids[:1], 4, 0), np.repeat(mask[:1], 4, 0)
  rep = np.asarray(sampling.sample(model, rep_ids, rep_mask, key=jax.random.key(0),
                                   max_new_tokens=8, eos_id=NO_EOS, pad_id=PAD)[0])
  assert len({tuple(r) for r in rep}) > 1
  # A raw uint32 key (jax.random.PRNGKey) works as well.
  raw = sampling.sample(model, ids, mask, key=jax.random.PRNGKey(0), max_new_tokens=2,
                        eos_id=NO_EOS, pad_id=PAD)
  assert raw[0].shape == (4, 2)


def test_tiny_top_p_equals_greedy(model, prompts):
  ids, mask = prompts
  kw = dict(max_new_tokens=8, eos_id=NO_EOS, pad_id=PAD)
  greedy = sampling.sample(model, ids, mask, key=jax.random.key(0), temperature=0.0, **kw)
  for seed in (1, 2):
    nucleus = sampling.sample(model, ids, mask, key=jax.random.key(seed), temperature=1.5,
                              top_p=1e-6, **kw)
    np.testing.assert_array_equal(nucleus[0], greedy[0])
    # logps are the model's (temperature 1), so they match the greedy run too.
    np.testing.assert_allclose(nucleus[2], greedy[2], atol=1e-6)


def test_top_p_filter_keeps_smallest_nucleus():
  probs = np.array([[0.05, 0.5, 0.15, 0.3]], np.float32)
  logits = jnp.log(jnp.asarray(probs))
  kept = lambda p: np.isfinite(np.asarray(sampling.top_p_filter(logits, p)))[0]
  np.testing.assert_array_equal(kept(0.5), [0, 1, 0, 0])  # 0.5 alone reaches 0.5
  np.testing.assert_array_equal(kept(0.51), [0, 1, 0, 1])
  np.testing.assert_array_equal(kept(0.8), [0, 1, 0, 1])
  np.testing.assert_array_equal(kept(0.81), [0, 1, 1, 1])
  np.testing.assert_array_equal(kept(1.0), [1, 1, 1, 1])
  out = np.asarray(sampling.top_p_filter(logits, 0.8))[0]
  np.testing.assert_allclose(out[[1, 3]], np.asarray(logits)[0, [1, 3]])


def test_sampling_distribution_matches_tempered_nucleus(model):
  """Empirical first-token frequencies over many rows match softmax(z/τ) after top-p."""
  n = 4000
  ids, mask = left_padded_prompts([4], width=4, vocab=96, seed=9)
  logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray(ids)))[0, -1]
  temperature, top_p = 1.5, 0.6
  z = logits / temperature
  target = np.exp(z - z.max())
  target /= target.sum()
  order = np.argsort(-target)
  before = np.cumsum(target[order]) - target[order]
  assert np.abs(before - top_p).min() > 1e-3  # no float32-rounding ties at the cut
  target[order[before >= top_p]] = 0.0
  target /= target.sum()
  tokens = sampling.sample(model, np.repeat(ids, n, 0), np.repeat(mask, n, 0),
                           key=jax.random.key(11), max_new_tokens=1,
                           temperature=temperature, top_p=top_p, eos_id=NO_EOS,
                           pad_id=PAD)[0]
  freq = np.bincount(np.asarray(tokens)[:, 0], minlength=96) / n
  assert (freq[target == 0] == 0).all()
  sigma = np.sqrt(target * (1 - target) / n)
  assert (np.abs(freq - target) < 5 * sigma + 1e-3).all()
  assert 4 < (target > 0).sum() < 90  # a non-trivial nucleus


# ----------------------------------------------------------------------------
# API.


def test_graphdef_state_input_and_single_compile(model, prompts):
  ids, mask = prompts
  kw = dict(max_new_tokens=5, eos_id=NO_EOS, pad_id=PAD)
  ref = sampling.sample(model, ids, mask, key=jax.random.key(0), **kw)
  size = sampling._sample_jit._cache_size()
  graphdef, state = nnx.split(model)
  split = sampling.sample((graphdef, state), ids, mask, key=jax.random.key(0), **kw)
  jax.tree.map(np.testing.assert_array_equal, split, ref)
  # New key, temperature and top_p: no recompilation.
  sampling.sample(model, ids, mask, key=jax.random.key(5), temperature=0.3, top_p=0.5,
                  **kw)
  sampling.sample(model, ids, mask, key=jax.random.key(6), temperature=0.0, **kw)
  assert sampling._sample_jit._cache_size() == size


def test_input_validation(model, prompts):
  ids, mask = prompts
  kw = dict(key=jax.random.key(0), eos_id=NO_EOS, pad_id=PAD)
  bad_mask = mask.copy()
  bad_mask[2] = 0
  with pytest.raises(ValueError, match='no real token'):
    sampling.sample(model, ids, bad_mask, max_new_tokens=2, **kw)
  with pytest.raises(ValueError, match='top_p'):
    sampling.sample(model, ids, mask, max_new_tokens=2, top_p=0.0, **kw)
  with pytest.raises(ValueError, match='temperature'):
    sampling.sample(model, ids, mask, max_new_tokens=2, temperature=-1.0, **kw)
  with pytest.raises(ValueError, match='max_new_tokens'):
    sampling.sample(model, ids, mask, max_new_tokens=0, **kw)
  with pytest.raises(ValueError, match=r'\[B, P\]'):
    sampling.sample(model, ids[0], mask[0], max_new_tokens=2, **kw)


def test_encode_prompts_left_pads_and_groups():
  tok = ByteTokenizer(260)
  ids, mask = sampling.encode_prompts(tok, ['ab', 'xyz1'], num_samples=3, pad_multiple=8)
  assert ids.shape == mask.shape == (6, 8)
  np.testing.assert_array_equal(ids[0], [256] * 5 + [257, 97, 98])
  np.testing.assert_array_equal(mask[0], [0] * 5 + [1] * 3)
  np.testing.assert_array_equal(ids[:3], np.repeat(ids[:1], 3, 0))
  np.testing.assert_array_equal(ids[3], [256] * 3 + [257] + list(b'xyz1'))
  # A fixed prompt_length keeps bos and the end of long prompts.
  ids, mask = sampling.encode_prompts(tok, ['abcdef'], prompt_length=4)
  np.testing.assert_array_equal(ids[0], [257] + list(b'def'))
  np.testing.assert_array_equal(mask[0], 1)


def test_sample_texts_groups_and_decodes():
  tok = ByteTokenizer(260)
  model = random_model(tiny_config(vocab_size=260), seed=4)
  prompts = ['hi', 'hello there', 'x']
  kw = dict(max_new_tokens=6, key=jax.random.key(0))
  greedy = sampling.sample_texts(model, tok, prompts, num_samples=2, temperature=0.0, **kw)
  assert [len(g) for g in greedy] == [2, 2, 2]
  # Same as sampling the grouped, left-padded batch directly (same shape: no recompile).
  ids, mask = sampling.encode_prompts(tok, prompts, num_samples=2)
  tokens, cmask, _ = sampling.sample(model, ids, mask, temperature=0.0, eos_id=tok.EOS,
                                     pad_id=tok.PAD, **kw)
  texts = sampling.decode_completions(tok, tokens, cmask)
  assert greedy == [texts[0:2], texts[2:4], texts[4:6]]
  assert len(set(texts[::2])) > 1  # different prompts, different completions
  sampled = sampling.sample_texts(model, tok, prompts, num_samples=2, temperature=1.0, **kw)
  assert [len(t) for t in sampled] == [2, 2, 2]
  assert all(isinstance(s, str) for t in sampled for s in t)
  assert sampled != greedy
  assert sampling.sample_texts(model, tok, [], num_samples=2, **kw) == []


def test_decode_completions_cuts_at_eos():
  tok = ByteTokenizer(260)
  tokens = np.array([[104, 105, 258, 65], [104, 259, 105, 256]])
  cmask = np.array([[1, 1, 1, 0], [1, 1, 1, 0]])
  assert sampling.decode_completions(tok, tokens, cmask) == ['hi', 'hi']
  assert sampling.decode_completions(tok, tokens, cmask, eos_ids=[105]) == ['h', 'h']


# ----------------------------------------------------------------------------
# Against Hugging Face transformers' `generate`.


def test_greedy_equals_transformers_generate(tmp_path):
  """Greedy tokens equal `generate(do_sample=False)`'s, token for token, on the same random
  weights (exported with models.to_hf), left-padded prompts of different lengths."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from models import to_hf

  model = random_model(tiny_config(), seed=3)
  to_hf(model, str(tmp_path))
  hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32)
  ids, mask = left_padded_prompts([9, 2, 5, 1], width=9, vocab=96, seed=4)
  m = 16
  tokens, cmask, _ = sampling.sample(model, ids, mask, key=jax.random.key(0), max_new_tokens=m,
                                     temperature=0.0, eos_id=NO_EOS, pad_id=PAD)
  assert np.asarray(cmask).all()
  with torch.inference_mode():
    out = hf.eval().generate(torch.from_numpy(ids).long(),
                             attention_mask=torch.from_numpy(mask).long(), do_sample=False,
                             max_new_tokens=m, min_new_tokens=m, use_cache=True,
                             pad_token_id=PAD)
  expected = out[:, ids.shape[1]:].numpy()
  assert len(set(expected[:, 0].tolist())) > 1  # the rows do differ
  np.testing.assert_array_equal(np.asarray(tokens), expected)
