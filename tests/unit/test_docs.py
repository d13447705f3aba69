"""The documents, checked like code: the README and docs/ render as CommonMark without a
code block swallowing what follows, their links and pictures point at what exists, the
commands they show are ones the CLI has, the variables they name are settings, and every
page can be reached from the README.

Each check is a function from a document's text to the problems it finds, so each is
also shown catching a planted breakage (a check that cannot fail proves nothing)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

from relay.cli import main
from relay.settings import TEST_PREFIX, TEST_VARIABLES, example_file

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
#: What people read, and what these checks cover.
PAGES = [README, *DOCS, ROOT / "CHANGELOG.md"]


def tokens(text: str) -> list[Token]:
    return MarkdownIt("commonmark").parse(text)


def inline_tokens(text: str) -> list[Token]:
    return [child for token in tokens(text) if token.children for child in token.children]


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# --- (a) rendering: no code block swallows what follows ------------------------------------

HEADING = re.compile(r" {0,3}#{1,6}(?: |$)")
FENCE = re.compile(r" {0,3}(```|~~~)")


def intended_headings(text: str) -> list[int]:
    """Lines (0-based) the author meant as headings: ATX headings outside fences, where a
    fence ends at any line starting with three backticks, as the author would read it,
    and as CommonMark does not when text follows them."""
    inside, found = False, []
    for number, line in enumerate(text.splitlines()):
        if FENCE.match(line):
            inside = not inside
        elif not inside and HEADING.match(line):
            found.append(number)
    return found


def rendering_problems(text: str) -> list[str]:
    problems = []
    parsed, lines = tokens(text), text.splitlines()
    rendered = {token.map[0] for token in parsed if token.type == "heading_open" and token.map}
    for line in intended_headings(text):
        if line not in rendered:
            problems.append(f"line {line + 1}: a heading that does not render as one (swallowed by a block?)")
    for token in parsed:
        where = f"line {token.map[0] + 1}" if token.map else "?"
        if token.type == "code_block":
            problems.append(f"{where}: an indented code block (the documents fence their code)")
        if token.type != "fence":
            continue
        if token.map and not FENCE.match(lines[token.map[1] - 1]):
            problems.append(f"{where}: a fence that never closes runs to the end")
        for content in token.content.splitlines():
            if FENCE.match(content):
                problems.append(f"{where}: a fence holds a fence line {content[:40]!r}: it never closed")
            elif token.info not in ("markdown", "md") and re.match(r"#{2,6} \S", content):
                problems.append(f"{where}: a fence holds a heading {content[:40]!r}")
    return problems


#: Code lines wider than this scroll sideways on GitHub.
CODE_WIDTH = 90


def exempt_wide_lines() -> set[str]:
    # The README's test command is .ci/run's last line word for word (test_deploy.py): it
    # cannot wrap.
    ci = (ROOT / ".ci" / "run").read_text().splitlines()[-1]
    return {ci.replace("pip install -q ", "pip install ")}


def width_problems(text: str) -> list[str]:
    exempt = exempt_wide_lines()
    return [f"line {token.map[0] + 1}: {len(line)} characters in a code block: {line[:40]!r}..."
            for token in tokens(text) if token.type == "fence"
            for line in token.content.splitlines() if len(line) > CODE_WIDTH and line not in exempt]


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_page_renders_as_written(page):
    assert rendering_problems(page.read_text()) == []


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_code_line_needs_sideways_scrolling(page):
    assert width_problems(page.read_text()) == []


def test_the_rendering_check_catches_a_fence_that_runs_on():
    # The README once had this: a closing fence with text after it does not close.
    text = ("```sh\ncurl https://your-relay\n``` `relay check` validates it.\n\n"
            "## One URL for everything\n\nText.\n\n```sh\nrelay secret\n```\n")
    found = rendering_problems(text)
    assert any("does not render as one" in p for p in found)
    assert any("holds a fence line" in p for p in found)
    assert rendering_problems(text.replace("``` `relay", "```\n\n`relay")) == []


def test_the_rendering_check_catches_an_indented_block_an_open_fence_and_a_wide_line():
    assert rendering_problems("Text.\n\n    relay serve\n") != []
    assert rendering_problems("Text.\n\n```sh\nrelay serve\n\nMore text.\n") != []
    assert width_problems("```sh\n" + "relay serve " + "x" * 90 + "\n```\n") != []


# --- (b) links and pictures point at files and headings that exist --------------------------


def slug(heading: str, seen: dict[str, int]) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered."""
    base = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    count = seen.get(base, 0)
    seen[base] = count + 1
    return base if count == 0 else f"{base}-{count}"


