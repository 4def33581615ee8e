"""The lazy top level (issue 14, sec. 3): the same public names, imported on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import albu_defects


def test_every_public_name_resolves_and_is_listed_by_dir():
    listed = dir(albu_defects)
    for name in albu_defects.__all__:
        assert name in listed, name
        assert getattr(albu_defects, name) is not None, name
    assert albu_defects.ContextMix is albu_defects.methods.contextmix.ContextMix
    assert albu_defects.paste is albu_defects.blending.paste


def test_an_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        albu_defects.no_such_name
    assert not hasattr(albu_defects, "no_such_name")


def test_subpackages_are_reachable_as_attributes_without_importing_them_first():
    code = (
        "import albu_defects, sys\n"
        "assert 'albu_defects.data' not in sys.modules\n"
        "print(albu_defects.data.MAGNETIC_TILE_CLASSES[0], 'albumentations' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Blowhole", "False"]


@pytest.mark.slow
def test_import_albu_defects_imports_neither_albumentations_nor_torch_until_a_name_needs_them():
    code = (
        "import sys, albu_defects\n"
        "before = sorted({'albumentations', 'torch'} & set(sys.modules))\n"
        "albu_defects.load_samples()\n"
        "middle = sorted({'albumentations'} & set(sys.modules))\n"
        "albu_defects.CutPaste\n"
        "print(before, middle, 'albumentations' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] [] True"


def test_star_import_gives_every_public_name():
    namespace: dict = {}
    exec("from albu_defects import *", namespace)
    assert set(albu_defects.__all__) <= set(namespace)
