"""`kubetune validate`: messages, exit codes, output formats, and hostile input (fast tier)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from kubetune_api.manifests import MAX_BYTES

from .conftest import EXAMPLES, ROOT, dump, job, kubetune


def test_examples_are_valid() -> None:
    """Every example is valid where it runs: the quickstart with `kubetune run` (--local), the others in a cluster."""
    local = [p for p in EXAMPLES if p.name.endswith("quickstart.yaml")]
    cluster = [p for p in EXAMPLES if p not in local]
    result = kubetune("validate", *[str(p) for p in cluster])
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(": valid") == len(cluster)
    result = kubetune("validate", "--local", *[str(p) for p in local])
    assert result.returncode == 0, result.stdout + result.stderr


def test_local_paths_are_for_kubetune_run_only(tmp_manifest) -> None:  # type: ignore[no-untyped-def]
    result = kubetune("validate", str(ROOT / "examples" / "quickstart.yaml"))
    assert result.returncode == 1
    assert "spec.model.uri: a cluster job reads its model from s3://" in result.stdout
    assert "spec.output.uri: a cluster job writes to s3://" in result.stdout


def test_bad_rank_and_unknown_field_each_get_one_line(tmp_manifest) -> None:  # type: ignore[no-untyped-def]
    path = tmp_manifest(job(**{"spec.lora": {"r": -1}, "spec.lorra": {"r": 4}}))
    result = kubetune("validate", str(path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert "spec.lora.r: must be >= 1 (got -1)" in lines[0]
    assert "spec.lorra: unknown field (did you mean lora?)" in lines[1]
    assert "Traceback" not in result.stderr


def test_json_output_for_pipelines(tmp_manifest) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_manifest(job(**{"spec.deepspeed.zeroStage": 5}), "bad.yaml")
    good = tmp_manifest(job(), "good.yaml")
    result = kubetune("validate", "--output", "json", str(good), str(bad))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert [r["valid"] for r in report["results"]] == [True, False]
    error = report["results"][1]["errors"][0]
    assert error == {"path": "spec.deepspeed.zeroStage", "message": "must be one of 1, 2 or 3", "value": "5"}


def test_multi_document_stdin_reports_each_document() -> None:
    data = dump(job()) + b"---\n" + dump(job(**{"metadata.name": "Bad"})) + b"---\n"
    result = kubetune("validate", "-", stdin=data)
    assert result.returncode == 1
    assert result.stdout.splitlines()[0].endswith("(job): valid")
    assert "<stdin>:" in result.stdout and "metadata.name: metadata.name must be a DNS label" in result.stdout


def test_directory_expands_to_its_manifests(tmp_manifest) -> None:  # type: ignore[no-untyped-def]
    path = tmp_manifest(job())
    result = kubetune("validate", str(path.parent))
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["validate"], 2, "usage"),
        (["validate", "/nonexistent/job.yaml"], 2, "no such file"),
        (["validate", "--output", "xml", "x.yaml"], 2, "invalid choice"),
    ],
)
def test_usage_and_io_errors_exit_2(args: list[str], code: int, needle: str) -> None:
    result = kubetune(*args)
    assert result.returncode == code
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


BOMB = b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}' if i > 1 else '*a'] * 10)}]\n".encode() for i in range(1, 12)
)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"apiVersion: kubetune.dev/v1alpha1\nkind: [FineTuneJob\n", "YAML error at line 3, column 1"),
        (b"kind: FineTuneJob\nspec: {a: 1, a: 2}\n", "found duplicate key 'a'"),
        (b"\xff\xfe\x00kind", "not UTF-8: byte 0xff at offset 0"),
        (b"", "no YAML documents found"),
        (b"---\n# only a comment\n", "no YAML documents found"),
        (b"x" * (MAX_BYTES + 10), f"at most {MAX_BYTES} bytes"),
        (BOMB, "alias bomb"),
        (b"[" * 50_000, "nesting deeper than 64 levels"),
        (b"&a [*a]", "recursive alias"),
        (b"- just\n- a list\n", "a manifest must be a mapping"),
        (b"42\n", "a manifest must be a mapping"),
        (dump(job(kind="Deployment")), "kind: must be FineTuneJob"),
        (dump(job(apiVersion="kubetune.dev/v1beta9")), "apiVersion: must be kubetune.dev/v1alpha1"),
        (dump(job(spec=[1, 2])), "spec: must be a mapping"),
        (dump(job(spec="yes")), "spec: must be a mapping"),
    ],
    ids=[
        "syntax",
        "duplicate-key",
        "non-utf8",
        "empty",
        "comment-only",
        "huge",
        "alias-bomb",
        "deep-nesting",
        "recursive-alias",
        "list",
        "scalar",
        "wrong-kind",
        "wrong-version",
        "spec-list",
        "spec-string",
    ],
)
def test_bad_input_gets_one_clear_error(data: bytes, needle: str) -> None:
    started = time.monotonic()
    result = kubetune("validate", "-", stdin=data)
    assert time.monotonic() - started < 60  # bounded: never hangs on hostile input
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert needle in result.stdout
    assert len(result.stdout.splitlines()) == 1


def test_floats_written_like_kubectl_reads_them(tmp_manifest) -> None:  # type: ignore[no-untyped-def]
    path = tmp_manifest(
        b"apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: j}\nspec:\n"
        b"  model: {uri: ./m/}\n  dataset: {train: ./t.jsonl}\n  output: {uri: ./o/}\n"
        b"  training: {learningRate: 2e-4}\n"
    )
    result = kubetune("validate", "--local", str(path))
    assert result.returncode == 0, result.stdout


def test_crd_command_prints_the_checked_in_crd() -> None:
    from .cases import CRD_FILE

    result = kubetune("crd")
    assert result.returncode == 0
    assert result.stdout == CRD_FILE.read_text()


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("s3://out/x/", "s3://out/x/", True),
        ("s3://out/x/", "s3://out/x/run-2/", True),
        ("s3://out/x", "s3://out/x/", True),
        ("s3://out/x/", "s3://out/xy/", False),
        ("s3://out/x/", "s3://other/x/", False),
    ],
)
def test_overlapping_outputs(a: str, b: str, overlap: bool) -> None:
    from kubetune_api.outputs import overlaps

    assert overlaps(a, b) is overlap and overlaps(b, a) is overlap


def test_manifests_validated_together_need_outputs_of_their_own(tmp_path: Path) -> None:
    first = job(**{"metadata.name": "first", "spec.output": {"uri": "s3://adapters/shared/"}})
    second = job(**{"metadata.name": "second", "spec.output": {"uri": "s3://adapters/shared/x/"}})
    (tmp_path / "a.yaml").write_bytes(dump(first))
    (tmp_path / "b.yaml").write_bytes(dump(second))
    result = kubetune("validate", str(tmp_path))
    assert result.returncode == 1
    assert (
        "b.yaml:1 (second): spec.output.uri: overlaps the output of FineTuneJob default/first (s3://adapters/shared/); "
        "each job needs an output prefix of its own (got s3://adapters/shared/x/)"
    ) in result.stdout
    assert kubetune("validate", str(tmp_path / "a.yaml")).returncode == 0  # alone, each is fine
    # per namespace, as at admission: across tenants the policy's writePrefixes keep outputs apart
    other = job(**{"metadata.name": "second", "metadata.namespace": "team-b", "spec.output": {"uri": "s3://adapters/shared/x/"}})
    (tmp_path / "b.yaml").write_bytes(dump(other))
    assert kubetune("validate", str(tmp_path)).returncode == 0