def anchors(text: str) -> set[str]:
    found, seen, parsed = set(), {}, tokens(text)
    for index, token in enumerate(parsed):
        if token.type == "heading_open":
            inline = parsed[index + 1]
            words = "".join(c.content for c in inline.children or () if c.type in ("text", "code_inline"))
            found.add(slug(words, seen))
    return found


HTML_TARGET = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)="([^"]*)\"""")


def targets(text: str) -> list[str]:
    """Every link and picture: Markdown's, and those of HTML inside it."""
    found = []
    for token in tokens(text):
        if token.type == "html_block":
            found += HTML_TARGET.findall(token.content)
        for child in token.children or ():
            if child.type == "link_open":
                found.append(str(child.attrs["href"]))
            elif child.type == "image":
                found.append(str(child.attrs["src"]))
            elif child.type == "html_inline":
                found += HTML_TARGET.findall(child.content)
    return found


def link_problems(page: Path, text: str) -> list[str]:
    problems = []
    for target in targets(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if path and not file.exists():
            problems.append(f"{target}: no such file")
        elif fragment and file.suffix == ".md":
            text_there = text if file == page else file.read_text()
            if fragment not in anchors(text_there):
                problems.append(f"{target}: no such heading")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_link_and_picture_points_at_what_exists(page):
    assert link_problems(page, page.read_text()) == []


def test_the_link_check_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## The code's rules\n")
    page = tmp_path / "page.md"
    good = "# Page\n\n[a](other.md#the-codes-rules) [b](#page) ![c](other.md)\n"
    assert link_problems(page, good) == []
    bad = '[a](gone.md) [b](other.md#nowhere) [c](#nowhere)\n\n<img src="gone.png">\n'
    assert len(link_problems(page, bad)) == 4


# --- (c) the commands shown are the CLI's, the variables named are settings ----------------

SHELL = ("sh", "bash", "console", "shell")
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
#: A `relay` command, possibly after a prompt, variables set for it, or a platform's runner.
COMMAND = re.compile(r"(?:\$ )?(?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+)*(?:heroku run\s+)?relay(?:\s|$)")
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>", "&"}


def commands(text: str) -> list[str]:
    """Every `relay` command the text shows: lines of shell fences (continuations joined),
    and inline code that starts with one."""
    found = []
    for token in tokens(text):
        if token.type == "fence" and token.info.split(" ")[0] in SHELL:
            for line in token.content.replace("\\\n", " ").splitlines():
                if COMMAND.match(line.strip()):
                    found.append(line.strip())
    for child in inline_tokens(text):
        if child.type == "code_inline" and COMMAND.match(child.content):
            found.append(child.content)
    return found


def command_problem(line: str) -> str | None:
    """Why `line` is not a command the CLI has, or None."""
    words = shlex.split(line, comments=True)
    words = words[1:] if words[:1] == ["$"] else words
    while words and ENV_ASSIGNMENT.match(words[0]):
        words = words[1:]
    if words[:2] == ["heroku", "run"]:
        words = words[2:]
    command: click.Command = main
    arguments: list[click.Argument] = []
    words = words[1:]  # "relay"
    while words:
        word = words.pop(0)
        if word in SHELL_OPERATORS or word.startswith(">"):
            break
        if word.startswith("-"):
            name, has_value, value = word.partition("=")
            if name == "--help":
                continue
            options = {opt: p for p in command.params if isinstance(p, click.Option) for opt in p.opts}
            if name not in options:
                return f"{command.name} has no option {name}"
            option = options[name]
            if option.is_flag or option.count:
                continue
            if not has_value:
                if not words:  # prose naming the option, as `relay replay --destination`
                    break
                value = words.pop(0)
            if isinstance(option.type, click.Choice) and value not in option.type.choices:
                return f"{name} takes {'|'.join(map(str, option.type.choices))}, not {value}"
        elif isinstance(command, click.Group):
            if word not in command.commands:
                return f"{command.name} has no command {word}"
            command = command.commands[word]
            arguments = [p for p in command.params if isinstance(p, click.Argument)]
        elif not arguments:
            return f"{command.name} takes no argument {word}"
        else:
            argument = arguments[0] if arguments[0].nargs == -1 else arguments.pop(0)
            if isinstance(argument.type, click.Choice) and word not in argument.type.choices:
                return f"{command.name} takes {'|'.join(map(str, argument.type.choices))}, not {word}"
    return None


def command_problems(text: str) -> list[str]:
    return [f"{line}: {problem}" for line in commands(text) if (problem := command_problem(line))]


@pytest.mark.parametrize("page", [README, *DOCS], ids=page_id)
def test_every_command_shown_is_one_the_cli_has(page):
    assert command_problems(page.read_text()) == []


def test_the_command_check_catches_what_the_cli_lacks():
    good = ("```sh\nRELAY_X=1 relay deliveries list --state failed --json  # newest first\n"
            "relay send-sample vapi \\\n  --url https://x\n```\n\n`relay settings > .env`\n")
    assert commands(good) == ["RELAY_X=1 relay deliveries list --state failed --json  # newest first",
                              "relay send-sample vapi    --url https://x", "relay settings > .env"]
    assert command_problems(good) == []
    bad = ["relay deliver list", "relay deliveries list --sate failed", "relay deliveries list --state lost",
           "relay send-sample acme", "relay check now", "relay replay --all-failed --provider acme"]
    assert [command_problem(line) is not None for line in bad] == [True] * len(bad)
    assert command_problems("`relay serve --hots 0.0.0.0`") != []


VARIABLE = re.compile(r"\b(?:RELAY|ROARK|VAPI|RETELL)_[A-Z0-9_]*[A-Z0-9](?:_\*)?")
#: Variables the documents name that are not settings: the test suites' own, each read by
#: the tests it configures (checked below, so this list cannot go stale).
def not_a_setting(name: str) -> bool:
    """The tests' and benchmarks' own variables, which the relay knows to ignore."""
    return name.startswith(TEST_PREFIX) or name in TEST_VARIABLES


def settings() -> set[str]:
    return set(re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", example_file(), re.MULTILINE))


def variable_problems(text: str, known: set[str]) -> list[str]:
    problems = set()
    for name in VARIABLE.findall(text):
        if name.endswith("_*"):  # a family, as `RELAY_RETRY_*`
            if not any(setting.startswith(name[:-1]) for setting in known):
                problems.add(f"{name}: no setting starts so")
        elif name not in known and not not_a_setting(name):
            problems.add(f"{name}: not a setting")
    return sorted(problems)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_variable_named_is_a_setting(page):
    assert variable_problems(page.read_text(), settings()) == []


def test_the_variable_check_catches_an_unknown_one():
    text = "`RELAY_RETRY_*`, `$RELAY_ADMIN_TOKEN`, RELAY_TEST_SPEC; RELAY_RETRIES and `VAPI_NOPE_*`."
    assert variable_problems(text, settings()) == ["RELAY_RETRIES: not a setting", "VAPI_NOPE_*: no setting starts so"]


# --- (d) every page can be reached -------------------------------------------------------------


def linked_pages(page: Path) -> set[Path]:
    return {(page.parent / target.partition("#")[0]).resolve() for target in targets(page.read_text())
            if target.partition("#")[0].endswith(".md") and ":" not in target}


def test_the_readme_links_every_page_of_the_docs():
    assert sorted(map(page_id, set(DOCS) - linked_pages(README))) == []


def test_the_docs_index_links_every_other_page():
    index = ROOT / "docs" / "README.md"
    assert sorted(map(page_id, set(DOCS) - {index} - linked_pages(index))) == []


# --- the changelog ---------------------------------------------------------------------------


def test_the_changelog_says_how_to_upgrade_to_each_release():
    """Keep a Changelog's shape: Unreleased first, then releases newest first, the newest
    being the package's version; each says how to upgrade (migrations run at start-up, but
    a setting's change is the operator's to make)."""
    from relay import __version__

    text = (ROOT / "CHANGELOG.md").read_text()
    sections = re.split(r"^## ", text, flags=re.MULTILINE)[1:]
    titles = [section.splitlines()[0] for section in sections]
    assert titles[0] == "[Unreleased]"
    versions = [re.fullmatch(r"\[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}", title) for title in titles[1:]]
    assert all(versions), titles
    assert versions[0][1] == __version__
    assert [title for title, section in zip(titles, sections, strict=True) if "\n### Upgrading\n" not in section] == []
