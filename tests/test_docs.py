"""README is written from the code: every request field and every setting appears in it."""

import re
from pathlib import Path

from stable_diffusion_xl.request import parameter_table

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_has_the_request_table_generated_from_the_dataclass():
    assert parameter_table() in README


def test_readme_documents_every_setting():
    variables = set(re.findall(r'"(SDXL_[A-Z_]+)"', (ROOT / "stable_diffusion_xl" / "settings.py").read_text()))
    assert variables and all(f"`{name}`" in README for name in variables)
