"""Completing a trained run's ``run.json`` with the sweep's evaluation settings before it is evaluated."""

from __future__ import annotations

import os

import ml_collections

from lnpo.errors import InputNotFound
from lnpo.sweep.records import is_writer, read_json, write_json

#: run.json ``eval`` keys that lnpo.evaluate reads (its DEFAULT_SETTINGS, plus dtype and logprob_chunk).
_EVAL_KEYS = ("max_new_tokens", "temperature", "top_p", "top_k", "num_samples", "seed", "max_prompts",
              "batch_size", "stop_strings", "max_prompt_len", "dtype", "logprob_chunk")


def _eval_settings(config: ml_collections.ConfigDict) -> dict:
    ev = config.get("eval") or {}
    out = {}
    for key in _EVAL_KEYS:
        if key in ev:
            value = ev[key]
            if key == "max_prompts" and not value:
                value = None  # config.eval.max_prompts = 0 means every prompt
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def prepare_eval(workdir: str, config: ml_collections.ConfigDict) -> dict:
    """Complete ``workdir/run.json`` for :func:`lnpo.evaluate.evaluate_workdir`: the ``eval`` dict of
    sampling settings from ``config.eval`` (keys the trainer did not write), and ``scorer`` /
    ``eval_prompts`` from ``config.eval.scorer`` / ``config.data.ood_prompts`` when empty."""
    path = os.path.join(workdir, "run.json")
    info = read_json(path)
    if info is None:
        raise InputNotFound(f"{path}: missing or unreadable after training")
    changed = False
    settings = _eval_settings(config)
    ev = dict(info.get("eval") or {})
    for key, value in settings.items():
        if key not in ev:
            ev[key] = value
            changed = True
    if ev:
        info["eval"] = ev
    scorer = (config.get("eval") or {}).get("scorer", "")
    if not info.get("scorer") and scorer:
        info["scorer"], changed = scorer, True
    prompts = config.data.get("ood_prompts", "")
    if not info.get("eval_prompts") and prompts:
        info["eval_prompts"], changed = prompts, True
    if changed and is_writer():
        write_json(path, info)
    return info
