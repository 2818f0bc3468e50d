"""The SFT model's evaluation samples, kept once for the runs of a sweep that share it.

Every run of a sweep that starts from one SFT model samples that model again, with the same prompts and
settings, to compare against it. :func:`lnpo.evaluate.generate`'s samples depend only on the model, the
tokenizer, the prompts and the settings (row ``(p, s)`` draws from ``fold_in(key(seed), p, s, t)``, whatever
shares its batch), so the first run's samples are the later runs' too. :func:`load_or_sample` keeps them in
``<cache_dir>/sft-samples-<key>.json``, where ``key`` is a SHA-256 over

- the SFT weights' content (:func:`lnpo.train.reference_cache.weights_fingerprint`, memoized in ``cache_dir``),
- the tokenizer (its serialized ``tokenizer.json`` form and chat template),
- the prompts and the generation settings (including the batch size and the dtype).

Files are JSON written to a temporary name and renamed; each holds its key and a SHA-256 of its samples,
and one that fails either check is reported in one line and sampled again, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence

from lnpo.train import reference_cache

__all__ = ["cache_key", "load", "load_or_sample", "save"]

_FIELDS = ("prompt_index", "sample", "prompt_ids", "response_ids", "response_text", "stop_reason")


def _tokenizer_identity(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    serialized = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256((serialized + "\0" + str(getattr(tokenizer, "chat_template", None))).encode()).hexdigest()


def cache_key(model_dir: str, tokenizer, prompts: Sequence, settings: dict, *, memo_dir: str) -> str:
    """The hex key of ``model_dir``'s samples of ``prompts`` under ``settings`` (generate's keyword arguments
    plus the dtype; values are keyed by their ``repr`` where they are not JSON)."""
    payload = json.dumps({"weights": reference_cache.weights_fingerprint(model_dir, memo_dir),
                          "tokenizer": _tokenizer_identity(tokenizer), "prompts": list(prompts),
                          "settings": settings}, sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def cache_path(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, f"sft-samples-{key}.json")


def _samples_sha256(key: str, samples: list) -> str:
    return hashlib.sha256((key + json.dumps(samples, sort_keys=True)).encode()).hexdigest()


def load(cache_dir: str, key: str, num_samples: int) -> list[dict] | None:
    """The cached samples of ``key`` (``num_samples`` of them), or None when absent or not trustworthy."""
    path = cache_path(cache_dir, key)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        samples = record["samples"]
        if record.get("key") != key or _samples_sha256(key, samples) != record.get("sha256"):
            raise ValueError("its samples do not match their key or checksum")
        if len(samples) != num_samples or any(set(s) != set(_FIELDS) for s in samples):
            raise ValueError(f"holds {len(samples)} samples of another form, {num_samples} expected")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        print(f"lnpo: SFT sample cache {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
              "sampling again", flush=True)
        return None
    return samples


def save(cache_dir: str, key: str, samples: list[dict]) -> str:
    """Write ``samples`` (generate's dicts) as the cache file of ``key``; returns its path."""
    os.makedirs(cache_dir, exist_ok=True)
    path = cache_path(cache_dir, key)
    samples = [{k: s[k] for k in _FIELDS} for s in samples]
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"key": key, "sha256": _samples_sha256(key, samples), "samples": samples}, f)
    os.replace(tmp, path)
    return path


def load_or_sample(cache_dir: str, key: str, num_samples: int, sample: Callable[[], list[dict]], *,
                   is_writer: bool = True) -> tuple[list[dict], bool]:
    """``(samples, sampled)``: the cached samples of ``key``, else ``sample()``'s (then written by the writer;
    with several processes as :func:`lnpo.train.reference_cache.load_or_make`)."""
    return reference_cache.load_or_make(
        lambda: load(cache_dir, key, num_samples), sample, lambda made: save(cache_dir, key, made),
        name=f"SFT sample cache {cache_path(cache_dir, key)}", storage="the runs root", is_writer=is_writer)
