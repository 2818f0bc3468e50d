"""GGUF import: ``python -m lnpo.models.convert --gguf FILE --out DIR``.

Turns a GGUF checkpoint (llama.cpp's format, e.g. a Q4_1 file) of a family lnpo
supports into a Hugging Face directory that :func:`lnpo.models.from_pretrained`,
the trainer and ``transformers`` load: ``config.json``, ``generation_config.json``,
``model.safetensors`` (float32) and the tokenizer (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``). Needs the ``gguf`` extra
(``pip install -e ".[gguf]"``: gguf, accelerate, torch).

transformers' GGUF loader does the work: it dequantizes every tensor to float32
(``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``), maps the GGUF
metadata to a config (tied embeddings when the file has no ``output.weight``) and
rebuilds the tokenizer with its chat template and special tokens
(``AutoTokenizer.from_pretrained(dir, gguf_file=...)``). This module adds only
what that does not:

1. before loading, one-line errors naming the file: not a GGUF file, an
   architecture outside :data:`SUPPORTED_ARCHITECTURES`, a tensor whose
   quantization type the installed ``gguf`` cannot dequantize, a missing package;
2. the model is written as a plain float32 checkpoint (the loader marks it as
   "quantized with gguf", which ``save_pretrained`` refuses and would record in
   ``config.json``);
3. end-of-turn: when the file names an ``eot_token_id`` other than its EOS (Llama 3's
   ``<|eot_id|>``), both ids become ``eos_token_id`` in ``config.json`` and
   ``generation_config.json``, so generation stops at either;
4. ``tokenizer_config.json``: ``model_max_length`` = the file's context length
   (the loader leaves it unbounded) and ``tokenizer_class`` = ``PreTrainedTokenizerFast``
   (the class name transformers 4 and 5 both load);
5. checks of the written directory, each a :class:`lnpo.errors.ModelError` naming
   the file: ``config.json`` maps onto :class:`lnpo.models.ModelConfig`, every tensor
   lnpo expects is present with its shape (``lm_head.weight`` absent exactly when
   the embeddings are tied), the chat template equals the file's
   ``tokenizer.chat_template``, and the config's and the tokenizer's BOS/EOS ids
   equal the file's.

Conversion writes into a temporary directory beside ``--out`` and renames it at
the end, so a failed conversion leaves nothing behind; ``--out`` must not exist
or be empty.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from lnpo.errors import ConfigError, ModelError, UserError

# GGUF ``general.architecture`` values both transformers' GGUF loader and lnpo's decoder implement
# (llama.cpp also writes Mistral models as "llama"; the loader tells them apart by name).
SUPPORTED_ARCHITECTURES = ("gemma2", "llama", "mistral", "phi3", "qwen2", "qwen3")
EXTRA_PACKAGES = ("gguf", "accelerate", "torch")
_INSTALL_HINT = 'pip install -e ".[gguf]"'


def _missing_packages() -> list[str]:
    import importlib.util

    return [name for name in EXTRA_PACKAGES if importlib.util.find_spec(name) is None]


def readable_quantization_types() -> tuple[str, ...]:
    """Names of the GGML tensor types the installed ``gguf`` package can dequantize (transformers' loader
    dequantizes the architectures of :data:`SUPPORTED_ARCHITECTURES` with ``gguf.quants.dequantize``)."""
    from gguf import GGMLQuantizationType, quants

    # dequantize handles F32 and F16 itself and every type with a registered implementation
    # (its _type_traits table; gguf has no public list).
    traits = getattr(quants, "_type_traits", {})
    names = ["F32", "F16", *(t.name for t in GGMLQuantizationType if t in traits)]
    return tuple(dict.fromkeys(names))


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def inspect_gguf(path: str) -> dict:
    """The header facts conversion needs, read without loading any tensor:
    ``architecture``, ``tensor_types`` ({type name: count}), ``chat_template``, ``bos_token_id``,
    ``eos_token_id``, ``eot_token_id``, ``add_bos_token``, ``context_length``.

    Raises ModelError (the file is missing, not GGUF, of an unsupported architecture or holds a
    tensor type that cannot be dequantized) or ConfigError (a package of the gguf extra is missing).
    """
    if not os.path.isfile(path):
        raise ModelError(f"{path}: no such GGUF file")
    missing = _missing_packages()
    if missing:
        raise ConfigError(f"{path}: converting a GGUF file needs the packages {', '.join(EXTRA_PACKAGES)} "
                          f"(missing: {', '.join(missing)}); install them with {_INSTALL_HINT}")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except Exception as e:  # gguf raises ValueError on a bad magic number, struct/IndexError on a short file
        raise ModelError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelError(f"{path}: GGUF architecture {arch!r} is not supported; supported: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    readable = readable_quantization_types()
    types: dict[str, int] = {}
    for tensor in reader.tensors:
        name = tensor.tensor_type.name
        if name not in readable:
            raise ModelError(f"{path}: tensor {tensor.name!r} has quantization type {name}, which gguf cannot "
                             f"dequantize; readable types: {', '.join(readable)}")
        types[name] = types.get(name, 0) + 1
    return {
        "architecture": arch,
        "tensor_types": types,
        "chat_template": _field(reader, "tokenizer.chat_template"),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "eot_token_id": _field(reader, "tokenizer.ggml.eot_token_id"),
        "add_bos_token": _field(reader, "tokenizer.ggml.add_bos_token"),
        "context_length": _field(reader, f"{arch}.context_length"),
    }


def _end_ids(info: dict) -> int | list[int] | None:
    """The EOS id, or [EOS, end-of-turn] when the file names a different end-of-turn token."""
    eos, eot = info["eos_token_id"], info["eot_token_id"]
    if eot is None or eot == eos or eos is None:
        return eos if eos is not None else eot
    return [int(eos), int(eot)]


def _load(path: str):
    """(model, tokenizer) from transformers' GGUF loader, every weight dequantized to float32."""
    import torch
    import transformers

    folder, name = os.path.split(os.path.abspath(path))
    kwargs = {}
    if hasattr(transformers, "GgufConfig"):  # transformers >= 5.2x can keep GGUF blocks; ask for dense weights
        kwargs["quantization_config"] = transformers.GgufConfig(gguf_file=name, dequantize=True)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                                  **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, NotImplementedError) as e:  # the loader's own refusals
        raise ModelError(f"{path}: transformers' GGUF loader failed: {e}".replace("\n", " ")) from None
    # The weights are dense now: drop the loader's "quantized" marks so save_pretrained writes a plain checkpoint.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _rewrite_json(path: str, update) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    update(data)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def _patch(out: str, info: dict) -> None:
    """Steps 3 and 4 of the module docstring, on the written files."""
    end = _end_ids(info)
    if isinstance(end, list):
        for name in ("config.json", "generation_config.json"):
            _rewrite_json(os.path.join(out, name), lambda d: d.__setitem__("eos_token_id", end))

    def tokenizer_config(d):
        if info["context_length"]:
            d["model_max_length"] = int(info["context_length"])
        if d.get("tokenizer_class") == "TokenizersBackend":  # transformers 5's name for PreTrainedTokenizerFast
            d["tokenizer_class"] = "PreTrainedTokenizerFast"

    _rewrite_json(os.path.join(out, "tokenizer_config.json"), tokenizer_config)


