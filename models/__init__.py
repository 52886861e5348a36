"""Decoder-only language models in Flax NNX (Llama, Qwen2/3, Mistral, Gemma 2/3, Phi-3, OLMo 2).

  ModelConfig            architecture hyper-parameters (+ HF config.json I/O)
  Transformer            the NNX model: logits, hidden_states, unembed
  from_hf / to_hf        safetensors checkpoint import / export
  DEFAULT_RULES, ...     logical-axis sharding helpers
"""

from models.config import ModelConfig
from models.config import num_non_embedding_params
from models.config import num_params
from models.hf import from_hf
from models.hf import load_hf_config
from models.hf import to_hf
from models.llama import Transformer
from models.partitioning import DEFAULT_RULES
from models.partitioning import logical_axes
from models.partitioning import param_partition_specs
from models.partitioning import param_shardings
from models.partitioning import shard_model

__all__ = [
    'DEFAULT_RULES',
    'ModelConfig',
    'Transformer',
    'from_hf',
    'load_hf_config',
    'logical_axes',
    'num_non_embedding_params',
    'num_params',
    'param_partition_specs',
    'param_shardings',
    'shard_model',
    'to_hf',
]
