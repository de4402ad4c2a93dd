"""The docs fit on a screen and point at things that exist.

README.md stays short (what guardian is, the two commands, a tour, links); docs/ holds the rest, one page
per concern. Every relative link (and its #anchor) resolves, every repository path the docs name exists,
every key of config.example.toml is in docs/configuration.md, and every refusal code is in docs/api.md.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from guardian.gateway.refusal import CODES

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 150
PAGE_MAX_LINES = 160  # one sitting
# Named in the docs as what the operator creates; never committed (.gitignore).
NOT_COMMITTED = {"deploy/compose/secrets/"}
SECRET_KEYS = ("admin_token", "api_key", "api_secret")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def slug(heading: str) -> str:
    """The #anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {slug(m[1]) for m in re.finditer(r"^#{1,6} (.+)$", text, re.MULTILINE)}


def prose(page: Path) -> str:
    """The page without its fenced code blocks (shell comments there are not headings or links)."""
    return re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)


def test_the_readme_fits_on_a_screen_or_two_and_has_the_two_commands_first() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, len(lines)
    first_screen = "\n".join(lines[:30])
    assert "make run" in first_screen and "make test" in first_screen
    assert "exec make test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("page", DOCS, ids=page_id)
def test_each_docs_page_is_short_enough_to_read_in_one_sitting(page: Path) -> None:
    lines = page.read_text().splitlines()
    assert len(lines) <= PAGE_MAX_LINES, len(lines)
    assert lines[0].startswith("# "), "a page starts with its title"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", README.read_text()))
    assert linked == {page_id(page) for page in DOCS}


def broken_links(page: Path) -> list[str]:
    """Every relative link of `page` whose file, or whose #anchor in that file, does not exist."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)
    return broken


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    assert broken_links(page) == []


def test_the_link_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## The daemon: `guardian run`\n")
    page.write_text(
        "# Page\n[a](other.md) [b](other.md#the-daemon-guardian-run) [c](gone.md) [d](other.md#nope) "
        "[e](#page) [f](https://example.org/x)\n```sh\n[g](in-code.md)\n```\n"
    )
    assert broken_links(page) == ["gone.md", "other.md#nope"]


def repository_paths(text: str) -> set[str]:
    """Every word in a code span that names a path in this repository (`bench/soak.py`, `deploy/`...)."""
    tops = {entry.name for entry in ROOT.iterdir() if not entry.name.startswith(".") or entry.name == ".ci"}
    tops -= {"build", "dist"}
    found = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for word in span.split():
            word = word.strip(",;:()'\"")
            if "/" in word and word.split("/")[0] in tops and not re.search(r"[{}$<>=]", word):
                found.add(word)
    return found


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_repository_path_the_docs_name_exists(page: Path) -> None:
    named = repository_paths(page.read_text()) - NOT_COMMITTED
    missing = sorted(path for path in named if not any(ROOT.glob(path.rstrip("/"))))
    assert missing == [], f"{page_id(page)} names what is not in the repository: {missing}"


def test_the_path_reader_sees_paths_in_spans_and_commands() -> None:
    text = (
        "`guardian/server.py`, `rules.py`, `.venv/bin/python bench/soak.py` and `/etc/guardian/x` `deploy/`"
    )
    assert repository_paths(text) == {"guardian/server.py", "bench/soak.py", "deploy/"}


def config_keys(table: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted keys of a configuration, arrays of tables flattened, per-symbol tables as <SYMBOL>."""
    keys = set()
    for key, value in table.items():
        name = key
        if prefix.endswith("guard.symbol."):
            name = "<SYMBOL>"
        for secret in SECRET_KEYS:
            if key in (f"{secret}_env", f"{secret}_file"):
                name = secret
        dotted = prefix + name
        items = value if isinstance(value, list) and value and isinstance(value[0], dict) else [value]
        if isinstance(items[0], dict):
            for item in items:
                keys |= config_keys(item, dotted + ".")
        else:
            keys.add(dotted)
    return keys


def test_every_key_of_the_example_configuration_is_documented() -> None:
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    keys = config_keys(example)
    assert {
        "server.admin_token",
        "accounts.clients.rate_budget",
        "accounts.guard.symbol.<SYMBOL>.max_notional",
    } <= keys
    page = (ROOT / "docs" / "configuration.md").read_text()
    documented = set()
    for row in re.findall(r"^\| (`[^|]+`) \|", page, re.MULTILINE):
        spans = re.findall(r"`([^`]+)`", row)
        base = spans[0].rsplit(".", 1)[0]  # `a.b.x`, `.y` documents a.b.x and a.b.y
        documented |= {base + span if span.startswith(".") else span for span in spans}
    assert sorted(keys - documented) == []


def test_every_refusal_code_is_in_the_api_page() -> None:
    page = (ROOT / "docs" / "api.md").read_text()
    assert [code for code in CODES if f"`{code}`" not in page] == []
