"""Checks of a model and its tokenizer before any data is loaded or anything compiled.

- :func:`model_config` reads ``<dir>/config.json`` as a :class:`ModelConfig`; an unsupported
  ``model_type`` (or any field lnpo cannot map) is a :class:`~lnpo.errors.ModelError` naming
  the file and what is supported.
- :func:`load_tokenizer` loads a tokenizer directory; one without tokenizer files is a
  ``ModelError`` naming the directory, the files looked for and ``data.tokenizer``.
- :func:`check_token_ids`: every token id of the tokenized data is below the model's
  ``vocab_size`` (a ``ModelError`` naming both sizes otherwise), checked before compiling.
- :func:`own_dtype`: the dtype a checkpoint's ``config.json`` says its weights are stored in.
"""

from __future__ import annotations

import glob
import os

from lnpo.errors import ModelError
from lnpo.models.config import DTYPES

# Files one of which a tokenizer directory holds (fast tokenizer, sentencepiece, BPE / WordPiece vocab, tiktoken).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json",
                   "vocab.txt", "tiktoken.model", "*.tiktoken")


def model_config(path: str, **overrides):
    """``ModelConfig`` of the Hugging Face directory ``path`` (``overrides``: runtime fields such as dtypes)."""
    from lnpo.models.config import ModelConfig
    from lnpo.models.hf import read_config

    config_json = os.path.join(path, "config.json")
    hf = read_config(path)  # FileNotFoundError / ValueError naming the file
    try:
        return ModelConfig.from_hf(hf, **overrides)
    except ValueError as e:
        message = str(e)
        if message.startswith("config.json:"):
            message = message[len("config.json:"):].lstrip()
        raise ModelError(f"{config_json}: {message}") from None


def _tokenizer_files(path: str) -> list[str]:
    return sorted({os.path.basename(f) for pattern in TOKENIZER_FILES for f in glob.glob(os.path.join(path, pattern))})


def load_tokenizer(path: str, *, field: str | None = "data.tokenizer"):
    """The tokenizer of directory ``path`` (``transformers.AutoTokenizer``, never remote code).

    Raises :class:`~lnpo.errors.ModelError` naming ``path``: when it is not a directory, holds
    none of :data:`TOKENIZER_FILES`, or ``transformers`` cannot load what it holds.
    """
    from transformers import AutoTokenizer

    hint = (f"set config.{field} to a directory holding the model's tokenizer" if field
            else "a tokenizer directory is needed")
    if not os.path.isdir(path):
        raise ModelError(f"tokenizer directory {path!r} does not exist; {hint}")
    if not _tokenizer_files(path):
        raise ModelError(f"{path}: no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); {hint}")
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError, ImportError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{path}: cannot load the tokenizer ({type(e).__name__}: {first}); {hint}") from None


def _max_token_id(dataset) -> int:
    """The largest id in the ``*_ids`` columns of a tokenized ``datasets.Dataset`` (-1 when none)."""
    import pyarrow.compute as pc

    best = -1
    for name in dataset.column_names:
        if name.endswith("_ids"):
            values = pc.list_flatten(dataset.data.column(name))  # the table under any selection: a superset
            if len(values):
                best = max(best, int(pc.max(values).as_py()))
    return best


def check_token_ids(tokenizer, vocab_size: int, datasets_: list, *, tokenizer_dir: str, model_dir: str) -> None:
    """:class:`~lnpo.errors.ModelError` unless every token id of ``datasets_`` is ``< vocab_size``.

    A tokenizer no larger than the model's vocabulary cannot produce a larger id, so the data
    are scanned only when ``len(tokenizer) > vocab_size``.
    """
    size = len(tokenizer)
    if size <= vocab_size:
        return
    largest = max((_max_token_id(d) for d in datasets_ if d is not None), default=-1)
    if largest >= vocab_size:
        raise ModelError(f"vocabulary mismatch: the tokenizer {tokenizer_dir} has {size} tokens and the data use id "
                         f"{largest}, but the model {model_dir} has vocab_size {vocab_size} (config.json); use the "
                         "model's own tokenizer (config.data.tokenizer)")


def own_dtype(path: str | None) -> str | None:
    """The storage dtype ``<path>/config.json`` declares (``torch_dtype`` or ``dtype``), if one of
    :data:`lnpo.models.config.DTYPES`; ``None`` otherwise (and for ``path=None``)."""
    if not path:
        return None
    from lnpo.models.hf import read_config

    hf = read_config(path)
    for key in ("dtype", "torch_dtype"):
        value = hf.get(key)
        if isinstance(value, str) and value.removeprefix("torch.") in DTYPES:
            return value.removeprefix("torch.")
    return None
