"""The import rules of DESIGN.md: the API stays light, the trainer never imports the operator, and so on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    import tomllib

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    # every contract ran (the trainer's and the operator's layers are exhaustive: a new module must be placed)
    assert f"{len(contracts)} kept, 0 broken" in result.stdout and len(contracts) >= 9


def test_validate_loads_neither_torch_nor_kopf() -> None:
    probe = (
        "import sys, json\n"
        "from kubetune_cli.main import main\n"
        "code = main(['validate', 'examples/minimal.yaml'])\n"
        "heavy = sorted(m for m in ('torch', 'kopf', 'kubernetes', 'deepspeed', 'transformers', 'boto3') if m in sys.modules)\n"
        "print(json.dumps({'code': code, 'heavy': heavy}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    report = json.loads(result.stdout.splitlines()[-1])
    assert report == {"code": 0, "heavy": []}


def test_operator_folder_never_shadows_the_standard_library() -> None:
    assert not (ROOT / "operator" / "__init__.py").exists()
    import operator

    assert hasattr(operator, "itemgetter")
