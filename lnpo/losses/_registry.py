"""Objective registry, hyperparameter validation, ``get`` and ``combine``.

The objectives themselves live in :mod:`lnpo.losses.objectives`; they register
here with :func:`register`. Validation happens in Python on concrete values,
before anything is traced; the jitted cores receive hyperparameters as float32
scalars (traced), so a sweep over beta does not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import types
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lnpo.losses._inputs import NEEDS, PairLogps, SequenceStats
from lnpo.losses._numerics import Inputs, prepare


class _Required:
    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"

    def __reduce__(self):
        return (_Required, ())


REQUIRED = _Required()
"""Marker in :func:`hparams_of` for a hyperparameter without a default."""


@dataclasses.dataclass(frozen=True)
class Param:
    """One hyperparameter: its default (or REQUIRED) and its valid range."""

    default: Any = REQUIRED
    low: float | None = None  # None: unbounded
    high: float | None = None
    low_inclusive: bool = True
    high_inclusive: bool = True
    allow_none: bool = False

    def describe(self) -> str:
        """Human-readable range, e.g. '> 0' or 'in [0, 0.5)'."""
        if self.low is not None and self.high is not None:
            lo = "[" if self.low_inclusive else "("
            hi = "]" if self.high_inclusive else ")"
            rng = f"in {lo}{self.low:g}, {self.high:g}{hi}"
        elif self.low is not None:
            rng = f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
        elif self.high is not None:
            rng = f"{'<=' if self.high_inclusive else '<'} {self.high:g}"
        else:
            rng = "finite"
        return f"{rng} or None" if self.allow_none else rng

    def contains(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.low is not None and (v < self.low or (v == self.low and not self.low_inclusive)):
            return False
        if self.high is not None and (v > self.high or (v == self.high and not self.high_inclusive)):
            return False
        return True


@dataclasses.dataclass(frozen=True)
class Objective:
    """A registered objective: its pure core, hyperparameters and metadata."""

    name: str
    core: Callable  # (Inputs, hp dict) -> (loss, rewards_chosen, rewards_rejected, extra metrics)
    params: Mapping[str, Param]
    reference: bool
    doc: str
    needs: tuple = ()  # entries of NEEDS


_REGISTRY: dict[str, Objective] = {}
_FNS: dict[str, Callable] = {}


def register(name: str, *, reference: bool, needs: tuple = (), **params: Param):
    """Decorator registering ``core`` as objective ``name``.

    ``core(x: Inputs, hp: dict) -> (per_pair_loss, rewards_chosen,
    rewards_rejected, extra_metrics)``; the standard metrics are added around it.
    The core's docstring (formula and paper) becomes the objective's docstring.
    ``needs``: the :class:`PairLogps` statistics beyond the sums it reads (:data:`NEEDS`).
    """
    bad = [n for n in needs if n not in NEEDS]
    if bad:
        raise RuntimeError(f"objective {name!r}: unknown need {bad[0]!r}; known: {', '.join(NEEDS)}")

    def deco(core):
        if name in _REGISTRY:
            raise RuntimeError(f"objective {name!r} registered twice")
        _REGISTRY[name] = Objective(name, core, dict(params), reference, core.__doc__ or "", tuple(needs))
        return core

    return deco


# ----------------------------------------------------------------------------- lookup


def names() -> list[str]:
    """Every objective name, sorted."""
    return sorted(_REGISTRY)


def _objective(name: str) -> Objective:
    obj = _REGISTRY.get(name) if isinstance(name, str) else None
    if obj is None:
        raise ValueError(f"unknown objective {name!r}; valid: {', '.join(names())}")
    return obj


def requires_reference(name: str) -> bool:
    """Whether objective ``name`` needs reference log-probs (``ref_*`` fields)."""
    return _objective(name).reference


def needs(name: str) -> tuple[str, ...]:
    """The :class:`PairLogps` statistics objective ``name`` reads beyond the sums
    (entries of :data:`NEEDS`; ``()`` for DPO and most objectives): the train step
    computes exactly these, so an objective that needs none pays for none."""
    return _objective(name).needs


def hparams_of(name: str) -> dict[str, Any]:
    """``{hparam: default}`` for objective ``name``; :data:`REQUIRED` marks no default."""
    return {k: p.default for k, p in _objective(name).params.items()}


def hparam_ranges(name: str) -> dict[str, str]:
    """``{hparam: valid range}`` for objective ``name``, e.g. ``{'beta': '> 0'}``."""
    return {k: p.describe() for k, p in _objective(name).params.items()}


# ----------------------------------------------------------------------------- validation


def _takes(obj: Objective) -> str:
    return f"takes {', '.join(obj.params)}" if obj.params else "takes no hyperparameters"


def _is_tracer(v) -> bool:
    return isinstance(v, jax.core.Tracer)


def _check_value(obj: Objective, key: str, p: Param, v):
    """Concrete values -> Python float after range checks; tracers pass unchecked."""
    if v is None:
        if p.allow_none:
            return None
        raise ValueError(f"{obj.name}: {key} must be {p.describe()}, got None")
    if _is_tracer(v):
        # Traced inside the caller's own jit/vmap: the value is unknown here, so
        # the range cannot be checked; it is the caller's responsibility.
        if jnp.ndim(v) != 0:
            raise ValueError(f"{obj.name}: {key} must be a scalar, got shape {jnp.shape(v)}")
        return v
    try:
        arr = np.asarray(v)
    except Exception as e:  # pragma: no cover - exotic objects
        raise ValueError(f"{obj.name}: {key} must be a real number, got {v!r}") from e
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"{obj.name}: {key} must be a real number, got {v!r}")
    if arr.shape != ():
        raise ValueError(f"{obj.name}: {key} must be a scalar, got shape {arr.shape}")
    f = float(arr)
    if not p.contains(f):
        raise ValueError(f"{obj.name}: {key} must be {p.describe()}, got {f:g}")
    return f


def _as_args(hp: Mapping[str, Any]) -> dict[str, Any]:
    """Validated hparams -> jit arguments: float32 scalars, so neither the value nor
    int-vs-float changes the compiled function's signature."""
    return {k: (np.float32(v) if isinstance(v, float) else v) for k, v in hp.items()}


