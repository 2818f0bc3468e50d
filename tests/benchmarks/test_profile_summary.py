"""benchmarks/profile_summary.py counts each compiled dot's FLOPs from XLA:CPU's optimized HLO."""

import importlib.util
import os

import jax
import jax.numpy as jnp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module():
    spec = importlib.util.spec_from_file_location("profile_summary", os.path.join(ROOT, "benchmarks",
                                                                                  "profile_summary.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dot_flops_of_the_optimized_hlo_are_2mkn_per_product():
    ps = _module()

    def f(a, b, c):  # [24, 16] x [16, 8], then a batched [3, 8, 5] x [3, 5, 7]
        return jnp.sum(a @ b) + jnp.sum(jnp.einsum("bij,bjk->bik", c[0], c[1]))

    args = (jnp.ones((24, 16)), jnp.ones((16, 8)), (jnp.ones((3, 8, 5)), jnp.ones((3, 5, 7))))
    hlo = jax.jit(f).lower(*args).compile().as_text()
    computations, calls, instructions = ps.parse_hlo(hlo)
    total = sum(ps.dot_flops(lines)[0] for lines in computations.values())
    assert total == 2 * 24 * 16 * 8 + 2 * 3 * 8 * 5 * 7
    assert any(name in instructions for name in calls)  # the dots' fusions are named as the trace names them
