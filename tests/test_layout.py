"""The package's shape, as docs/layout.md draws it: imports point down the layers and never in a circle (type-checking
and function-level imports counted), fields are read through their declarations rather than their annotations,
and the generation modes are named in one module."""

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "stable_diffusion_xl"
# Bottom to top: a module imports only from its own layer and those below it.
LAYERS = ["fields", "weights", "generation", "training", "serving", "apis", "__main__", "docs"]


def modules() -> dict[str, Path]:
    return {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): path
            for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path) -> set[str]:
    """The package's modules that `name` imports, wherever in the file, resolved to module names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {candidate for candidate in candidates if candidate in modules()}
    return found - {name}


def layer(name: str) -> int:
    part = name.split(".")[1] if "." in name else "fields"
    return LAYERS.index(part) if part in LAYERS else -1  # the package's __init__: docs only


def test_imports_point_down_the_layers():
    for name, path in modules().items():
        for target in imported(name, path):
            assert layer(target) <= layer(name), f"{name} imports {target}, a layer above it"


def test_no_module_imports_itself_through_others():
    graph = {name: imported(name, path) for name, path in modules().items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for target in graph[start] - seen:
            seen.add(target)
            if target == goal or reaches(target, goal, seen):
                return True
        return False

    circles = [name for name in graph if not name.endswith("__init__") and reaches(name, name, set())]
    assert not circles, f"import circles through {circles}"


def test_fields_are_read_through_their_declarations_not_their_annotations():
    for name, path in modules().items():
        matches = re.findall(r"\.type\s*(?:==|!=|in\b)|\.type\.(?:startswith|endswith|removeprefix)", path.read_text())
        assert not matches, f"{name} reads a field's annotation: {matches}"


def test_the_generation_modes_are_named_in_one_module():
    for name, path in modules().items():
        if name == "stable_diffusion_xl.generation.modes":
            continue
        code = ast.parse(path.read_text())
        strings = {node.value for node in ast.walk(code) if isinstance(node, ast.Constant)
                   and isinstance(node.value, str)}
        docstrings = {ast.get_docstring(node) for node in ast.walk(code)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))}
        assert not (strings - docstrings) & {"text-to-image", "image-to-image", "inpainting"}, name


def test_every_route_answers_one_kind_of_call_and_says_what_it_is():
    from stable_diffusion_xl.apis.routes import HTTP_ROUTES
    from stable_diffusion_xl.serving.transport import GenerationCall, StatusCall, TrainingCall

    for path, methods in HTTP_ROUTES.items():
        for method, dialect in methods.items():
            kinds = [kind for kind in (StatusCall, TrainingCall, GenerationCall) if issubclass(dialect, kind)]
            assert len(kinds) == 1 and dialect.title, f"{method} {path}: {dialect.__name__} is of kinds {kinds}"