def check_converted(out: str, info: dict, source: str) -> None:
    """Step 5 of the module docstring: the written directory is what lnpo and transformers need."""
    import transformers

    from lnpo.models.config import ModelConfig
    from lnpo.models.hf import _Checkpoint, hf_layout
    from lnpo.models.hf_config import read_config

    hf = read_config(out)
    try:
        config = ModelConfig.from_hf(hf)
        _Checkpoint(out).check(hf_layout(config), config)
    except (ValueError, FileNotFoundError) as e:
        raise ModelError(f"{source}: converted, but lnpo cannot load the result: {e}") from None
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    if info["chat_template"] and tokenizer.chat_template != info["chat_template"]:
        raise ModelError(f"{source}: the converted tokenizer's chat template differs from the file's "
                         "tokenizer.chat_template")
    expected = {"bos_token_id": info["bos_token_id"], "eos_token_id": _end_ids(info)}
    for key, want in expected.items():
        if want is not None and hf.get(key) != want:
            raise ModelError(f"{source}: converted config.json has {key} {hf.get(key)!r}; the file says {want!r}")
    for key in ("bos_token_id", "eos_token_id"):
        want = info[key]
        if want is not None and getattr(tokenizer, key) != want:
            raise ModelError(f"{source}: converted tokenizer has {key} {getattr(tokenizer, key)!r}; "
                             f"the file says {want!r}")


def convert_gguf(gguf_path: str, out: str) -> dict:
    """Convert ``gguf_path`` into the Hugging Face directory ``out``; returns :func:`inspect_gguf`'s
    facts plus ``model_type``, ``num_parameters``, ``tie_word_embeddings`` and ``out``.

    Raises ModelError / ConfigError with one line naming the file (module docstring).
    """
    info = inspect_gguf(gguf_path)
    out = os.path.abspath(out)
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ModelError(f"{out}: the output directory exists and is not empty")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    model, tokenizer = _load(gguf_path)
    tmp = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _patch(tmp, info)
        check_converted(tmp, info, gguf_path)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model directory is readable like any other
        if os.path.isdir(out):
            os.rmdir(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**info, "model_type": model.config.model_type, "num_parameters": int(model.num_parameters()),
            "tie_word_embeddings": bool(model.config.tie_word_embeddings), "out": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lnpo.models.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("--gguf", required=True, help="the .gguf file")
    parser.add_argument("--out", required=True, help="the Hugging Face directory to write (new or empty)")
    args = parser.parse_args(argv)
    try:
        summary = convert_gguf(args.gguf, args.out)
    except UserError as e:
        print(f"lnpo: error: {e}", file=sys.stderr)
        return 2
    types = ", ".join(f"{n} {k}" for k, n in sorted(summary["tensor_types"].items()))
    print(f"lnpo: converted {args.gguf} ({summary['architecture']}, tensors {types}) -> {summary['out']}: "
          f"{summary['model_type']}, {summary['num_parameters']:,} parameters, float32, "
          f"tied embeddings {summary['tie_word_embeddings']}, "
          f"chat template {'yes' if summary['chat_template'] else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
