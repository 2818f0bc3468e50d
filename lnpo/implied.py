"""What a run config implies, computed in one place for the trainer, the config check and the planner.

Plain functions of the config (and, for the model, of the tokenizer); nothing here reads data or
builds a model:

- :func:`row_length`: the row length ``T`` of a batch;
- :func:`reference_mode`: ``"none"`` (the objective reads no reference), ``"cache"`` or ``"in_step"``;
- :func:`data_parallel`: how many ways a batch is split (mesh ``data x fsdp``);
- :func:`model_runtime`: how the model runs (dtypes, remat, attention), whatever its weights;
- :func:`tiny_model_config`: the embedded tiny model, the one definition of its architecture
  (``config.model.tiny``);
- :func:`model_config`: the ``ModelConfig`` a run trains (``config.model.path``'s ``config.json`` or the
  tiny model), without reading weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import ml_collections

from lnpo.train import stages

#: Upper bound of the embedded task's tokenizer vocabulary (lnpo.data.embedded): the planner's tiny-model vocab.
EMBEDDED_VOCAB = 4096


def row_length(config: ml_collections.ConfigDict) -> int:
    """Row length T: ``data.seq_len``, else ``data.max_len`` (padded, packed) or ``2 * data.max_len``
    (shared_prompt: the prompt and both responses in one row)."""
    if config.data.seq_len:
        return config.data.seq_len
    return 2 * config.data.max_len if config.data.layout == "shared_prompt" else config.data.max_len


def reference_mode(config: ml_collections.ConfigDict) -> str:
    """``"none"`` when the stage's objective reads no reference model (SFT, reward model, reference-free
    objectives), else ``config.reference.mode`` (``"cache"`` or ``"in_step"``)."""
    if not stages.get(config.stage).objective:
        return "none"
    from lnpo import losses

    return config.reference.mode if losses.requires_reference(config.loss.name) else "none"


def data_parallel(mesh_axes: Mapping[str, int]) -> int:
    """Ways a batch is split: the product of the ``data`` and ``fsdp`` axis sizes (``Mesh.shape`` or a dict)."""
    return int(mesh_axes["data"]) * int(mesh_axes["fsdp"])


def model_runtime(config: ml_collections.ConfigDict) -> dict:
    """How the run builds its model (``lnpo.models.config.RUNTIME_FIELDS`` from ``config.model``:
    dtypes, remat, attention), the same for a fresh, a loaded and a planned model."""
    from lnpo.models.config import RUNTIME_FIELDS

    return {name: config.model[name] for name in RUNTIME_FIELDS}


def tiny_model_config(config: ml_collections.ConfigDict, *, vocab_size: int, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None, num_labels: int = 0):
    """The embedded tiny model: a Llama-style decoder with ``config.model.tiny``'s sizes, tied embeddings,
    positions up to ``max(2 * data.max_len, 256)``, and the run's :func:`model_runtime`."""
    from lnpo.models import ModelConfig

    t = config.model.tiny
    return ModelConfig(
        vocab_size=vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
        num_layers=t.num_layers, num_heads=t.num_heads, num_kv_heads=t.num_kv_heads, tie_embeddings=True,
        max_position_embeddings=max(config.data.max_len * 2, 256), model_type="llama",
        bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id, num_labels=num_labels,
        **model_runtime(config))


def model_config(config: ml_collections.ConfigDict):
    """The ``ModelConfig`` the trainer builds for ``config`` (no weights read): ``config.model.path``'s
    ``config.json``, else the tiny model at the embedded vocabulary's upper bound :data:`EMBEDDED_VOCAB`;
    a reward model (``stage == "rm"``) gets its one-label untied score head."""
    from lnpo.models import ModelConfig

    if config.model.path:
        with open(os.path.join(config.model.path, "config.json")) as f:
            cfg = ModelConfig.from_hf(json.load(f), **model_runtime(config))
    else:
        cfg = tiny_model_config(config, vocab_size=EMBEDDED_VOCAB)
    if stages.get(config.stage).num_labels and cfg.num_labels == 0:
        cfg = cfg.replace(num_labels=stages.get(config.stage).num_labels, tie_embeddings=False)
    return cfg
