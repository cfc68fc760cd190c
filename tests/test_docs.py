"""Generated docs are fresh, and the README's commands are the ones CI runs."""

from __future__ import annotations

from kubetune_api.reference import render

from .conftest import ROOT


def test_api_reference_is_fresh() -> None:
    assert (ROOT / "docs" / "api.md").read_text() == render(), "docs/api.md is stale: run `make generate`"


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci
    assert "make setup" in readme and "make setup" in ci


def test_readme_shows_every_example() -> None:
    readme = (ROOT / "README.md").read_text()
    for example in sorted((ROOT / "examples").glob("*.yaml")) + sorted((ROOT / "examples").glob("*/*.yaml")):
        name = example.relative_to(ROOT).as_posix()
        assert name in readme, f"README does not mention {name}"


def test_benchmark_script_starts() -> None:
    import subprocess
    import sys

    for script, words in (
        ("bench/trainer_bench.py", "side by side"),
        ("bench/operator_bench.py", "baseline"),
        ("bench/data_bench.py", "side by side"),
        ("bench/memory_bench.py", "beside the measured peak"),
        ("bench/preemption_bench.py", "side by side"),
        ("bench/dpo_bench.py", "side by side"),
        ("bench/dpo_trl_bench.py", "DPOTrainer"),
        ("bench/soak.py", "the commands users run"),
        ("bench/task_bench.py", "side by side"),
    ):
        result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and words in result.stdout, script


def test_operator_doc_lists_every_rbac_rule() -> None:
    from kubetune_operator.rbac import RULES

    doc = (ROOT / "docs" / "operator.md").read_text()
    for rule in RULES:
        for resource in rule["resources"]:
            assert resource in doc, resource
        rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in doc.splitlines() if line.startswith("| ")]
        row = next(r for r in rows if r[1] == ", ".join(rule["resources"]))
        assert row[2] == ", ".join(rule["verbs"]), row


def test_the_readme_is_a_front_door_to_every_page() -> None:
    """The README stays short and points at every page of docs/, and every page it points at exists."""
    import re

    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 250, "the README is the front door: detail belongs in docs/"
    linked = set(re.findall(r"\]\((docs/[a-z-]+\.md)\)", readme))
    for path in linked:
        assert (ROOT / path).is_file(), path
    pages = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"pages the README does not lead to: {sorted(pages - linked)}"
