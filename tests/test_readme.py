"""The README's config reference is generated from the pydantic models and must stay in sync with them."""

from pathlib import Path

from thinktune.config import field_reference

README = Path(__file__).parents[1] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text()
    start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
    assert start in text and end in text
    current = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert current == field_reference().strip(), "regenerate with: python -m thinktune.config --reference"
