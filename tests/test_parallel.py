"""lnpo.parallel: logical axis rules and mesh shapes."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lnpo import parallel
from lnpo.errors import ConfigError


def test_parameter_axes_map_to_fsdp_and_tensor():
    assert parallel.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert parallel.logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert parallel.logical_to_spec(("layers", "embed", "kv_heads", "head_dim")) == P(None, "fsdp", "tensor", None)


def test_a_mesh_axis_is_used_once_per_spec():
    # batch claims data and fsdp; a later "embed" must not reuse fsdp.
    assert parallel.logical_to_spec(("batch", "length", "embed")) == P(("data", "fsdp"), "context", None)
    assert parallel.logical_to_spec(("heads", "mlp")) == P("tensor", None)


def test_unknown_and_none_axes_replicate():
    assert parallel.logical_to_spec(("nonexistent", None)) == P(None, None)
    assert parallel.logical_to_spec(None) == P()


@pytest.mark.parametrize(
    "shape, devices, expected",
    [((-1, 1, 1), 8, (8, 1, 1)), ((2, -1, 2), 8, (2, 2, 2)), ((1, 1, 1), 1, (1, 1, 1)), ((1, 8, 1), 8, (1, 8, 1))],
)
def test_resolve_mesh_shape(shape, devices, expected):
    assert parallel.resolve_mesh_shape(shape, devices) == expected


@pytest.mark.parametrize("shape, devices, expected", [((2, 1, 1, 4), 8, (2, 1, 1, 4)), ((-1, 1, 1, 4), 8, (2, 1, 1, 4)),
                                                      ((1, 1, 2, -1), 8, (1, 1, 2, 4))])
def test_a_four_entry_mesh_shape_adds_the_context_axis(shape, devices, expected):
    assert parallel.resolve_mesh_shape(shape, devices) == expected
    assert parallel.full_mesh_shape(expected) == expected
    assert parallel.full_mesh_shape((8, 1, 1)) == (8, 1, 1, 1)  # the 3-entry form: context 1


def test_the_mesh_has_a_context_axis_and_row_length_shards_over_it():
    mesh = parallel.make_mesh((1, 1, 1))
    assert mesh.axis_names == ("data", "fsdp", "tensor", "context") and mesh.shape["context"] == 1
    assert parallel.logical_to_spec(("batch", "length", "act_embed")) == P(("data", "fsdp"), "context", None)


@pytest.mark.parametrize(
    "shape, devices, message",
    [((2, 2, 2), 4, "needs 8 devices but 4"), ((3, -1, 1), 8, "does not divide"), ((-1, -1, 1), 8, "at most one"),
     ((2, 2), 4, "3 entries"), ((1, 1, 1, 1, 1), 1, "or 4 entries"), ((0, 1, 1), 1, "positive"),
     ((2, 1, 1, 2), 8, "needs 4 devices but 8")],
)
def test_bad_mesh_shapes_name_the_problem(shape, devices, message):
    with pytest.raises(ValueError, match=message):
        parallel.resolve_mesh_shape(shape, devices)


def test_constrain_is_identity_outside_rules_and_shards_inside():
    x = jax.numpy.ones((4, 3, 2))
    assert parallel.constrain(x, ("batch", "length", "act_embed")) is x
    fn = lambda a: parallel.constrain(a, ("batch", "length", "act_embed"))  # noqa: E731
    assert "sharding_constraint" not in str(jax.make_jaxpr(fn)(x))
    inside = lambda a: parallel.constrain(a, ("batch", "length", "act_embed"))  # noqa: E731  (a fresh trace)
    with parallel.use_rules(parallel.make_mesh((-1, 1, 1))):
        jaxpr = str(jax.make_jaxpr(inside)(x))
    assert "sharding_constraint" in jaxpr and "data" in jaxpr and "fsdp" in jaxpr


def test_active_shards_counts_the_pieces_of_one_dimension():
    assert parallel.active_shards(("batch", "length"), (2, 8), 1) == 1  # no active mesh
    fake = type("FakeMesh", (), {"shape": {"data": 2, "fsdp": 1, "tensor": 1, "context": 4}})()
    with parallel.use_rules(fake):
        assert parallel.active_shards(("batch", "length"), (2, 8), 1) == 4
        assert parallel.active_shards(("batch", "length"), (2, 8), 0) == 2
        assert parallel.active_shards(("batch", "length"), (2, 6), 1) == 1  # 4 does not divide 6: replicated


def test_a_mesh_axis_that_does_not_divide_a_dimension_replicates_it():
    mesh = {"data": 1, "fsdp": 2, "tensor": 4}
    axes = ("layers", "embed", "kv_heads", "head_dim")
    assert parallel.logical_to_spec(axes, shape=(2, 64, 2, 16), mesh_shape=mesh) == P(None, "fsdp", None, None)
    assert parallel.logical_to_spec(axes, shape=(2, 64, 8, 16), mesh_shape=mesh) == P(None, "fsdp", "tensor", None)
    assert parallel.uneven_dims(axes, (2, 64, 2, 16), mesh) == ["kv_heads 2 over tensor 4"]
    assert parallel.uneven_dims(axes, (2, 64, 8, 16), mesh) == []
    # a multi-axis rule keeps the axes that divide: batch 6 over data 3 x fsdp 2 -> both; 3 -> data only
    mesh = {"data": 3, "fsdp": 2, "tensor": 1}
    assert parallel.logical_to_spec(("batch", None), shape=(6, 5), mesh_shape=mesh) == P(("data", "fsdp"), None)
    assert parallel.logical_to_spec(("batch", None), shape=(3, 5), mesh_shape=mesh) == P("data", None)


class _Device:
    def __init__(self, process_index):
        self.process_index = process_index


def _grid(shape, processes_of):
    """A (data, fsdp, tensor, context) grid of fake devices, process ``processes_of(index)`` each."""
    grid = np.empty(shape, dtype=object)
    for index in np.ndindex(shape):
        grid[index] = _Device(processes_of(index))
    return grid


def test_batch_group_hosts_on_the_data_axis_each_feed_their_own_rows():
    grid = _grid((4, 1, 1, 2), lambda i: i[0] // 2)  # 2 hosts x (2 data shards x context 2)
    assert [parallel.batch_group(grid, p) for p in (0, 1)] == [(0, 2), (1, 2)]


def test_batch_group_a_context_axis_across_hosts_makes_them_feed_the_same_rows():
    grid = _grid((2, 1, 1, 8), lambda i: 2 * i[0] + i[3] // 4)  # 4 hosts; context 8 spans 2 of them
    assert [parallel.batch_group(grid, p) for p in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    one = _grid((1, 1, 1, 8), lambda i: i[3] // 4)  # the whole mesh one context group
    assert [parallel.batch_group(one, p) for p in (0, 1)] == [(0, 1), (0, 1)]


def test_batch_group_refuses_hosts_that_share_part_of_their_rows():
    grid = _grid((3, 1, 1, 2), lambda i: (2 * i[0] + i[3]) // 3)  # host 0: shards 0,1 (half); host 1: 1,2
    with pytest.raises(ConfigError, match=r"mesh: the processes hold overlapping or uneven parts"):
        parallel.batch_group(grid, 0)
# ----------------------------------------------------------------------------- the config's mesh section
def _mesh(**fields):
    import ml_collections

    return ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1, "context": 1, "shape": (), **fields})


@pytest.mark.parametrize("section, expected", [
    (_mesh(), (-1, 1, 1)),  # configs/base.py: every device on the data axis
    (_mesh(data=1, fsdp=-1), (1, -1, 1)),
    (_mesh(data=2, fsdp=-1, tensor=2, context=4), (2, -1, 2, 4)),
    (_mesh(shape=(1, -1, 1)), (1, -1, 1)),  # the tuple form is still accepted
    (_mesh(shape=(1, 2, 1, 4)), (1, 2, 1, 4)),
    ({"fsdp": -1}, (1, -1, 1)),  # a dict: absent axes are 1
    ({"tensor": 2, "context": 2, "data": -1}, (-1, 1, 2, 2)),
    ((2, -1, 1), (2, -1, 1)),  # a bare tuple, as lnpo.parallel took before
])
def test_the_mesh_is_given_by_named_axes_a_dict_or_the_tuple_form(section, expected):
    assert parallel.mesh_shape_of(section) == expected


def test_named_axes_and_the_tuple_form_resolve_to_the_same_mesh():
    named = parallel.resolve_mesh_shape(parallel.mesh_shape_of(_mesh(data=2, fsdp=-1)), 8)
    assert named == parallel.resolve_mesh_shape(parallel.mesh_shape_of(_mesh(shape=(2, -1, 1))), 8) == (2, 4, 1)


@pytest.mark.parametrize("section, message", [
    (_mesh(shape=(1, -1, 1), tensor=2), r"^config\.mesh\.shape: \(1, -1, 1\) and mesh\.tensor=2 both set the mesh"),
    ({"fsdp": -1, "pipeline": 2}, r"^config\.mesh\.pipeline: not a mesh axis; the axes are data, fsdp, tensor"),
    (_mesh(fsdp="4"), r"^config\.mesh\.fsdp: a mesh axis size must be an integer .*got '4'"),
    (_mesh(tensor=1.5), r"^config\.mesh\.tensor: a mesh axis size must be an integer"),
    (_mesh(shape="1,-1,1"), r"^config\.mesh\.shape: must be a tuple"),
])
def test_bad_mesh_sections_are_one_line_naming_the_field(section, message):
    from lnpo.errors import ConfigError

    with pytest.raises(ConfigError, match=message) as info:
        parallel.mesh_shape_of(section)
    assert "\n" not in str(info.value)
