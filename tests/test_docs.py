"""The documentation stays true: its relative links resolve, and ARCHITECTURE.md's
modules exist.

Links are the front door's promises ("see flows/deploy.py", "the sandbox section"): a
moved module or a renamed heading breaks them silently, so every relative link in
README.md and docs/*.md is checked, anchors against the target's headings as GitHub
spells them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), not inside code spans; the title part is dropped.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def _links(doc: Path) -> list[str]:
    text = CODE_SPAN.sub("", FENCE.sub("", doc.read_text(encoding="utf-8")))
    return [m.group(1) for m in LINK.finditer(text)]


def _anchors(doc: Path) -> set[str]:
    """Heading anchors as GitHub makes them: lower case, punctuation dropped, spaces to -."""
    text = FENCE.sub("", doc.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def _relative(link: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", link)  # http:, https:, mailto:


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path) -> None:
    """Each relative link names a file or folder of the repository, and each #anchor a
    heading of the page it points at."""
    broken = []
    for link in filter(_relative, _links(doc)):
        path, _, anchor = link.partition("#")
        target = (doc.parent / path).resolve() if path else doc
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.name}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def test_the_link_check_sees_links_and_anchors(tmp_path: Path) -> None:
    """The checker itself: it finds links outside code, and reads headings as anchors."""
    page = tmp_path / "page.md"
    page.write_text(
        "# The sandbox: the whole pipeline\n\nSee [x](other.md#a-b) and ![i](pic.png).\n"
        "`[not](a-link)`\n```\n[nor](this)\n```\n",
        encoding="utf-8",
    )
    assert _links(page) == ["other.md#a-b", "pic.png"]
    assert _anchors(page) == {"the-sandbox-the-whole-pipeline"}


ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
# `flows/deploy.py`, `tasks/postgres/`, `kube_emulator/kinds.py`, `.importlinter`, ...
PATH_SPAN = re.compile(r"`([\w.\-]*[/.][\w./\-]*)`")


def _named_paths(text: str) -> set[str]:
    return {p for p in PATH_SPAN.findall(text) if "/" in p or p.endswith((".py", ".yaml"))}


def test_every_module_architecture_names_exists() -> None:
    """Each file or folder ARCHITECTURE.md names in backticks exists in the repository."""
    named = _named_paths(ARCHITECTURE.read_text(encoding="utf-8"))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert named, "the page names no modules: the pattern no longer matches it"
    assert not missing, f"docs/ARCHITECTURE.md names what does not exist: {missing}"


def test_architecture_names_every_flow_and_task_module() -> None:
    """No flow or task module is left off the map: a new one must be placed on it."""
    named = _named_paths(ARCHITECTURE.read_text(encoding="utf-8"))
    modules = [
        p.relative_to(ROOT).as_posix()
        for folder in ("flows", "tasks")
        for p in (ROOT / folder).glob("*.py")
        if p.name != "__init__.py"
    ]
    packages = [f"{p.relative_to(ROOT).as_posix()}/" for p in (ROOT / "tasks").glob("*/")]
    unnamed = sorted(m for m in modules + packages if m not in named and "__pycache__" not in m)
    assert not unnamed, f"docs/ARCHITECTURE.md does not place: {unnamed}"
