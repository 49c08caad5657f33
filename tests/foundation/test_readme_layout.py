"""The README's Layout section matches the tree: every folder it names exists, and every tracked folder is named."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COLUMN = 22  # where the Layout block's descriptions start


def layout_entries() -> dict[str, str]:
    """The Layout block of the README: {path column: its description, continuation lines joined}."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme[readme.index("## Layout") :].split("```")[1]
    entries: dict[str, str] = {}
    path = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            path = line[:COLUMN].strip()
            entries[path] = ""
        entries[path] += " " + line[COLUMN:].strip()
    return entries


def folders_outside_parentheses(text: str) -> set[str]:
    """The ``name/`` words of a description that are not inside parentheses (those are sub-folders of a name)."""
    names, depth, word = set(), 0, ""
    for char in text + " ":
        if char == "/" and depth == 0 and word:
            names.add(word)
        depth += {"(": 1, ")": -1}.get(char, 0)
        word = word + char if char.isalnum() or char == "_" else ""
    return names


def tracked_files() -> list[str]:
    return subprocess.run(
        ["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()


def is_git_ignored(folder: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", f"{folder}/"], cwd=REPO_ROOT).returncode == 0


def test_every_named_top_level_folder_exists_or_is_a_git_ignored_download_folder():
    named = {part.strip().split("/")[0] for path in layout_entries() for part in path.split(",")}
    tracked = {path.split("/")[0] for path in tracked_files() if "/" in path}
    assert named >= {"prismatic", "vggt", "tests"}
    assert not [name for name in named if name not in tracked and not is_git_ignored(name)]


def test_every_tracked_top_level_folder_is_named():
    named = {part.strip().split("/")[0] for path in layout_entries() for part in path.split(",")}
    tracked = {path.split("/")[0] for path in tracked_files() if "/" in path}
    assert sorted(tracked - named) == []


def test_the_prismatic_subpackages_named_are_the_tracked_ones():
    named = folders_outside_parentheses(layout_entries()["prismatic/"])
    tracked = {path.split("/")[1] for path in tracked_files() if path.startswith("prismatic/") and path.count("/") >= 2}
    assert "models" in named
    assert sorted(named ^ tracked) == []


def test_the_parser_reads_folder_names_outside_parentheses_only():
    text = "models/ (heads, datasets/), vla/ (prompt), x.extern.hf paths"
    assert folders_outside_parentheses(text) == {"models", "vla"}


def test_every_relative_link_of_the_readme_and_the_reference_pages_resolves():
    documents = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs" / "reference").glob("*.md"))]
    links = [
        (document, target.split("#")[0])
        for document in documents
        for target in re.findall(r"\]\(([^)]+)\)", document.read_text())
        if not target.startswith(("http://", "https://", "#"))
    ]
    assert len(links) > 20
    assert [(document.name, target) for document, target in links if not (document.parent / target).exists()] == []
