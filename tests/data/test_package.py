"""lnpo.data's public names resolve on first use; the layouts alone do not load the datasets stack."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lnpo.data


def test_every_public_name_resolves():
    for name in lnpo.data.__all__:
        assert getattr(lnpo.data, name) is not None, name
    assert set(lnpo.data.__all__) <= set(dir(lnpo.data))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        lnpo.data.nope  # noqa: B018


def test_layouts_import_without_the_datasets_stack():
    code = ("import sys; from lnpo.data.layouts import layout_pairs; import lnpo.train.steps; "
            "print(sorted(m for m in ('datasets', 'pyarrow', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
