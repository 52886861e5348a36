"""Sharding rules: specs, and a sharded forward on 8 virtual CPU devices.

XLA_FLAGS must be set before jax is imported, and other tests in the same
pytest process import jax first, so the multi-device check runs in a
subprocess.
"""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = textwrap.dedent('''
    import os
    os.environ['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=8 '
                               + os.environ.get('XLA_FLAGS', ''))
    os.environ['JAX_PLATFORMS'] = 'cpu'
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from models import (ModelConfig, Transformer,
                        param_partition_specs, param_shardings, shard_model)

    assert jax.device_count() == 8, jax.devices()
    # Auto axes (GSPMD propagation); jax.make_mesh defaults to Explicit.
    mesh = jax.make_mesh((2, 2, 2), ('data', 'fsdp', 'tensor'),
                         axis_types=(jax.sharding.AxisType.Auto,) * 3)
    # vocab 65 and one kv head do not divide the tensor axis -> dropped.
    cfg = ModelConfig(vocab_size=65, hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=1,
                      qkv_bias=True)
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.RandomState(0)
    params = jax.tree.map(
        lambda s: jnp.asarray(0.1 * rng.standard_normal(s.shape)
                              + (s.ndim == 1), jnp.float32),
        nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, params)
    model = nnx.merge(graphdef, state)

    specs = param_partition_specs(model, mesh)
    attn = specs['layers'][0]['attn']
    assert specs['embedding'] == P(None, 'fsdp'), specs['embedding']
    assert specs['lm_head'] == P('fsdp', None), specs['lm_head']
    assert attn['q_proj'] == P('fsdp', 'tensor', None), attn['q_proj']
    assert attn['k_proj'] == P('fsdp', None, None), attn['k_proj']
    assert attn['o_proj'] == P('tensor', None, 'fsdp'), attn['o_proj']
    assert specs['layers'][1]['mlp']['down_proj'] == P('tensor', 'fsdp')
    assert specs['final_norm']['scale'] == P(None)
    # A mesh axis is never used twice in one spec.
    greedy = (('embed', 'tensor'), ('mlp', 'tensor'), ('mlp', 'fsdp'))
    up = param_partition_specs(model, mesh, greedy)['layers'][0]['mlp']
    assert up['up_proj'] == P('tensor', 'fsdp'), up['up_proj']
    # Multi-axis rules; abstract state works too.
    multi = param_partition_specs(state, mesh, (('embed', ('data', 'fsdp')),))
    assert multi['embedding'] == P(None, ('data', 'fsdp')), multi['embedding']

    ids = jnp.asarray(rng.randint(0, 65, (4, 8)), jnp.int32)
    mask = jnp.ones((4, 8), jnp.int32).at[1, :3].set(0)
    fwd = nnx.jit(lambda m, x, a: m(x, attention_mask=a))
    ref = np.asarray(fwd(model, ids, mask))

    # Explicit device_put of the pure dict with NamedShardings...
    shardings = param_shardings(model, mesh)
    sharded = jax.device_put(params, shardings)
    assert sharded['layers'][0]['mlp']['up_proj'].sharding.spec == P(
        'fsdp', 'tensor')
    s2 = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(s2, sharded)
    model2 = nnx.merge(graphdef, s2)
    data = jax.sharding.NamedSharding(mesh, P(('data', 'fsdp')))
    out = fwd(model2, jax.device_put(ids, data), jax.device_put(mask, data))
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5, rtol=1e-5)

    # ...and the in-place helper.
    shard_model(model, mesh)
    assert model.lm_head[...].sharding.spec == P('fsdp', None)
    np.testing.assert_allclose(np.asarray(fwd(model, ids, mask)), ref,
                               atol=1e-5, rtol=1e-5)
    print('OK')
''')


def test_sharded_forward_matches_unsharded_on_2x2x2_mesh():
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep
             + os.environ.get('PYTHONPATH', ''))
  proc = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and 'OK' in proc.stdout, (
      proc.stdout[-3000:] + proc.stderr[-3000:])


def test_default_rules_cover_model_axes():
  from models import DEFAULT_RULES
  names = [name for name, _ in DEFAULT_RULES]
  assert set(names) == {'vocab', 'embed', 'mlp', 'heads', 'kv_heads',
                        'head_dim', 'norm'}
