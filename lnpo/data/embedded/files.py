"""Writing the embedded task's files: :func:`materialize` and its manifest.

| file | rows |
| --- | --- |
| ``sft.jsonl`` | ``{"messages": [user, assistant]}`` |
| ``train_prefs.jsonl``, ``eval_prefs.jsonl`` | ``{"prompt": [user], "chosen": [asst], "rejected": [asst]}`` |
| ``ood_prompts.jsonl`` | same format; OOD phrasings; ``chosen`` the correct concise reference |
| ``tokenizer/`` | ``tokenizer.json``, ``tokenizer_config.json`` (with ``chat_template``) |
| ``manifest.json`` | format, version, seed, sizes and the SHA-256 of every file |
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping

from lnpo.data.embedded import tokenizer as task_tokenizer
from lnpo.data.embedded import v1, v2
from lnpo.data.embedded.rows import jsonl_bytes
from lnpo.data.embedded.scorer import check_version
from lnpo.digest import file_sha256

#: The newest task version (the default job and the study's sweep use it).
LATEST_VERSION = 2
#: version -> the module that generates its rows (``sft_rows``, ``pref_rows``, ``ood_rows``).
GENERATORS = {1: v1, 2: v2}

#: Default number of rows per split (override any subset with ``sizes=``).
DEFAULT_SIZES: dict[str, int] = {"sft": 4000, "train_prefs": 2000, "eval_prefs": 200, "ood_prompts": 200}

#: File names written by :func:`materialize` (keys match :data:`DEFAULT_SIZES`).
FILES: dict[str, str] = {
    "sft": "sft.jsonl",
    "train_prefs": "train_prefs.jsonl",
    "eval_prefs": "eval_prefs.jsonl",
    "ood_prompts": "ood_prompts.jsonl",
    "tokenizer": "tokenizer",
    "manifest": "manifest.json",
}


def split_bytes(version: int, seed: int, sizes: Mapping[str, int]) -> dict[str, bytes]:
    """The JSONL bytes of every split of task ``version`` (each split has its own RNG stream)."""
    generator = GENERATORS[version]
    return {
        "sft": jsonl_bytes(generator.sft_rows(seed, sizes["sft"])),
        "train_prefs": jsonl_bytes(generator.pref_rows(seed, "train_prefs", sizes["train_prefs"], heldout=False)),
        "eval_prefs": jsonl_bytes(generator.pref_rows(seed, "eval_prefs", sizes["eval_prefs"], heldout=True)),
        "ood_prompts": jsonl_bytes(generator.ood_rows(seed, sizes["ood_prompts"])),
    }


def _resolve_sizes(sizes: Mapping[str, int] | None) -> dict[str, int]:
    resolved = dict(DEFAULT_SIZES)
    for key, value in (sizes or {}).items():
        if key not in DEFAULT_SIZES:
            raise ValueError(f"unknown split {key!r} in sizes; expected a subset of {sorted(DEFAULT_SIZES)}")
        if int(value) < 0:
            raise ValueError(f"sizes[{key!r}] must be >= 0, got {value}")
        resolved[key] = int(value)
    return resolved


def _paths(directory: str) -> dict[str, str]:
    return {key: os.path.join(directory, name) for key, name in FILES.items()}


def _manifest_matches(directory: str, seed: int, sizes: dict[str, int], version: int) -> bool:
    try:
        with open(os.path.join(directory, FILES["manifest"]), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if (manifest.get("version"), manifest.get("seed"), manifest.get("sizes")) != (version, seed, sizes):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, digest in files.items():
        path = os.path.join(directory, rel)
        if not os.path.isfile(path) or file_sha256(path) != digest:
            return False
    return True


def materialize(directory: str | os.PathLike, *, seed: int = 0, sizes: Mapping[str, int] | None = None,
                version: int = 1) -> dict[str, str]:
    """Write the embedded task ``version`` for ``seed`` into ``directory``; return the paths.

    Files (see the module docstring for how they are generated):

    - ``sft.jsonl``: ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``
    - ``train_prefs.jsonl``, ``eval_prefs.jsonl`` (in-distribution, held-out prompts),
      ``ood_prompts.jsonl`` (OOD; ``chosen`` is the correct concise reference): canonical
      ``{"prompt": [user msg], "chosen": [assistant msg], "rejected": [assistant msg]}``
    - ``tokenizer/``: a Hugging Face tokenizer directory (``tokenizer.json``,
      ``tokenizer_config.json`` with ``chat_template``; bos/eos/pad tokens)
    - ``manifest.json``: version, seed, sizes and the SHA-256 of every file.

    ``sizes`` overrides any of :data:`DEFAULT_SIZES`. The bytes written depend only on
    (``seed``, ``sizes``, ``version``) and the installed ``tokenizers`` /
    ``transformers`` serializers. If ``directory`` already holds a manifest for the
    same version, seed and sizes whose files all match their hashes, nothing is
    rewritten. Files are written to a temporary directory and moved into place, the
    manifest last, so concurrent calls for the same seed are safe.

    Returns a dict with keys ``sft``, ``train_prefs``, ``eval_prefs``,
    ``ood_prompts``, ``tokenizer`` (a directory) and ``manifest``.
    """
    directory = os.fspath(directory)
    seed = int(seed)
    sizes = _resolve_sizes(sizes)
    version = check_version(version)
    paths = _paths(directory)
    if _manifest_matches(directory, seed, sizes, version):
        return paths

    os.makedirs(directory, exist_ok=True)
    contents = split_bytes(version, seed, sizes)
    tokenizer = task_tokenizer.build_tokenizer(task_tokenizer.corpus_texts(version),
                                               max_length=task_tokenizer.MAX_LENGTHS[version])

    tmp = tempfile.mkdtemp(prefix=".materialize-", dir=directory)
    try:
        for key, data in contents.items():
            with open(os.path.join(tmp, FILES[key]), "wb") as f:
                f.write(data)
        tok_tmp = os.path.join(tmp, FILES["tokenizer"])
        task_tokenizer.save_tokenizer(tokenizer, tok_tmp)

        files = {FILES[key]: file_sha256(os.path.join(tmp, FILES[key])) for key in contents}
        for name in sorted(os.listdir(tok_tmp)):
            rel = f"{FILES['tokenizer']}/{name}"
            files[rel] = file_sha256(os.path.join(tok_tmp, name))
        manifest = {"format": "lnpo-embedded", "version": version, "seed": seed, "sizes": sizes, "files": files}

        for key in contents:
            os.replace(os.path.join(tmp, FILES[key]), paths[key])
        if os.path.isdir(paths["tokenizer"]):
            old = tempfile.mkdtemp(prefix=".old-tokenizer-", dir=directory)
            os.replace(paths["tokenizer"], os.path.join(old, "tokenizer"))
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tok_tmp, paths["tokenizer"])
        except OSError:  # a concurrent call put a tokenizer there in between: replace it again
            old = tempfile.mkdtemp(prefix=".old-tokenizer-", dir=directory)
            os.replace(paths["tokenizer"], os.path.join(old, "tokenizer"))
            shutil.rmtree(old, ignore_errors=True)
            os.replace(tok_tmp, paths["tokenizer"])
        manifest_tmp = os.path.join(tmp, FILES["manifest"])
        with open(manifest_tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(manifest_tmp, paths["manifest"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
