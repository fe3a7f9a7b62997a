"""README is written from the code: the request fields and the settings tables are generated."""

from pathlib import Path

from stable_diffusion_xl.docs import parameter_table, settings_table

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_readme_has_the_request_table_generated_from_the_dataclass():
    assert parameter_table() in README


def test_readme_has_the_settings_table_generated_from_the_declarations():
    assert settings_table() in README
