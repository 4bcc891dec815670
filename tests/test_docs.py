"""The README and docs/ together document every command, every option of every command and every
output column; the README stays short, its test command is the one CI runs, and every relative
link in the README and docs/ points to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from refine.cli import cli
from refine.io.read import OUTPUT_COLUMNS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
DOCS = "\n".join(page.read_text() for page in PAGES)

# A Markdown link or image: [text](target) or ![alt](target "title"); the target ends at
# whitespace or the closing parenthesis.
LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def relative_links(text: str) -> list[str]:
    """The link targets of `text` that are paths in this repository, outside code."""
    prose = INLINE_CODE.sub("", FENCE.sub("", text))
    targets = [m.group(1) for m in LINK.finditer(prose)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_docs_exist():
    assert (ROOT / "docs" / "README.md").exists()
    assert len(PAGES) > 2


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_docs_document_each_command(command):
    assert f"refine {command}" in DOCS


def command_options(group=cli, prefix="refine"):
    """``(command, option)`` for every long option of every command, subcommands included."""
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from command_options(command, f"{prefix} {name}")
            continue
        for param in command.params:
            for option in param.opts:
                if option.startswith("--") and option != "--help":
                    yield f"{prefix} {name}", option


@pytest.mark.parametrize(("command", "option"), sorted(set(command_options())))
def test_docs_document_each_option(command, option):
    assert f"`{option}" in DOCS, f"neither README.md nor docs/ documents {command} {option}"


@pytest.mark.parametrize("column", OUTPUT_COLUMNS)
def test_docs_document_each_output_column(column):
    assert f"`{column}`" in DOCS


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    command = "./dev/setup.sh && .venv/bin/python -m pytest"
    assert command in README.read_text() and command in ci


def test_readme_stays_short():
    lines = README.read_text().count("\n")
    assert lines < 260, f"README.md has {lines} lines; move the detail into docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_files(page):
    links = relative_links(page.read_text())
    missing = [t for t in links if not (page.parent / t.partition("#")[0]).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_relative_links_finds_links_outside_code():
    text = (
        "See [a](docs/a.md#x), [![img](b.png)](c.png) and [web](https://example.com).\n"
        "`[not](inline.md)`\n```\n[not](fenced.md)\n```\n[anchor](#here)"
    )
    assert relative_links(text) == ["docs/a.md#x", "b.png", "c.png"]
