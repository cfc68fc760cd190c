"""What can be checked of the images without a container engine: stages, users, entry points, extras, pins."""

from __future__ import annotations

import re
import tomllib

from .conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def stage(name: str) -> str:
    parts = re.split(r"^FROM .*$", DOCKERFILE, flags=re.MULTILINE)
    headers = re.findall(r"^FROM (.*)$", DOCKERFILE, flags=re.MULTILINE)
    return next(body for header, body in zip(headers, parts[1:], strict=True) if header.endswith(f"AS {name}"))


def test_two_targets_each_non_root() -> None:
    for name in ("operator", "trainer"):
        body = stage(name)
        users = re.findall(r"^USER (\S+)", body, flags=re.MULTILINE)
        assert users and not users[-1].startswith(("0", "root")), name


def test_extras_and_entry_points_match_pyproject() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "'.[operator]'" in stage("operator") and "torch" not in stage("operator")
    assert "'.[trainer]'" in stage("trainer")
    torch_pin = next(dep for dep in extras["trainer"] if dep.startswith("torch"))
    assert f"'{torch_pin}'" in stage("trainer")
    assert '["kubetune", "operator"]' in stage("operator") and "kubetune" in PYPROJECT["project"]["scripts"]
    assert '["python", "-m", "kubetune_trainer"]' in stage("trainer")
    assert (ROOT / "trainer" / "kubetune_trainer" / "__main__.py").is_file()


def test_base_image_is_pinned_and_every_copied_folder_exists() -> None:
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim-\w+ AS base$", DOCKERFILE, flags=re.MULTILINE)
    for source in re.findall(r"^COPY (\S+) ", DOCKERFILE, flags=re.MULTILINE):
        assert (ROOT / source).exists(), source