def _validate(obj: Objective, hparams: Mapping[str, Any]) -> dict[str, Any]:
    unknown = [k for k in hparams if k not in obj.params]
    if unknown:
        raise ValueError(f"{obj.name}: unknown hyperparameter {unknown[0]!r}; {_takes(obj)}")
    out = {}
    for key, p in obj.params.items():
        if key in hparams:
            v = hparams[key]
        elif p.default is REQUIRED:
            raise ValueError(f"{obj.name}: missing hyperparameter {key!r}; {_takes(obj)}")
        else:
            v = p.default
        out[key] = _check_value(obj, key, p, v)
    return out


def validate(name: str, hparams: Mapping[str, Any]) -> dict[str, Any]:
    """Check ``hparams`` for objective ``name``; return them with defaults filled in.

    Raises ValueError (unknown objective, unknown / missing / out-of-range
    hyperparameter). Values come back as Python floats (or None); traced values
    are returned unchanged, their range unchecked.
    """
    return _validate(_objective(name), hparams)


def _check_logps(logps, *, need_reference: bool, who: str, needs_: tuple = ()) -> PairLogps:
    if not isinstance(logps, PairLogps):
        raise ValueError(f"{who}: expected lnpo.losses.PairLogps, got {type(logps).__name__}")
    required = ["policy_chosen", "policy_rejected", "chosen_tokens", "rejected_tokens"]
    missing = [f for f in required if getattr(logps, f) is None]
    if missing:
        raise ValueError(f"{who}: PairLogps.{missing[0]} is None; {', '.join(required)} are required")
    refs = (logps.ref_chosen, logps.ref_rejected)
    if need_reference:
        if any(r is None for r in refs):
            free = [n for n in names() if not _REGISTRY[n].reference]
            raise ValueError(
                f"{who}: needs reference log-probs but PairLogps.ref_chosen/ref_rejected is None; "
                f"reference-free objectives: {', '.join(free)}"
            )
    else:
        # Reference-free: drop any reference so it neither enters the trace nor
        # changes the result.
        logps = logps._replace(ref_chosen=None, ref_rejected=None)
    logps = _check_stats(logps, need_reference=need_reference, who=who, needs_=needs_)
    shapes = {}
    for f, v in logps._asdict().items():
        if isinstance(v, SequenceStats):
            shapes.update({f"{f}.{g}": jnp.shape(w) for g, w in v._asdict().items() if w is not None})
        elif v is not None:
            shapes[f] = jnp.shape(v)
    first = shapes["policy_chosen"]
    if len(first) != 1 or any(s != first for s in shapes.values()):
        raise ValueError(f"{who}: PairLogps fields must all have the same shape [B], got {shapes}")
    return logps


