"""tests/README.md's map from package modules to their tests stays whole: every module of the package has a row,
every row names a module that exists, and every test file a row names exists."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "qwen3_rerank_integrations"
ROW = re.compile(r"^\|\s*`(?P<module>[^`]+\.py)`\s*\|(?P<tests>[^|]*)\|\s*$")


def map_rows() -> dict[str, list[str]]:
    """The "Module → tests" table of tests/README.md: module path (relative to the package) → test files."""
    text = (TESTS / "README.md").read_text(encoding="utf-8")
    section = text.split("## Module → tests", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match["module"] not in rows, f"tests/README.md lists {match['module']} twice"
            rows[match["module"]] = [name.strip() for name in match["tests"].split(",") if name.strip()]
    return rows


def package_modules() -> set[str]:
    return {path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")}


def test_every_package_module_has_a_row_in_the_tests_map():
    missing = sorted(package_modules() - set(map_rows()))
    assert not missing, f"add a row to the table in tests/README.md for each of: {missing}"


def test_every_row_of_the_tests_map_is_a_module_of_the_package():
    gone = sorted(set(map_rows()) - package_modules())
    assert not gone, f"tests/README.md maps modules the package no longer has: {gone}"


def test_every_test_file_the_map_names_exists_and_each_row_names_one():
    rows = map_rows()
    assert all(rows.values()), [module for module, tests in rows.items() if not tests]
    named = {name for tests in rows.values() for name in tests}
    absent = sorted(name for name in named if not (TESTS / name).is_file())
    assert not absent, f"tests/README.md names test files that do not exist: {absent}"
    assert all(re.fullmatch(r"test_\w+\.py", name) for name in named), named
