"""The docs stay true: their tables are written from the code, their links and paths lead somewhere, their
commands run as typed from a fresh clone, and README stays a short front door."""

import re
from pathlib import Path

import pytest

from stable_diffusion_xl.docs import option_table, parameter_table, route_table, settings_table

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = [README, *PAGES, ROOT / "weights" / "README.md"]  # what README links to, too
ANCHOR = re.compile(r"[^\w\- ]")


def test_the_request_table_on_the_apis_page_is_generated_from_the_dataclass():
    assert parameter_table() in (ROOT / "docs" / "apis.md").read_text()


def test_the_route_table_on_the_apis_page_is_generated_from_the_routes():
    assert route_table() in (ROOT / "docs" / "apis.md").read_text()


def test_the_settings_table_on_the_settings_page_is_generated_from_the_declarations():
    assert settings_table() in (ROOT / "docs" / "settings.md").read_text()


def test_the_option_table_on_the_training_page_is_generated_from_the_declarations():
    assert option_table() in (ROOT / "docs" / "training.md").read_text()


def test_readme_is_a_front_door_and_links_every_docs_page():
    text = README.read_text()
    assert len(text.splitlines()) <= 300, "README.md grew past 300 lines: move the detail into a docs/ page"
    assert PAGES, "no docs/*.md pages"
    for page in PAGES:
        assert f"](docs/{page.name})" in text, f"README.md links no docs/{page.name}"


def _links(text: str) -> list[str]:
    """The targets of the Markdown links and images in `text`, outside code blocks."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.findall(r"\]\(([^)\s]+)\)", prose)


def _anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return {ANCHOR.sub("", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", prose, flags=re.M)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_relative_link_points_at_a_file_that_exists(doc):
    for link in _links(doc.read_text()):
        if re.match(r"[a-z]+:", link):  # https:, mailto: ...
            continue
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        assert target.is_file(), f"{doc.name} links {link!r}: no such file"
        if anchor and target.suffix == ".md":
            assert anchor in _anchors(target.read_text()), f"{doc.name} links {link!r}: no such heading"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_source_path_and_module_the_docs_name_exists(doc):
    """Module and test paths, such as stable_diffusion_xl/generation/engine.py or stable_diffusion_xl.serving.client,
    were moved once already: each must still be there (globs and <placeholders> aside)."""
    text = doc.read_text()
    for path in re.findall(r"\b(?:stable_diffusion_xl|tests|bench)/[\w./*<>-]*", text):
        if not re.search(r"[*<]", path) and not path.startswith("bench/results/"):  # results are not committed
            assert (ROOT / path.rstrip(".")).exists(), f"{doc.name} names {path}, which does not exist"
    for path in re.findall(r"`((?:apis|serving|generation|weights)/\w+\.py)`", text):  # short for the package's
        assert (ROOT / "stable_diffusion_xl" / path).is_file(), f"{doc.name} names {path}, which does not exist"
    for module in re.findall(r"\bstable_diffusion_xl(?:\.\w+)+", text):
        path = ROOT / module.replace(".", "/")
        assert path.with_suffix(".py").is_file() or path.is_dir(), f"{doc.name} names {module}: no such module"


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_python_commands_use_the_projects_venv(doc):
    """A fresh clone has no packages in the system's Python: every command runs .venv/bin/python."""
    text = doc.read_text()
    commands = [line.strip() for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, flags=re.S)
                for line in block.splitlines()]
    assert not [line for line in commands if re.match(r"python3?\s", line)]
    assert not re.findall(r"(?<![/\w])python3? -m stable_diffusion_xl", text)


def _commands() -> dict[str, set[str]]:
    """Each command of `python -m stable_diffusion_xl` and the flags its parser takes."""
    import argparse

    from stable_diffusion_xl.__main__ import command_line

    (subparsers,) = [action for action in command_line()._actions if isinstance(action, argparse._SubParsersAction)]
    return {name: {flag for action in parser._actions for flag in action.option_strings}
            for name, parser in subparsers.choices.items()}


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.relative_to(ROOT).as_posix())
def test_every_flag_a_page_gives_a_command_is_one_the_command_takes(doc):
    commands = _commands()
    for line in doc.read_text().splitlines():
        for command, rest in re.findall(r"stable_diffusion_xl (\S+)(.*)", line):
            if command in commands:
                rest = rest.split("#")[0]  # a shell comment may name another command's flags
                unknown = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", rest)) - commands[command]
                assert not unknown, f"{doc.name}: `{command}` has no {sorted(unknown)}: {line.strip()}"


def test_the_edits_page_names_the_generate_flag_of_each_picture():
    from stable_diffusion_xl.generation.modes import PICTURES

    text = (ROOT / "docs" / "edits.md").read_text()
    for name in PICTURES:
        assert f"--{name}" in _commands()["generate"] and f"`--{name}`" in text, name


