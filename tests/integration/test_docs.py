"""The documentation: the MkDocs site builds with ``--strict``, README.md stays a front page and
shows the very test command that CI (``.ci/run``) runs, and its links into ``docs/`` resolve.

The site build needs mkdocs-material, which the ``test`` extra pulls in (through ``docs``); the
build is skipped, with the reason, only where it is not installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
CI_RUN = REPO_ROOT / ".ci" / "run"
MAX_README_LINES = 300

# [text](target) with a relative target: no scheme, no leading '#'.
LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)\s]+)\)")


def ci_test_command() -> str:
    """The ``python3 -m pip install ... && python3 -m pytest -q`` line of ``.ci/run``."""
    commands = [
        line.strip()
        for line in CI_RUN.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("python3 -m pip install") and "&& python3 -m pytest -q" in line
    ]
    assert len(commands) == 1, f"{CI_RUN} should hold exactly one install-and-test line, found {commands}"
    return commands[0]


def test_readme_is_a_front_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move the detail into a page under docs/"
    )


def test_readme_shows_the_ci_test_command() -> None:
    command = ci_test_command()
    readme_lines = [line.strip() for line in README.read_text(encoding="utf-8").splitlines()]
    assert command in readme_lines, (
        f"README.md must show, on a line of its own, exactly the test command that .ci/run runs:\n  {command}"
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built by ``mkdocs build --strict`` (from the repository root, as snippets expect)."""
    reason = "mkdocs-material is not installed: pip install -e '.[test]' (or '.[docs]') installs it"
    pytest.importorskip("mkdocs", reason=reason)
    pytest.importorskip("material", reason=reason)
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "--config-file", str(REPO_ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_docs_build_strict(site: Path) -> None:
    assert (site / "index.html").is_file()
    # Every page under docs/ is built (a page missing from the nav fails --strict through
    # validation.omitted_files in mkdocs.yml).
    for page in sorted((REPO_ROOT / "docs").rglob("*.md")):
        rel = page.relative_to(REPO_ROOT / "docs").with_suffix("")
        built = site / "index.html" if rel.name == "index" else site / rel / "index.html"
        assert built.is_file(), f"docs/{page.relative_to(REPO_ROOT / 'docs')} was not built into {built}"


def test_readme_links_resolve(site: Path) -> None:
    """README's relative links name files that exist; links into docs/ name headings that exist."""
    broken = []
    for target in LINK.findall(README.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        if not (REPO_ROOT / path).exists():
            broken.append(f"{target}: no file {path}")
            continue
        if anchor and path.startswith("docs/") and path.endswith(".md"):
            rel = Path(path).relative_to("docs").with_suffix("")
            html = site / "index.html" if rel.name == "index" else site / rel / "index.html"
            if f'id="{anchor}"' not in html.read_text(encoding="utf-8"):
                broken.append(f"{target}: {path} has no heading #{anchor}")
    assert not broken, "README.md links that do not resolve:\n  " + "\n  ".join(broken)
