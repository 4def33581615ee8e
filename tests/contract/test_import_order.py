"""``import albu_defects`` registers every transform with albumentations in every import order (issue 14).

The package imports its public names lazily (so the bank and the command line skip albumentations
and torch), yet ``A.load`` of a saved pipeline must find our classes whichever of albumentations and
albu_defects is imported first, and without touching any albu_defects attribute. Each order runs in a
fresh interpreter (the orders only differ there); the suite also runs under AlbumentationsX.
"""

from __future__ import annotations

import json
import subprocess
import sys

import albumentations as A
import pytest

import albu_defects as ad

#: Every exported albumentations class, by its serialized name.
pytestmark = pytest.mark.slow  # a fresh interpreter per import order
REGISTERED = sorted(
    getattr(ad, name).get_class_fullname()
    for name in ad.__all__
    if isinstance(getattr(ad, name), type) and issubclass(getattr(ad, name), (A.BasicTransform, A.BaseCompose))
)

ORDERS = {
    "albumentations first": "import albumentations\nimport albu_defects",
    "albu_defects first": "import albu_defects\nimport albumentations",
    "the bank first": "import albu_defects.bank\nimport albumentations",
    "a transform module first": "import albu_defects.methods.cropliq",
    "a public name first": "from albu_defects import CutPaste",
    "the albumentations bridge first": "import albu_defects.core.transform",
    "the torch ops first": "import albu_defects.pytorch",
}

CHECK = """
import json, sys
{imports}
import albumentations as A
import numpy as np
from albumentations.core.serialization import SERIALIZABLE_REGISTRY

names = json.loads(sys.argv[1])
pipeline = A.load(sys.argv[2], data_format="yaml")
pipeline.set_random_seed(0)
out = pipeline(image=np.full((48, 48), 100, np.uint8))
print("REPORT " + json.dumps({{
    "missing": [n for n in names if n not in SERIALIZABLE_REGISTRY],
    "loaded": [type(t).__name__ for t in pipeline.transforms],
    "changed": bool((out["image"] != 100).any()),
    "finders left": [type(f).__name__ for f in sys.meta_path if type(f).__module__ == "albu_defects._registration"],
    "albumentations loader": type(A.__spec__.loader).__name__,
}}))
"""


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("import_order") / "pipeline.yaml"
    A.save(A.Compose([ad.CutPaste(p=1.0), ad.CropLiq(region="image", p=1.0)]), str(path), data_format="yaml")
    return str(path)


@pytest.fixture(scope="module")
def reports(saved_pipeline) -> dict[str, dict]:
    """Every order in its own fresh interpreter, run side by side."""
    running = {
        order: subprocess.Popen(
            [sys.executable, "-c", CHECK.format(imports=imports), json.dumps(REGISTERED), saved_pipeline],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for order, imports in ORDERS.items()
    }
    out = {}
    for order, process in running.items():
        stdout, stderr = process.communicate()
        line = next((x for x in stdout.splitlines() if x.startswith("REPORT ")), None)
        out[order] = json.loads(line.removeprefix("REPORT ")) if line else {"error": stderr[-3000:]}
    return out


def test_every_exported_transform_is_checked():
    assert {"albu_defects.ContextMix", "albu_defects.CutPaste", "albu_defects.BatchCompose"} <= set(REGISTERED)


@pytest.mark.parametrize("order", list(ORDERS))
def test_a_load_finds_every_transform_in_this_import_order(reports, order):
    report = reports[order]
    assert "error" not in report, report.get("error")
    assert report["missing"] == [], f"not registered after {order!r}: {report['missing']}"
    assert report["loaded"] == ["CutPaste", "CropLiq"] and report["changed"]
    # the one-shot hook is gone and albumentations keeps its own loader
    assert report["finders left"] == [] and report["albumentations loader"] != "_NotifyingLoader"
