"""``bench``: benchmarks/dpo_step.py loaded as a module (it is a script, not a package)."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dpo_step", os.path.join(ROOT, "benchmarks", "dpo_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