def _check_stats(logps: PairLogps, *, need_reference: bool, who: str, needs_: tuple) -> PairLogps:
    """Statistics the objective needs must be present; the others are dropped (out of the trace)."""
    for need in ("shared", "sampled", "aligned"):
        stat = getattr(logps, need)
        if need not in needs_:
            logps = logps._replace(**{need: None})
            continue
        if not isinstance(stat, SequenceStats) or stat.policy_chosen is None or stat.policy_rejected is None:
            raise ValueError(f"{who}: needs PairLogps.{need} (a SequenceStats with policy_chosen/policy_rejected), "
                             f"got {type(stat).__name__}")
        with_ref = need_reference and need != "aligned"
        if with_ref and (stat.ref_chosen is None or stat.ref_rejected is None):
            raise ValueError(f"{who}: needs PairLogps.{need}.ref_chosen/ref_rejected, got None")
        if not with_ref:
            logps = logps._replace(**{need: stat._replace(ref_chosen=None, ref_rejected=None)})
    if "label" in needs_ and logps.label is None:
        raise ValueError(f"{who}: needs PairLogps.label (an unpaired batch: 1 desirable, 0 undesirable), got None")
    if "label" not in needs_:
        logps = logps._replace(label=None)
    return logps


# ----------------------------------------------------------------------------- evaluation


def _metrics(x: Inputs, rewards_chosen, rewards_rejected, extra) -> dict[str, jax.Array]:
    m = {
        "rewards/chosen": rewards_chosen,
        "rewards/rejected": rewards_rejected,
        "rewards/margins": rewards_chosen - rewards_rejected,
        "rewards/accuracies": (rewards_chosen > rewards_rejected).astype(jnp.float32),
        "logps/chosen": x.policy_chosen,
        "logps/rejected": x.policy_rejected,
        "logps/chosen_per_token": x.policy_chosen / x.chosen_length,
        "logps/rejected_per_token": x.policy_rejected / x.rejected_length,
    }
    m.update(extra)
    shape = jnp.shape(x.policy_chosen)
    return {
        k: jax.lax.stop_gradient(jnp.broadcast_to(jnp.asarray(v, jnp.float32), shape))
        for k, v in m.items()
    }


def _run_core(obj: Objective, x: Inputs, hp):
    hp = {k: (None if v is None else jnp.asarray(v).astype(jnp.float32)) for k, v in hp.items()}
    loss, rewards_chosen, rewards_rejected, extra = obj.core(x, hp)
    loss = jnp.broadcast_to(loss.astype(jnp.float32), jnp.shape(x.policy_chosen))
    if x.valid is not None:
        loss = jnp.where(x.valid, loss, 0.0)
    return loss, _metrics(x, rewards_chosen, rewards_rejected, extra)


def _evaluate(name: str, logps: PairLogps, hp):
    return _run_core(_REGISTRY[name], prepare(logps), hp)


def _full_doc(obj: Objective) -> str:
    doc = inspect.cleandoc(obj.doc)
    if obj.params:
        lines = [
            f"    {k}: {'required' if p.default is REQUIRED else f'default {p.default!r}'}, {p.describe()}"
            for k, p in obj.params.items()
        ]
        doc += "\n\nHyperparameters:\n" + "\n".join(lines)
    else:
        doc += "\n\nHyperparameters: none."
    ref = "needs reference log-probs" if obj.reference else "reference-free (ref_* ignored, may be None)"
    doc += f"\n\nReference: {ref}."
    if obj.needs:
        doc += f"\n\nNeeds (PairLogps fields beyond the sums): {', '.join(obj.needs)}."
    return doc


def get(name: str) -> Callable:
    """The objective ``name`` as ``fn(logps: PairLogps, **hparams) -> (loss, metrics)``.

    ``loss`` is float32 ``[B]`` (one value per pair; the trainer averages);
    ``metrics`` maps TRL-style names to float32 ``[B]`` arrays. ``fn`` validates
    its hyperparameters and inputs in Python (ValueError) and then calls a
    ``jax.jit``-compiled pure core; it works under ``jax.jit``, ``jax.vmap`` and
    ``jax.grad``. Attributes: ``fn.name``, ``fn.requires_reference``,
    ``fn.hparams`` (as :func:`hparams_of`), ``fn.needs`` (as :func:`needs`), ``fn.jitted`` (the compiled core,
    ``jitted(logps, hparams_dict)``).
    """
    obj = _objective(name)
    fn = _FNS.get(name)
    if fn is not None:
        return fn
    jitted = jax.jit(functools.partial(_evaluate, name))

    def fn(logps: PairLogps, **hparams):
        hp = _as_args(_validate(obj, hparams))
        logps = _check_logps(logps, need_reference=obj.reference, who=obj.name, needs_=obj.needs)
        return jitted(logps, hp)

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = "lnpo.losses"
    fn.__doc__ = _full_doc(obj)
    fn.name = name
    fn.requires_reference = obj.reference
    fn.hparams = types.MappingProxyType(hparams_of(name))
    fn.needs = obj.needs
    fn.jitted = jitted
    _FNS[name] = fn
    return fn


