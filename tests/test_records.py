"""The records one run leaves in storage for the next (kubetune_api.records): one parser that refuses what kubetune
did not write, one identity rule for a checkpoint and the best adapter alike."""

from __future__ import annotations

import json

import pytest

from kubetune_api.records import BestRecord, CheckpointRecord, Identity, read

MINE = Identity(specDigest="d" * 64, jobUid="job-uid")
DIGESTS = {"d" * 64}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"step": 3}',  # no worldSize, no digest
        '{"step": "3", "worldSize": 2, "specDigest": "x"}',  # a step that is not a number
        '{"step": 0, "worldSize": 2, "specDigest": "x"}',  # no step 0 checkpoint is ever written
        '{"step": 3, "worldSize": 0, "specDigest": "x"}',
        json.dumps({"step": 3, "worldSize": 2, "specDigest": "x" * 65}),  # longer than a sha256
        json.dumps({"step": 3, "worldSize": 2, "specDigest": "x", "jobUid": "u" * 129}),
    ],
)
def test_a_checkpoint_record_kubetune_did_not_write_is_refused(text: str) -> None:
    assert read(CheckpointRecord, text) is None


def test_a_record_round_trips_and_ignores_fields_it_does_not_declare() -> None:
    record = CheckpointRecord(step=20, worldSize=2, **MINE.model_dump())
    assert read(CheckpointRecord, record.model_dump_json()) == record
    later = json.loads(record.model_dump_json()) | {"writtenBy": "a later version"}
    assert read(CheckpointRecord, json.dumps(later)) == record  # ignored, never trusted


def test_the_identity_rule_names_what_differs() -> None:
    assert MINE.refusal(MINE, DIGESTS, "here") is None
    other_spec = Identity(specDigest="e" * 64, jobUid="job-uid")
    assert "written for another spec (training digest eeeeeeeeeeee" in (other_spec.refusal(MINE, DIGESTS, "here") or "")
    other_job = Identity(specDigest="d" * 64, jobUid="another")
    assert "written by another FineTuneJob (uid another, this one is job-uid)" in (other_job.refusal(MINE, DIGESTS, "x") or "")
    no_uid = Identity(specDigest="d" * 64)
    assert no_uid.refusal(MINE, DIGESTS, "x") is not None  # in a cluster a record without the uid is never used
    assert no_uid.refusal(Identity(specDigest="d" * 64), DIGESTS, "x") is None  # kubetune run: no uid to compare


def test_a_best_record_names_its_step_and_tag() -> None:
    best = BestRecord(step=12, tag="step-000012", evalLoss=1.5, **MINE.model_dump())
    assert best.names(12) and not best.names(10)
    assert not BestRecord(step=12, tag="step-000010", **MINE.model_dump()).names(12)  # a record naming other files
    assert read(BestRecord, best.model_dump_json()) == best
    assert read(BestRecord, '{"step": 12, "specDigest": "d"}') is None  # no tag


def test_a_prepared_sets_meta_is_read_strictly_and_judged_by_one_rule() -> None:
    from kubetune_api.records import PreparedMeta

    good = {
        "format": 2,
        "digest": "d" * 64,
        "records": 3,
        "vocabulary": 259,
        "maxSeqLength": 64,
        "packing": True,
        "counts": {"train": {"records": 2, "tokens": 50}, "validation": {"records": 1, "tokens": 20}},
        "rows": {"train": 1, "validation": 1},
    }
    meta = read(PreparedMeta, json.dumps(good))
    assert meta is not None and meta.tokens() == 70 and not meta.pairs
    assert meta.refusal(2, "d" * 64, 259, 64, pairs=False) is None
    assert meta.refusal(3, None, 259, 64, pairs=False) == "meta.json: not format 3"
    assert "digest differs" in (meta.refusal(2, "e" * 64, 259, 64, pairs=False) or "")
    assert "another vocabulary or maxSeqLength" in (meta.refusal(2, None, 260, 64, pairs=False) or "")
    assert meta.refusal(2, None, 259, 64, pairs=True) == "made without preference pairs"
    for bad in ({"records": "3"}, {"records": -1}, {"vocabulary": 0}, {"rows": {"train": 1}}, {"packingOff": "x" * 65}):
        assert read(PreparedMeta, json.dumps(good | bad)) is None, bad


def test_an_rng_state_round_trips_and_a_malformed_one_is_refused() -> None:
    import random

    from kubetune_api.records import RngState

    version, state, gauss = random.getstate()
    saved = RngState(version=version, state=list(state), gauss=gauss)
    assert read(RngState, saved.model_dump_json()) == saved
    good = json.loads(saved.model_dump_json())
    for bad in (
        {"state": good["state"][:-1]},
        {"state": [-1, *good["state"][1:]]},
        {"state": [2**32, *good["state"][1:]]},
        {"version": "3"},
        {"gauss": "x"},
    ):
        assert read(RngState, json.dumps(good | bad)) is None, list(bad)
