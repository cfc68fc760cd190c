"""The images `make images` built (hack/build-images.sh, the Dockerfile's two targets), run the way the node agent
runs them: the image's root filesystem read-only, its user, its environment. What they must prove: non-root, no
compiler and no Python package installer at run time, no user site-packages, the trainer's entry point reads the
operator-to-pod contract and finds DeepSpeed's CPU op prebuilt, and the operator image carries no torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .cluster import images

pytestmark = pytest.mark.images

OPERATOR_MAX_BYTES = 400_000_000  # measured 365 MB (docs/platform.md); torch alone is several times this
# what only the trainer needs: the operator image must import none of it, nor carry it
TRAINING_STACK = ("torch", "deepspeed", "transformers", "peft", "numpy", "pyarrow", "boto3", "tokenizers", "safetensors")


@pytest.fixture(scope="module")
def store():  # type: ignore[no-untyped-def]
    missing = images.missing(images.OPERATOR, images.TRAINER)
    if missing:
        pytest.fail(f"images missing from podman's store: {', '.join(missing)}: run `make images` (hack/build-images.sh)")
    found = images.Store()
    yield found
    found.close()


def image(store: images.Store, name: str) -> images.Image:
    found = store.get(name)
    assert found is not None, name
    return found


def run(store: images.Store, name: str, tmp_path: Path, *argv: str, **env: str) -> tuple[int, str]:
    done = images.run(image(store, name), list(argv), tmp_path / "layer", env=env)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("name", [images.OPERATOR, images.TRAINER])
def test_the_image_runs_as_uid_1000_read_only_with_no_compiler_and_no_installer(store, name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    found = image(store, name)
    assert found.uid_gid() == (1000, 1000)
    assert found.env.get("PYTHONNOUSERSITE") == "1" and found.env.get("PATH", "").startswith("/opt/venv/bin:")
    probe = (
        "import json, os, shutil, site, sys, importlib.util as u\n"
        "try:\n    open('/probe', 'w')\n    writable = True\nexcept OSError:\n    writable = False\n"
        "print(json.dumps({'uid': os.getuid(), 'gid': os.getgid(), 'writable_root': writable,"
        " 'user_site': site.ENABLE_USER_SITE, 'pip': u.find_spec('pip') is not None,"
        " 'ensurepip': shutil.which('pip') or shutil.which('pip3'),"
        " 'compilers': [c for c in ('cc', 'gcc', 'g++', 'c++', 'clang', 'make', 'ld') if shutil.which(c)],"
        " 'prefix': sys.prefix, 'no_new_privs': open('/proc/self/status').read().count('NoNewPrivs:\\t1')}))"
    )
    code, out = run(store, name, tmp_path, "python", "-c", probe)
    assert code == 0, out
    facts = json.loads(out.strip().splitlines()[-1])
    assert facts == {
        "uid": 1000,
        "gid": 1000,
        "writable_root": False,
        "user_site": False,
        "pip": False,
        "ensurepip": None,
        "compilers": [],
        "prefix": "/opt/venv",
        "no_new_privs": 1,
    }


def test_the_operator_image_has_no_training_stack(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    found = image(store, images.OPERATOR)
    assert found.entrypoint == ("kubetune", "operator")
    probe = (
        "import json, sys, importlib.metadata as m\n"
        "import kubetune_operator.handlers, kubetune_cli.main\n"
        "print(json.dumps({'modules': sorted(sys.modules), 'dists': sorted(d.metadata['Name'].lower() for d in m.distributions())}))"
    )
    code, out = run(store, images.OPERATOR, tmp_path, "python", "-c", probe)
    assert code == 0, out
    loaded = json.loads(out.strip().splitlines()[-1])
    assert "kopf" in loaded["dists"] and "kubernetes" in loaded["dists"]
    for package in TRAINING_STACK:
        assert package not in loaded["dists"], package
        assert not any(m == package or m.startswith(package + ".") for m in loaded["modules"]), package
    assert 0 < found.size < OPERATOR_MAX_BYTES, f"operator image is {found.size / 1e6:.0f} MB"


def test_the_operator_image_entry_point_starts(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out = run(store, images.OPERATOR, tmp_path, *image(store, images.OPERATOR).entrypoint, "--help")
    assert code == 0 and "operator" in out, out


def test_the_trainer_entry_point_reads_the_contract(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    found = image(store, images.TRAINER)
    assert found.entrypoint == ("python", "-m", "kubetune_trainer")
    code, out = run(store, images.TRAINER, tmp_path, *found.entrypoint, KUBETUNE_NUM_WORKERS="2", JOB_COMPLETION_INDEX="5")
    assert code != 0 and "JOB_COMPLETION_INDEX=5 must be below KUBETUNE_NUM_WORKERS=2" in out, out
    code, out = run(store, images.TRAINER, tmp_path, *found.entrypoint)
    assert code != 0 and "/etc/kubetune/" in out, out  # no config mounted: the contract's file is named


def test_the_trainer_image_has_deepspeeds_cpu_op_prebuilt(store, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """CPU workers all-reduce through DeepSpeed's shared-memory op: built into the image, loaded with no compiler."""
    probe = (
        "import deepspeed\n"
        "from deepspeed.accelerator import get_accelerator\n"
        "op = get_accelerator().create_op_builder('ShareMemCommBuilder').load()\n"
        "print('loaded', op.__name__)"
    )
    code, out = run(store, images.TRAINER, tmp_path, "python", "-c", probe, DS_ACCELERATOR="cpu")
    assert code == 0 and "loaded deepspeed.ops.comm.deepspeed_shm_comm_op" in out, out
