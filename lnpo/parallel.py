"""Device mesh, logical axis rules and sharding helpers.

Parameters and activations are annotated with *logical* axis names
(``"embed"``, ``"vocab"``, ``"heads"``, ...). A rule table maps each logical
name to zero, one or several *mesh* axes of the ``(data, fsdp, tensor, context)``
mesh, so one model definition shards data-parallel, FSDP, tensor-parallel or
context-parallel without code changes:

    spec = logical_to_spec(("embed", "mlp"), DEFAULT_RULES)  # P("fsdp", "tensor")

Inside :func:`use_rules`, :func:`constrain` applies
``jax.lax.with_sharding_constraint`` to activations; outside it is the identity,
so the same model code runs unsharded on one CPU.

Context parallelism: activations' ``"length"`` (a row's sequence axis) is split over
the ``context`` axis, so each chip holds ``T / context`` positions of every row of its
batch shard. Attention gathers the keys and values of the whole row (its inputs are
constrained to a replicated length; XLA inserts one all-gather per layer and its
reduce-scatter in the backward pass) while the queries, the scores
``[B, H, T / context, T]``, the MLP and the log-probs stay split. The mask is built from
the row's ``[B, T]`` ids, so packed and shared-prompt rows keep it exactly across shards.
A mesh shape may be given as ``(data, fsdp, tensor)`` (context 1) or
``(data, fsdp, tensor, context)``; a config names the axes (``mesh.fsdp = -1``) or gives
that tuple (``mesh.shape``), see :func:`mesh_shape_of`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lnpo.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor", "context")

# logical name -> mesh axis, tuple of mesh axes, or None (replicated).
DEFAULT_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", "context"),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # parameters
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("mlp", "tensor"),
    ("layers", None),
    ("norm", None),
    ("labels", None),
)

_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "lnpo_mesh_rules", default=None
)


def logical_to_spec(axes: Sequence[str | None] | None, rules=DEFAULT_RULES, *, shape: Sequence[int] | None = None,
                    mesh_shape: Mapping[str, int] | None = None) -> PartitionSpec:
    """Map logical axis names to a ``PartitionSpec``.

    Unknown names and ``None`` map to replication. A mesh axis is used at most
    once per spec (the first logical axis that claims it wins), as JAX requires.

    With the array's ``shape`` and the ``mesh_shape`` (``{axis: size}``), a mesh axis
    that does not divide its dimension is left out of it: that dimension is replicated
    over the axis (e.g. 4 KV heads on a tensor axis of 8), since JAX refuses uneven
    shardings. :func:`uneven_dims` names such dimensions.
    """
    if axes is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(axes):
        target = table.get(name) if name is not None else None
        if target is None:
            out.append(None)
            continue
        targets = spec_entry_axes(target)
        free = tuple(t for t in targets if t not in used)
        if shape is not None and mesh_shape is not None and i < len(shape):
            kept, parts = [], 1
            for t in free:
                if shape[i] % (parts * mesh_shape[t]) == 0:
                    kept.append(t)
                    parts *= mesh_shape[t]
            free = tuple(kept)
        used.update(free)
        out.append(None if not free else (free[0] if len(free) == 1 else free))
    return PartitionSpec(*out)


def spec_entry_axes(entry) -> tuple[str, ...]:
    """The mesh axes of one ``PartitionSpec`` entry (None, a name or a tuple of names)."""
    return () if entry is None else ((entry,) if isinstance(entry, str) else tuple(entry))


def uneven_dims(axes: Sequence[str | None], shape: Sequence[int], mesh_shape: Mapping[str, int],
                rules=DEFAULT_RULES) -> list[str]:
    """The dimensions :func:`logical_to_spec` replicates because a mesh axis does not divide
    them, e.g. ``["kv_heads 4 over tensor 8"]``."""
    full = logical_to_spec(axes, rules)
    even = logical_to_spec(axes, rules, shape=shape, mesh_shape=mesh_shape)
    out = []
    for i, (a, b) in enumerate(zip(full, even)):
        dropped = [n for n in spec_entry_axes(a) if n not in spec_entry_axes(b)]
        if dropped:
            out.append(f"{axes[i]} {shape[i]} over {'x'.join(f'{n} {mesh_shape[n]}' for n in dropped)}")
    return out


def mesh_shape_of(mesh) -> tuple[int, ...]:
    """The mesh shape a config's ``mesh`` section gives, before any ``-1`` is resolved.

    ``mesh`` is the section (a ConfigDict or a dict) or, as before, a tuple. The section
    names its axes (``mesh.data``, ``mesh.fsdp``, ``mesh.tensor``, ``mesh.context``; an
    absent axis is 1) or holds the tuple form in ``mesh.shape`` (``(data, fsdp, tensor)``
    or ``(data, fsdp, tensor, context)``; an empty tuple means "use the named axes").
    Returns ``(data, fsdp, tensor)`` when the context axis is 1, else all four; each entry
    an int, ``-1`` = the rest of the devices. Raises a one-line :class:`ConfigError`
    naming the field for an unknown axis, a non-integer size, or both forms at once.
    """
    if not isinstance(mesh, Mapping) and not hasattr(mesh, "items"):
        return tuple(_axis_size("mesh.shape", s) for s in _as_sequence("mesh.shape", mesh))
    fields = dict(mesh.items())
    unknown = sorted(set(fields) - {"shape", *MESH_AXES})
    if unknown:
        raise ConfigError(f"config.mesh.{unknown[0]}: not a mesh axis; the axes are {', '.join(MESH_AXES)} "
                          "(or mesh.shape, a tuple)")
    named = tuple(_axis_size(f"mesh.{axis}", fields.get(axis, 1)) for axis in MESH_AXES)
    shape = fields.get("shape") or ()
    if shape:
        named_set = [f"mesh.{axis}={size}" for axis, size, default in zip(MESH_AXES, named, _NAMED_DEFAULT)
                     if axis in fields and size != default]
        if named_set:
            raise ConfigError(f"config.mesh.shape: {tuple(shape)} and {', '.join(named_set)} both set the mesh; "
                              "give the shape or the named axes")
        return tuple(_axis_size("mesh.shape", s) for s in _as_sequence("mesh.shape", shape))
    return named if named[3] != 1 else named[:3]


# The named axes' defaults (configs/base.py): a shape there is the only mesh setting.
_NAMED_DEFAULT = (-1, 1, 1, 1)


def _as_sequence(field: str, value) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"config.{field}: must be a tuple (data, fsdp, tensor[, context]), got {value!r}")
    return tuple(value)


def _axis_size(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ConfigError(f"config.{field}: a mesh axis size must be an integer (-1 = the rest of the devices), "
                          f"got {value!r}")
    return int(value)


def resolve_mesh_shape(shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Resolve a mesh shape where at most one entry is -1 ("the rest").

    ``shape`` is ``(data, fsdp, tensor)`` or ``(data, fsdp, tensor, context)``; the result
    has the same number of entries. Raises ValueError naming the problem when the shape
    cannot cover exactly ``num_devices`` devices.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (len(MESH_AXES) - 1, len(MESH_AXES)):
        raise ConfigError(f"mesh shape {shape} must have 3 entries {MESH_AXES[:3]} or 4 entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ConfigError(f"mesh shape {shape}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise ConfigError(f"mesh shape {shape}: sizes must be positive or -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ConfigError(
                f"mesh shape {shape} does not divide the {num_devices} available devices"
            )
        shape = tuple(num_devices // known if s == -1 else s for s in shape)
    if math.prod(shape) != num_devices:
        raise ConfigError(
            f"mesh shape {shape} needs {math.prod(shape)} devices but {num_devices} are available"
        )
    return shape


def full_mesh_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """A resolved 3- or 4-entry mesh shape as all four axes ``(data, fsdp, tensor, context)``."""
    shape = tuple(int(s) for s in shape)
    return shape + (1,) * (len(MESH_AXES) - len(shape))


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices=None) -> Mesh:
    """Build a ``(data, fsdp, tensor, context)`` mesh over ``devices`` (default: all) from a
    3-entry (context 1) or 4-entry shape."""
    devices = jax.devices() if devices is None else list(devices)
    resolved = full_mesh_shape(resolve_mesh_shape(shape, len(devices)))
    try:
        device_array = mesh_utils.create_device_mesh(resolved, devices=devices)
    except Exception:  # non-physical topologies (CPU, odd shapes): plain reshape
        device_array = np.asarray(devices).reshape(resolved)
    return Mesh(device_array, MESH_AXES)


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules=DEFAULT_RULES):
    """Within this context, :func:`constrain` shards activations on ``mesh``."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def active_mesh_rules() -> tuple[Mesh, tuple] | None:
    """The ``(mesh, rules)`` set by :func:`use_rules`, or None."""
    return _ACTIVE.get()