# ----------------------------------------------------------------------------- combinations


def _evaluate_combo(names_: tuple[str, ...], logps: PairLogps, weights, hps):
    x = prepare(logps)
    total = None
    metrics: dict[str, jax.Array] = {}
    for i, (n, w, hp) in enumerate(zip(names_, weights, hps)):
        loss, m = _run_core(_REGISTRY[n], x, hp)
        term = jnp.asarray(w).astype(jnp.float32) * loss
        total = term if total is None else total + term
        if i == 0:
            metrics.update(m)
        else:  # logps/* are the same for every component: keep one copy
            metrics.update({f"{n}/{k}": v for k, v in m.items() if not k.startswith("logps/")})
        metrics[f"loss/{n}"] = jax.lax.stop_gradient(loss)
    return total, metrics


@functools.cache
def _combo_jit(names_: tuple[str, ...]):
    return jax.jit(functools.partial(_evaluate_combo, names_))


class Combined:
    """A weighted sum of objectives, built by :func:`combine`.

    ``combined(logps) -> (loss, metrics)`` with the same shapes and dtypes as a
    single objective; hyperparameters are bound at construction.
    """

    def __init__(self, components):
        self.components = tuple(components)  # ((name, weight, hparams), ...)
        self.names = tuple(n for n, _, _ in self.components)
        self.requires_reference = any(_REGISTRY[n].reference for n in self.names)
        self.needs = tuple(n for n in NEEDS if any(n in _REGISTRY[c].needs for c in self.names))
        self.name = " + ".join(f"{w:g}*{n}" for n, w, _ in self.components)
        self._weights = tuple(np.float32(w) for _, w, _ in self.components)
        self._hps = tuple(_as_args(hp) for _, _, hp in self.components)
        self.jitted = _combo_jit(self.names)

    def __call__(self, logps: PairLogps, **hparams):
        if hparams:
            raise ValueError(
                f"combined objective {self.name}: hyperparameters are bound in combine(), "
                f"got {sorted(hparams)}"
            )
        logps = _check_logps(logps, need_reference=self.requires_reference, who=self.name, needs_=self.needs)
        return self.jitted(logps, self._weights, self._hps)

    def __repr__(self) -> str:
        return f"Combined({self.name})"


def combine(spec: Mapping[str, tuple[float, Mapping[str, Any]]]) -> Combined:
    """Weighted sum of objectives: ``combine({"dpo": (1.0, {"beta": 0.1}), "nll": (0.2, {})})``.

    ``spec`` maps objective names to ``(weight, hparams)``; weights must be
    finite and >= 0. Returns a :class:`Combined` callable
    ``fn(logps) -> (sum_i weight_i * loss_i, metrics)``.

    Metrics: the *first* component's metrics unprefixed (so ``rewards/*`` are
    the primary objective's implicit rewards), every other component's metrics
    except ``logps/*`` (identical for all) prefixed ``"<name>/"``, and
    ``"loss/<name>"``, each component's unweighted per-pair loss. The
    combination needs a reference if any component does. ``(weight, hparams)``
    may also be a list, and any mapping-like object (e.g. a ConfigDict) works
    for ``spec`` and ``hparams``. Raises ValueError exactly as :func:`get` /
    :func:`validate` would.
    """
    if not hasattr(spec, "items") or not len(spec):
        raise ValueError("combine: expected a non-empty mapping {name: (weight, hparams)}")
    components = []
    for name, entry in spec.items():
        obj = _objective(name)
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and hasattr(entry[1], "keys")):
            raise ValueError(f"combine: {name!r} must map to (weight, hparams), got {entry!r}")
        weight, hparams = entry
        try:
            w = float(weight)
        except (TypeError, ValueError):
            raise ValueError(f"combine: weight of {name!r} must be a real number, got {weight!r}") from None
        if isinstance(weight, bool) or not math.isfinite(w) or w < 0:
            raise ValueError(f"combine: weight of {name!r} must be finite and >= 0, got {weight!r}")
        components.append((obj.name, w, _validate(obj, hparams)))
    return Combined(components)