def test_the_metrics_page_lists_every_metric_and_api_label_the_replica_emits():
    from stable_diffusion_xl.apis.instill import InstillGrpc
    from stable_diffusion_xl.apis.routes import HTTP_ROUTES
    from stable_diffusion_xl.serving.transport import Refused

    text = (ROOT / "docs" / "metrics.md").read_text()
    emitted = set(re.findall(r'"(sdxl_\w+)"', (ROOT / "stable_diffusion_xl" / "serving" / "metrics.py").read_text()))
    assert set(re.findall(r"^\| `(sdxl_\w+)`", text, flags=re.M)) == emitted
    apis = {dialect.api for methods in HTTP_ROUTES.values() for dialect in methods.values()}
    (listed,) = re.findall(r"`api` is the dialect: (.*?)\. ", text.replace("\n", " "))
    assert set(re.findall(r"`([\w-]+)`", listed)) == apis | {InstillGrpc.api, Refused.api}


# What Ray Serve itself answers, never the model: a lost replica or a failed model (500), a full queue (503); and
# gRPC's codes for those, for a passed deadline, and for bytes that are no CallRequest.
RAY_STATUSES, RAY_CODES = {500, 503}, {"INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED", "UNKNOWN"}


def _answered_by_the_code() -> tuple[set[int], set[str]]:
    """The HTTP statuses and gRPC codes the package answers a caller with: InvalidRequest's (400 unless told, a
    status given as http_status= or third argument), a dialect's error_status, the training refusals'; and every
    grpc.StatusCode it sets."""
    import ast

    statuses, codes = {400}, set()
    for path in (ROOT / "stable_diffusion_xl").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "").endswith("InvalidRequest"):
                given = [kw.value for kw in node.keywords if kw.arg == "http_status"] + node.args[2:3]
                statuses |= {value.value for value in given if isinstance(value, ast.Constant)}
            elif isinstance(node, ast.FunctionDef) and node.name == "error_status":
                statuses |= {value.value for value in ast.walk(node) if isinstance(value, ast.Constant)
                             and isinstance(value.value, int) and value.value >= 400}
            elif isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "REFUSALS":
                statuses |= {value.value for value in node.value.values}
            elif isinstance(node, ast.Attribute) and getattr(node.value, "attr", "") == "StatusCode":
                codes.add(node.attr)
    return statuses, codes


def test_the_retry_table_has_every_status_and_code_a_caller_can_get_and_no_other():
    text = (ROOT / "docs" / "scaling.md").read_text()
    section = text.split("## Retrying calls", 1)[1].split("\n## ", 1)[0]
    rows = [row.split("|")[1:3] for row in section.splitlines() if row.startswith("| ") and "---" not in row][1:]
    documented_codes = {code for first, _ in rows for code in re.findall(r"`([A-Z_]+)`", first)}
    documented_statuses = {int(status) for _, second in rows for status in re.findall(r"\b[45]\d\d\b", second)}
    statuses, codes = _answered_by_the_code()
    assert documented_statuses == statuses | RAY_STATUSES
    assert documented_codes == codes | RAY_CODES


def test_the_reliability_page_names_the_methods_the_routes_serve():
    from stable_diffusion_xl.apis.routes import HTTP_ROUTES

    served = {method for methods in HTTP_ROUTES.values() for method in methods}
    text = (ROOT / "docs" / "reliability.md").read_text().replace("\n  ", " ")
    (named,) = re.findall(r"every HTTP method the routes do not serve \(they serve ([^)]*)\)", text)
    assert set(re.findall(r"[A-Z]{3,}", named)) == served


def test_the_layout_page_names_every_test_folder_and_helper():
    text = (ROOT / "docs" / "layout.md").read_text()
    folders = [path for path in (ROOT / "tests").iterdir() if path.is_dir() and not path.name.startswith((".", "_"))]
    helpers = [path for path in (ROOT / "tests").glob("*.py") if not path.name.startswith("test_")]
    for path in folders:
        assert f"`tests/{path.name}/`" in text, f"layout.md leaves out tests/{path.name}/"
    for path in helpers:
        assert f"`{path.name}`" in text, f"layout.md leaves out tests/{path.name}"


# What a generated table is written from, and the function that writes it (stable_diffusion_xl/docs.py).
TABLE_SOURCES = {"`SCHEDULERS`": "parameter_table", "`TextToImageRequest`": "parameter_table",
                 "`Settings`": "settings_table", "`TrainingOptions`": "option_table", "`HTTP_ROUTES`": "route_table"}


def test_each_where_to_add_entry_that_changes_a_generated_table_says_how_to_regenerate_it():
    text = (ROOT / "docs" / "layout.md").read_text().split("## Where to add", 1)[1].split("\n## ", 1)[0]
    for entry in text.split("\n- ")[1:]:
        for source, table in TABLE_SOURCES.items():
            if source in entry:
                assert table in entry, f"layout.md's {entry.split(':')[0]} changes {table}'s table, and says not how"


def test_every_sdxl_variable_a_page_names_is_a_setting():
    from stable_diffusion_xl.fields import spec_of
    from stable_diffusion_xl.serving.environment import declared
    from stable_diffusion_xl.serving.settings import Settings

    variables = {spec_of(member).variable for member in declared(Settings)}
    for doc in [*DOCS, ROOT / "Makefile", ROOT / "instill.yaml"]:
        named = set(re.findall(r"\bSDXL_[A-Z0-9_]*[A-Z0-9]\b", doc.read_text()))
        assert named <= variables, f"{doc.name} names {sorted(named - variables)}, which no setting reads"
