"""The ```python blocks of README.md and docs/*.md run as pasted: the documentation's code must not rot."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks(path: pathlib.Path) -> list[str]:
    return BLOCK.findall(path.read_text())


WITH_CODE = [p for p in DOCS if python_blocks(p)]


def test_the_readme_has_a_library_example():
    assert ROOT / "README.md" in WITH_CODE


@pytest.mark.parametrize("path", WITH_CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run_as_pasted(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks may write files (e.g. save_hf)
    scope: dict = {"__name__": "__doc_example__"}
    for i, source in enumerate(python_blocks(path)):
        exec(compile(source, f"{path.name}[python block {i}]", "exec"), scope)  # noqa: S102


def test_documentation_links_resolve():
    """Every markdown link (relative to its file) and every docs/<file>.md the README and docs name exists in
    the checkout; nothing points outside it (a fresh clone has no ../shared)."""
    missing = []
    for path in DOCS:
        text = path.read_text()
        targets = [path.parent / t for t in re.findall(r"\]\(([^)#\s]+)", text) if "://" not in t]
        targets += [ROOT / t for t in re.findall(r"\b(docs/[\w.-]+\.md)\b", text)]
        missing += [f"{path.relative_to(ROOT)} -> {t}" for t in targets
                    if not t.exists() or ROOT.resolve() not in t.resolve().parents]
        if "shared/docs" in text:
            missing.append(f"{path.relative_to(ROOT)} names shared/docs")
    assert not missing, missing
