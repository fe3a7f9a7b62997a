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