def active_shards(axes: Sequence[str | None], shape: Sequence[int], dim: int) -> int:
    """Into how many pieces the active mesh (:func:`use_rules`) splits dimension ``dim`` of an
    array of this ``shape`` with these logical ``axes``; 1 without an active mesh."""
    active = _ACTIVE.get()
    if active is None:
        return 1
    mesh, rules = active
    spec = logical_to_spec(axes, rules, shape=shape, mesh_shape=dict(mesh.shape))
    return int(np.prod([mesh.shape[a] for a in spec_entry_axes(spec[dim])], dtype=np.int64))


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; the identity outside :func:`use_rules`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, axes, rules, shape=x.shape))


def named_sharding(mesh: Mesh, axes: Sequence[str | None] | None, rules=DEFAULT_RULES, *,
                   shape: Sequence[int] | None = None) -> NamedSharding:
    """``NamedSharding`` for an array annotated with logical ``axes`` (of ``shape``: mesh axes
    that do not divide a dimension replicate it, see :func:`logical_to_spec`)."""
    return NamedSharding(mesh, logical_to_spec(axes, rules, shape=shape, mesh_shape=dict(mesh.shape)))


def batch_group(device_grid: np.ndarray, process_index: int) -> tuple[int, int]:
    """``(group, groups)``: which slice of the global batch process ``process_index`` feeds, of how many.

    ``device_grid`` is a ``(data, fsdp, tensor, context)`` array of devices (a mesh's ``devices``).
    The batch is split over ``data x fsdp`` only, so processes whose devices differ only along
    ``tensor`` or ``context`` (a context axis spanning hosts) hold the same rows: they form one
    group and must be fed the same data; each group feeds ``1 / groups`` of every micro-batch, in
    the order of its batch shards. Raises ConfigError when processes hold overlapping, unequal
    or non-contiguous parts of the batch axis (a mesh no host-local feeding can fill)."""
    grid = np.asarray(device_grid)
    fsdp = grid.shape[1]
    shards: dict[int, set[int]] = {}
    for index in np.ndindex(grid.shape):
        shards.setdefault(int(grid[index].process_index), set()).add(index[0] * fsdp + index[1])
    groups = sorted({tuple(sorted(s)) for s in shards.values()})
    flat = [shard for group in groups for shard in group]
    size = len(groups[0])
    contiguous = all(list(g) == list(range(g[0], g[0] + size)) for g in groups)
    if len(flat) != len(set(flat)) or any(len(g) != size for g in groups) or not contiguous:
        raise ConfigError(f"mesh: the processes hold overlapping or uneven parts of the batch axes (data x fsdp "
                          f"shards per process: { {p: sorted(s) for p, s in sorted(shards.items())} }); give each "
                          f"host whole batch shards (put tensor and context inside hosts or across them evenly)")
    return groups.index(tuple(sorted(shards[process_index]))), len(groups)


def process_batch_group(mesh: Mesh) -> tuple[int, int]:
    """:func:`batch_group` of this process on ``mesh``."""
    return batch_group(mesh.devices, jax.process_index())
