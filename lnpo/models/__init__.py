"""lnpo.models: one Flax NNX decoder for Llama, Mistral, Qwen2/3, Gemma/Gemma 2 and Phi-3.

See docs/models.md for the API, the parameter layout and the HF interop.
"""

from lnpo.models.config import ModelConfig, RopeScaling
from lnpo.models.decoder import Decoder, KVCache, init_sharded, logical_axes, param_shardings, sequence_scores
from lnpo.models.hf import from_pretrained, save_pretrained
from lnpo.models.hf_config import SUPPORTED_MODEL_TYPES

__all__ = [
    "ModelConfig",
    "RopeScaling",
    "SUPPORTED_MODEL_TYPES",
    "Decoder",
    "KVCache",
    "init_sharded",
    "logical_axes",
    "param_shardings",
    "sequence_scores",
    "from_pretrained",
    "save_pretrained",
]

