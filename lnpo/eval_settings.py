"""The settings of the generation-based evaluation (:mod:`lnpo.evaluate`): one frozen type, one set of defaults.

:class:`EvalSettings` is built from a run's config (:meth:`EvalSettings.from_config`: ``config.eval.*`` and
``config.data.max_prompt_len``), written into ``run.json`` by its owner (:mod:`lnpo.rundir`), read back by
the evaluator, and passed by the sweep to the evaluator directly. ``configs/base.py`` takes its ``eval.*``
sampling fields from :meth:`EvalSettings.config_defaults`, so the defaults exist here only.
Stdlib only (``lnpo.report`` and config files import it without JAX).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from lnpo.errors import ConfigError

#: The fields a config sets under ``config.eval`` (the others come from elsewhere or only from the command line).
CONFIG_FIELDS = ("max_new_tokens", "temperature", "top_p", "top_k", "num_samples", "max_prompts", "batch_size",
                 "seed")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How the policy (and the SFT model) are sampled and batched during evaluation.

    max_new_tokens: tokens generated per response; temperature (0 = greedy), top_p (1 = all), top_k (0 = all):
    as :func:`lnpo.evaluate.generate`; num_samples: responses per prompt; max_prompts: the first that many
    prompts (0 = every prompt); batch_size: rows per generation / log-prob batch; seed: the sampling seed
    (the policy and the SFT model draw with the same one); stop_strings: a response ends before the first;
    max_prompt_len: prompt tokens kept (the training run's ``data.max_prompt_len``; None = all);
    dtype: parameter and compute dtype of the loaded models; logprob_chunk: positions per log-softmax block
    (0 = automatic).
    """

    max_new_tokens: int = 176  # the embedded task v2's longest response (v1's answers need 48)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1
    max_prompts: int = 0
    batch_size: int = 64
    seed: int = 0
    stop_strings: tuple[str, ...] = ()
    max_prompt_len: int | None = None
    dtype: str = "float32"
    logprob_chunk: int = 0

    def __post_init__(self):
        checks = {"max_new_tokens": self.max_new_tokens >= 1, "temperature": self.temperature >= 0,
                  "top_p": 0.0 < self.top_p <= 1.0, "top_k": self.top_k >= 0, "num_samples": self.num_samples >= 1,
                  "max_prompts": self.max_prompts >= 0, "batch_size": self.batch_size >= 1,
                  "logprob_chunk": self.logprob_chunk >= 0,
                  "dtype": self.dtype in ("float32", "bfloat16")}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"eval.{name}: invalid value {getattr(self, name)!r}")

    @classmethod
    def config_defaults(cls) -> dict:
        """``{field: default}`` of :data:`CONFIG_FIELDS`: what ``configs/base.py`` puts under ``config.eval``."""
        defaults = cls()
        return {name: getattr(defaults, name) for name in CONFIG_FIELDS}

    @classmethod
    def from_config(cls, config) -> EvalSettings:
        """A run's settings: ``config.eval``'s :data:`CONFIG_FIELDS` and ``config.data.max_prompt_len``."""
        ev = config.eval
        return cls(**{name: ev[name] for name in CONFIG_FIELDS if name in ev},
                   max_prompt_len=config.data.max_prompt_len or None)

    @classmethod
    def from_json(cls, data: Mapping | None, *, where: str = "run.json") -> EvalSettings:
        """From :meth:`to_json`'s dict; unknown keys are an error naming ``where``, missing ones the defaults.
        (``max_prompts: null``, as older run.json files wrote it, means every prompt.)"""
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"{where}: unknown evaluation settings {unknown}")
        if data.get("max_prompts") is None:
            data.pop("max_prompts", None)
        if data.get("logprob_chunk") is None:
            data.pop("logprob_chunk", None)
        data["stop_strings"] = tuple(data.get("stop_strings") or ())
        return cls(**data)

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes) -> EvalSettings:
        """These settings with ``changes`` (None values ignored: an unset command-line flag)."""
        changes = {k: (tuple(v) if k == "stop_strings" else v) for k, v in changes.items() if v is not None}
        return dataclasses.replace(self, **changes)
