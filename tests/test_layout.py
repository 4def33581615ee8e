"""The package layout: imports flow one way (tools -> pytorch -> methods -> blending, bank -> core, data),
no import cycles, the bank imports neither albumentations nor torch, and the public names of 0.1.0 stay."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import albu_defects

PACKAGE = Path(albu_defects.__file__).parent
#: Layer of each subpackage: a module may import its own subpackage or lower layers only.
LAYERS = {"core": 0, "data": 0, "blending": 1, "bank": 1, "methods": 2, "pytorch": 3, "tools": 4}

#: ``albu_defects.__all__`` of 0.1.0 (commit 72696d0): every name must stay importable.
NAMES_0_1_0 = {
    "ANOMALY_LABEL_KEY", "ANOMALY_MASK_KEY", "CLASS_VECTOR_KEY", "IS_ALBUMENTATIONS_X", "MAGNETIC_TILE_CLASSES",
    "BatchCompose", "ContextMix", "__version__", "AnomalySynthesis", "bank_reference", "ClassWeights",
    "color_jitter", "CropLiq", "CutPaste", "DefectBank", "DefectBankWarning", "DefectEntry", "DefectTransform",
    "DynamicLabelInjection", "GuidedCropPaste", "InjectDefect", "load_samples", "local_contrast",
    "losses_to_probabilities", "paste", "poisson_blend", "resolve_bank", "Sample", "sample_color_jitter",
    "synthesize", "synthesize_to_folder",
}  # fmt: skip
PYTORCH_NAMES_0_1_0 = {
    "ContextMix", "ContextMixCollate", "DLICollate", "ScratchBuffers", "distributed_rank", "find_pipelines",
    "paste_resized_batch", "reseed_pipeline", "worker_init_fn", "worker_seed",
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, top_level_only: bool) -> set[str]:
    """The albu_defects modules ``path`` imports (relative imports resolved; ``from pkg import mod`` -> pkg.mod)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("albu_defects")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("albu_defects"):
                continue
            for alias in node.names:  # a submodule imported by name counts as that module
                candidate = f"{target}.{alias.name}"
                is_module = (PACKAGE.parent / Path(*candidate.split("."))).with_suffix(".py").is_file() or (
                    PACKAGE.parent / Path(*candidate.split(".")) / "__init__.py"
                ).is_file()
                found.add(candidate if is_module else target)
    return found


def subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_flow_downwards(path):
    own = subpackage(module_name(path))
    for target in imported_modules(path, top_level_only=False):
        other = subpackage(target)
        if other is None:  # the top level (registers every transform): only the tools, above everything, may
            assert own == "tools", f"{module_name(path)} imports the albu_defects top level; import the subpackage"
            continue
        assert other == own or LAYERS[other] < LAYERS[own], (
            f"{module_name(path)} ({own}, layer {LAYERS[own]}) imports {target} ({other}, layer {LAYERS[other]}): "
            "imports must flow tools -> pytorch -> methods -> blending, bank -> core, data"
        )


def test_no_import_cycles():
    graph = {module_name(p): imported_modules(p, top_level_only=True) for p in PACKAGE.rglob("*.py")}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target == module or target not in graph:
                continue
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [module, target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_bank_imports_neither_albumentations_nor_torch():
    # albu_defects/__init__.py imports its public names lazily (issue 14)
    code = "import sys, albu_defects.bank; print(sorted({'albumentations', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_bank_modules_themselves_import_neither_albumentations_nor_torch():
    for path in sorted((PACKAGE / "bank").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            for name in names:
                assert name.split(".")[0] not in ("albumentations", "torch"), f"{path.name} imports {name}"
                if name.startswith("albu_defects."):
                    assert subpackage(name) in ("core", "data", "bank"), f"{path.name} imports {name}"
    core_imports = {t for p in (PACKAGE / "bank").glob("*.py") for t in imported_modules(p, False)}
    assert "albu_defects.core.transform" not in core_imports  # the albumentations bridge


def test_public_names_of_0_1_0_are_kept():
    assert set(albu_defects.__all__) >= NAMES_0_1_0
    for name in albu_defects.__all__:
        assert hasattr(albu_defects, name), name


def test_pytorch_names_of_0_1_0_are_kept():
    pytest.importorskip("torch")
    import albu_defects.pytorch as pt

    for name in PYTORCH_NAMES_0_1_0 - {"ContextMix"}:
        assert name in pt.__all__ and hasattr(pt, name), name
    with pytest.warns(DeprecationWarning, match="TensorContextMix"):
        assert pt.ContextMix is pt.TensorContextMix  # renamed; the old name warns
