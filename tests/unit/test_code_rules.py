"""The code's own rules, checked like behaviour: ruff's lint, mypy's types, the layers'
import contract (and that it does catch a breach), and docs/architecture.md's map of the
package kept equal to the package."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text()


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, check=False)


def test_ruff_finds_nothing():
    result = run(sys.executable, "-m", "ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing():
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_import_contracts_hold():
    result = run(str(BIN / "lint-imports"), "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_import_contracts_catch_a_breach(tmp_path):
    """A copy of the package where the bottom layer imports the top one: the contract
    must say so (a check that cannot fail would prove nothing)."""
    shutil.copytree(ROOT / "relay", tmp_path / "relay", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    timefmt = tmp_path / "relay" / "core" / "timefmt.py"
    timefmt.write_text(timefmt.read_text() + "\nimport relay.http.app  # noqa: E402\n")
    result = run(str(BIN / "lint-imports"), "--no-cache", cwd=tmp_path)
    assert result.returncode == 1
    assert "relay.core.timefmt -> relay.http.app" in result.stdout


def block_after(marker: str) -> list[str]:
    """The lines of docs/architecture.md's code block that follows `marker`."""
    start = ARCHITECTURE.index(marker)
    fence = ARCHITECTURE.index("```\n", start) + 4
    return ARCHITECTURE[fence:ARCHITECTURE.index("```", fence)].splitlines()


def test_the_architecture_draws_the_layers_the_contract_enforces():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    [layers] = [c["layers"] for c in contracts if c["type"] == "layers"]
    drawn = [re.split(r" {2,}", line.strip())[0] for line in block_after("<!-- layers:")]
    assert drawn == layers


def test_the_architecture_module_map_lists_every_module_and_no_other():
    listed, package = set(), None
    for line in block_after("<!-- module map:")[1:]:  # the first line is relay/ itself
        name = line.split()[0]
        if line.startswith("    "):
            listed.add(f"{package}/{name}")
        elif name.endswith("/"):
            package = name.rstrip("/")
            listed.add(package + "/")
        else:
            listed.add(name)
    relay = ROOT / "relay"
    present = set()
    for path in relay.rglob("*.py"):
        parts = path.relative_to(relay).with_suffix("").parts
        if parts in (("__init__",), ("__main__",)) or len(parts) > 3 or (len(parts) == 3 and parts[-1] != "__init__"):
            continue
        if parts[-1] == "__init__":
            present.add("/".join(parts[:-1]) + "/")
        else:
            present.add("/".join(parts))
    assert sorted(listed - present) == [], "listed in docs/architecture.md but not in relay/"
    assert sorted(present - listed) == [], "in relay/ but missing from docs/architecture.md's module map"


#: What people read: the front page, the reference, the changelog, the example settings.
DOCUMENTS = ("README.md", "BENCHMARKS.md", "CHANGELOG.md", "config/relay.env.example",
             *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "docs").glob("*.md"))))
#: `relay/x/y.py`, `relay/x/`, and `relay.x.y` (a module, or a name in one) as prose names them.
PATH = re.compile(r"(?<![\w/.-])relay/[\w/]*\w(?:\.py|/)?")
DOTTED = re.compile(r"(?<![\w/.-])relay(?:\.[A-Za-z_]\w*)+")


#: Dotted names that are not modules: the SQLite outbox's default file, and the types of
#: alert messages (relay.alert.opened, ...).
NOT_MODULES = {"relay.db", "relay.alert", *(f"relay.alert.{t}" for t in ("opened", "reminder", "resolved", "test"))}


def named_in(document: str) -> set[str]:
    text = (ROOT / document).read_text()
    return set(PATH.findall(text)) | (set(DOTTED.findall(text)) - NOT_MODULES)


def exists(name: str) -> bool:
    if "/" in name:
        return (ROOT / name).exists()
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest prefix that is a module, then names in it
        base = ROOT.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if module.exists():
            rest = parts[cut:]
            return not rest or re.search(rf"^\s*(?:class |def |async def )?{re.escape(rest[0])}\b",
                                         module.read_text(), re.MULTILINE) is not None
    return False


def test_every_module_path_the_documents_and_the_code_name_exists():
    """Paths in prose go stale when code moves: the documents', and the package's own
    docstrings and comments, name only what is there."""
    documents = [*DOCUMENTS, *(str(p.relative_to(ROOT)) for p in sorted((ROOT / "relay").rglob("*.py")))]
    missing = {document: sorted(n for n in named_in(document) if not exists(n)) for document in documents}
    assert {document: names for document, names in missing.items() if names} == {}
