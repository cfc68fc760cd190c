"""What can be checked of the Dockerfile without building it (tests/test_images.py runs the built images): stages,
users, entry points, the base image argument, extras and pins."""

from __future__ import annotations

import re
import tomllib

from .conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def stage(name: str) -> str:
    parts = re.split(r"^FROM .*$", DOCKERFILE, flags=re.MULTILINE)
    headers = re.findall(r"^FROM (.*)$", DOCKERFILE, flags=re.MULTILINE)
    body = next(body for header, body in zip(headers, parts[1:], strict=True) if header.endswith(f"AS {name}"))
    return "\n".join(line for line in body.splitlines() if not line.startswith("#"))  # the instructions only


def test_two_targets_each_non_root_with_no_build_tools_left() -> None:
    for name in ("operator", "trainer"):
        body = stage(name)
        users = re.findall(r"^USER (\S+)", body, flags=re.MULTILINE)
        assert users and not users[-1].startswith(("0", "root")), name
    # pip removed after the last install; the trainer's compiler for DeepSpeed's CPU op installed and removed (every
    # package the step added purged) in the same step
    for name in ("operator", "trainer"):
        assert "pip uninstall -y pip" in stage(name).split("\nRUN ")[-1], name
    install = next(step for step in stage("trainer").split("\nRUN ") if "apt-get install" in step)
    assert "apt-mark auto '.*'" in install and "apt-get purge -y --auto-remove" in install


def test_extras_and_entry_points_match_pyproject() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "for x in ('operator', 'trainer')" in stage("deps")  # the extras' pins, read from pyproject.toml
    assert "COPY --from=deps /src/operator.txt /src/trainer.txt" in stage("build")  # keyed by the lists alone
    assert "-r operator.txt" in stage("operator") and "torch" not in stage("operator")
    assert "-r trainer.txt" in stage("trainer")
    torch_pin = next(dep for dep in extras["trainer"] if dep.startswith("torch"))
    assert f"'{torch_pin}'" in stage("trainer")
    assert '["kubetune", "operator"]' in stage("operator") and "kubetune" in PYPROJECT["project"]["scripts"]
    assert '["python", "-m", "kubetune_trainer"]' in stage("trainer")
    assert (ROOT / "trainer" / "kubetune_trainer" / "__main__.py").is_file()


def test_base_image_is_an_argument_pinned_by_default_and_every_copied_folder_exists() -> None:
    assert re.search(r"^ARG BASE=python:\d+\.\d+\.\d+-slim-\w+$", DOCKERFILE, flags=re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE\} AS base$", DOCKERFILE, flags=re.MULTILINE)
    for source in re.findall(r"^COPY (?!--)(\S+) ", DOCKERFILE, flags=re.MULTILINE):
        assert (ROOT / source).exists(), source
