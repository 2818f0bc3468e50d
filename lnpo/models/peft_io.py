"""PEFT interop of LoRA adapters: ``save_adapter`` / ``load_adapter`` and ``save_merged``.

An adapter directory is what ``peft.PeftModel.from_pretrained(base, DIR)`` reads:
``adapter_config.json`` (``peft_type`` LORA, ``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``,
``use_rslora``, ...) and ``adapter_model.safetensors`` with, per layer i and target ``t``,
``base_model.model.model.layers.{i}.{self_attn|mlp}.{t}.lora_A.weight`` (torch ``[r, in]``) and
``...lora_B.weight`` (``[out, r]``). Ours are ``A [L, *in, r]``, ``B [L, r, *out]``; the flattened ``in`` /
``out`` dims are HF's row-major feature order (the same reshape :func:`lnpo.models.hf.hf_layout` uses), so
``A_torch = A[i].reshape(in, r).T`` and ``B_torch = B[i].reshape(r, out).T``.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from lnpo.errors import ModelError
from lnpo.json_files import read_json
from lnpo.models import lora
from lnpo.models.safetensors_io import SafetensorsFile, write_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model.model.layers.{i}."


def _module(name: str) -> str:
    return ("self_attn." if name in lora.ATTENTION_TARGETS else "mlp.") + name


def tensor_names(name: str, layer: int) -> tuple[str, str]:
    """The PEFT keys of layer ``layer``'s ``name`` adapter: ``(lora_A, lora_B)``."""
    base = PREFIX.format(i=layer) + _module(name)
    return base + ".lora_A.weight", base + ".lora_B.weight"


def adapter_config(spec: lora.LoraSpec, base_model_name_or_path: str | None) -> dict:
    """The ``adapter_config.json`` of ``spec`` (PEFT's LoraConfig fields)."""
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "use_rslora": spec.rslora,
        "target_modules": list(spec.targets), "bias": "none", "fan_in_fan_out": False,
        "init_lora_weights": True, "modules_to_save": None, "inference_mode": True, "use_dora": False,
    }


def _host(x) -> np.ndarray:
    from lnpo.models.hf import _to_host

    return _to_host(x).astype(np.float32)


def save_adapter(model, spec: lora.LoraSpec, path: str, *, base_model_name_or_path: str | None = None) -> None:
    """Write ``model``'s adapters as a PEFT adapter directory (process 0 writes)."""
    tensors = []
    for name, proj in lora.projections(model).items():
        if proj.lora_a is None:
            continue
        a, b = _host(proj.lora_a[...]), _host(proj.lora_b[...])
        r = spec.rank
        for i in range(a.shape[0]):
            name_a, name_b = tensor_names(name, i)
            tensors.append((name_a, np.ascontiguousarray(a[i].reshape(-1, r).T)))
            tensors.append((name_b, np.ascontiguousarray(b[i].reshape(r, -1).T)))
    if jax.process_index() != 0:
        return
    os.makedirs(path, exist_ok=True)
    write_file(os.path.join(path, WEIGHTS_FILE), tensors)
    with open(os.path.join(path, CONFIG_FILE), "w", encoding="utf-8") as f:
        json.dump(adapter_config(spec, base_model_name_or_path), f, indent=2)


def read_spec(path: str) -> lora.LoraSpec:
    """The :class:`~lnpo.models.lora.LoraSpec` of a PEFT adapter directory (ModelError naming the file for what
    lnpo cannot load: another PEFT type, biases, DoRA, fan_in_fan_out, unknown targets)."""
    cfg_path = os.path.join(path, CONFIG_FILE)
    cfg = read_json(cfg_path, missing=ModelError, invalid=ModelError,
                    needed_by=f"a PEFT adapter directory needs {CONFIG_FILE}")
    if cfg.get("peft_type") != "LORA":
        raise ModelError(f"{cfg_path}: peft_type {cfg.get('peft_type')!r}; lnpo loads LORA adapters only")
    for key, ok in (("bias", "none"), ("use_dora", False), ("fan_in_fan_out", False)):
        if cfg.get(key, ok) not in (ok, None):
            raise ModelError(f"{cfg_path}: {key}={cfg[key]!r} is not supported (lnpo needs {ok!r})")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform"):
        if cfg.get(key):
            raise ModelError(f"{cfg_path}: {key} is not supported (one rank and alpha for every target)")
    targets = cfg.get("target_modules")
    try:
        names = lora.parse_targets(targets if isinstance(targets, (str, list)) else "")
    except ValueError:
        raise ModelError(f"{cfg_path}: target_modules {targets!r}: lnpo adapts {', '.join(lora.TARGETS)} "
                         f"or {lora.ALL_LINEAR!r}") from None
    return lora.LoraSpec(rank=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), dropout=float(cfg.get("lora_dropout", 0)),
                         targets=names, rslora=bool(cfg.get("use_rslora", False)))


def load_adapter(model, path: str) -> None:
    """Overwrite ``model``'s adapters (already added with the same rank and targets) with those of ``path``,
    each in its current sharding. ModelError naming the file for a mismatch or a missing tensor."""
    spec = read_spec(path)
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise ModelError(f"{weights}: missing (only safetensors adapters are read)")
    f = SafetensorsFile(weights)
    for name, proj in lora.projections(model).items():
        has = proj.lora_a is not None
        if has != (name in spec.targets):
            raise ModelError(f"{path}/{CONFIG_FILE}: target_modules {list(spec.targets)} differ from "
                             f"config.model.lora.targets ({name} {'is' if has else 'is not'} adapted)")
        if not has:
            continue
        a_shape, b_shape = proj.lora_a.shape, proj.lora_b.shape
        if a_shape[-1] != spec.rank:
            raise ModelError(f"{path}/{CONFIG_FILE}: r={spec.rank} differs from config.model.lora.rank={a_shape[-1]}")
        a = np.zeros(a_shape, np.float32)
        b = np.zeros(b_shape, np.float32)
        for i in range(a_shape[0]):
            for key, out, shape in zip(tensor_names(name, i), (a, b), (a_shape[1:], b_shape[1:])):
                if key not in f.entries:
                    raise ModelError(f"{weights}: missing tensor {key!r}")
                t = np.asarray(f.array(key), np.float32)
                want = (spec.rank, int(np.prod(shape[:-1]))) if out is a else (int(np.prod(shape[1:])), spec.rank)
                if t.shape != want:
                    raise ModelError(f"{weights}: tensor {key!r} has shape {t.shape}; the model implies {want}")
                out[i] = t.T.reshape(shape)
        proj.lora_a[...] = jax.device_put(a, proj.lora_a[...].sharding)
        proj.lora_b[...] = jax.device_put(b, proj.lora_b[...].sharding)


def merged_model(model):
    """A plain decoder (no adapters, float kernels) whose projections are ``W + scale * A B``: what
    ``save_pretrained`` writes as the merged export."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    out = nnx.merge(graphdef, state)  # a new module over the same arrays
    for proj, src in zip(lora.projections(out).values(), lora.projections(model).values()):
        dtype = src.kernel_scale[...].dtype if src.kernel_scale is not None else src.kernel[...].dtype
        proj.kernel = nnx.Param(lora.merged_kernel(src).astype(dtype), eager_sharding=False,
                                out_sharding=src.kernel.get_metadata().get("out_sharding"))
        proj.kernel_scale = proj.lora_a = proj.lora_b = None
    return out
