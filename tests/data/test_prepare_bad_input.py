"""Bad input to `prepare` and to a prepared folder: one-line errors naming the file and what was expected, and
nothing already written is lost or silently mixed."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from genrec_hf.cli import main
from genrec_hf.data import load_interactions
from genrec_hf.data.prepare import prepare_events
from genrec_hf.data.prepared import INCOMPLETE_MARKER, MANIFEST_FILE, PreparedFolderError, open_prepared


@pytest.fixture()
def log(tmp_path):
    path = tmp_path / "events.csv"
    rows = [f"{u},{i},{1_600_000_000 + 60 * (u * 7 + i)}" for u in range(1, 13) for i in range(1, 6)]
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture()
def prepared(tmp_path, log):
    prepare_events(log, tmp_path / "out", num_shards=3)
    return tmp_path / "out"


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


def test_glob_matching_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"the glob '{tmp_path}/*.parquet' matches no files")):
        prepare_events(str(tmp_path / "*.parquet"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))  # no staging left behind


def test_mixed_schemas_across_input_files(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "timestamp": [5, 6]}).to_parquet(folder / "a.parquet")
    pd.DataFrame({"user_id": ["u1", "u2"], "item_id": [3, 4], "timestamp": [5, 6]}).to_parquet(folder / "b.parquet")
    with pytest.raises(ValueError) as error:
        prepare_events(folder, tmp_path / "out")
    assert "mixed schemas" in one_line(error) and "b.parquet" in str(error.value) and "a.parquet" in str(error.value)
    pd.DataFrame({"user_id": [1], "item_id": [3], "timestamp": [5]}).to_csv(folder / "b.csv", index=False)
    (folder / "b.parquet").unlink()
    with pytest.raises(ValueError, match=r"mixed schemas: .* holds files of kinds \['.csv', '.parquet'\]"):
        prepare_events(folder, tmp_path / "out")


def test_corrupt_shard(prepared):
    shard = sorted(prepared.glob("shard-*.parquet"))[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(PreparedFolderError) as error:
        load_interactions(prepared)
    assert str(shard) in one_line(error) and "does not match manifest.json" in str(error.value)


def test_missing_and_extra_shards(prepared, tmp_path):
    shards = sorted(prepared.glob("shard-*.parquet"))
    shutil.copy(shards[0], prepared / "shard-00003-of-00004.parquet")
    with pytest.raises(PreparedFolderError, match=r"shard-00003-of-00004.parquet: extra shard not in manifest.json"):
        open_prepared(prepared)
    (prepared / "shard-00003-of-00004.parquet").unlink()
    shards[2].unlink()
    with pytest.raises(PreparedFolderError, match=re.escape(f"{shards[2]}: missing shard")):
        load_interactions(prepared)


def test_manifest_hash_mismatch(prepared):
    manifest = json.loads((prepared / MANIFEST_FILE).read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (prepared / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PreparedFolderError, match="shard 0 does not match manifest.json .*expected 000000000000"):
        open_prepared(prepared).read_shard(0)
    manifest["vocab"]["sha256"] = "1" * 64
    (prepared / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PreparedFolderError, match="item_vocab.json: item vocabulary does not match"):
        open_prepared(prepared)


def test_shard_from_another_vocab_or_schema_version(prepared, tmp_path, log):
    """A shard copied in from another run (and the manifest hash patched to match) is still refused."""
    events = pd.read_csv(log)
    events["item_id"] += 100  # another catalog → another vocabulary
    events.to_csv(tmp_path / "other.csv", index=False)
    prepare_events(tmp_path / "other.csv", tmp_path / "other", num_shards=3)
    manifest = json.loads((prepared / MANIFEST_FILE).read_text())
    other = json.loads((tmp_path / "other" / MANIFEST_FILE).read_text())
    shutil.copy(tmp_path / "other" / other["shards"][0]["file"], prepared / manifest["shards"][0]["file"])
    manifest["shards"][0] = other["shards"][0]
    (prepared / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PreparedFolderError) as error:
        open_prepared(prepared).read_shard(0)
    assert "shard written with another item vocabulary" in one_line(error)
    manifest["schema_version"] = 99
    (prepared / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(PreparedFolderError, match="schema version 99; this genrec_hf reads version 1"):
        load_interactions(prepared)


def test_interrupted_job(tmp_path, log, monkeypatch):
    """A job killed half-way leaves only its marked staging folder: the output is not there (or is the old one),
    reading a folder without a final manifest is refused, and the next run clears the marked staging folder."""
    from genrec_hf.data.prepare import pipeline

    prepare_events(log, tmp_path / "out", num_shards=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "write_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        prepare_events(log, tmp_path / "out", num_shards=3, overwrite=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before  # the old folder is intact
    monkeypatch.undo()
    staging = tmp_path / ".again.prepare-staging"  # what a killed process leaves: its marked staging folder
    staging.mkdir()
    (staging / INCOMPLETE_MARKER).write_text("{}")
    (staging / "shard-00000-of-00001.parquet").write_bytes(b"half")
    with pytest.raises(PreparedFolderError, match="incomplete prepared folder"):
        load_interactions(staging)
    prepare_events(log, tmp_path / "again")
    assert not staging.exists() and (tmp_path / "again" / MANIFEST_FILE).is_file()
    unmarked = tmp_path / ".third.prepare-staging"
    unmarked.mkdir()
    with pytest.raises(FileExistsError, match="is not an interrupted prepare job"):
        prepare_events(log, tmp_path / "third")


def test_non_empty_output_needs_overwrite(tmp_path, log):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty; pass --overwrite"):
        prepare_events(log, tmp_path / "out")
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    prepare_events(log, tmp_path / "out", overwrite=True)
    assert not (tmp_path / "out" / "notes.txt").exists() and (tmp_path / "out" / MANIFEST_FILE).is_file()


def test_filters_a_prepared_folder_cannot_honour(prepared):
    load_interactions(prepared, min_user_events=1)  # a lower minimum changes nothing: accepted
    with pytest.raises(ValueError, match=r"min_user_events=6 \(prepared users have >= 2 events\)"):
        load_interactions(prepared, min_user_events=6)
    with pytest.raises(ValueError, match=r"k_core=3 \(prepared with k_core=None\)"):
        load_interactions(prepared, k_core=3)
    with pytest.raises(ValueError, match=r"dedup=False \(prepared with dedup=True\)"):
        load_interactions(prepared, dedup=False)


def test_cli_prepare_and_its_errors(tmp_path, log, capsys):
    assert main(["prepare", str(log), "--output_dir", str(tmp_path / "out"), "--num_shards", "2",
                 "--split", "time", "--cut_quantile", "0.5"]) == 0
    assert "12 users, 5 items, 60 events in 2 shards" in capsys.readouterr().out
    assert open_prepared(tmp_path / "out").split["cut"] > 1_600_000_000
    assert main(["prepare", str(log), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty; pass --overwrite" in err
    assert main(["prepare", str(log), "--output_dir", str(tmp_path / "o2"), "--split", "time"]) == 2
    assert "exactly one of cut= (unix seconds) or quantile=" in capsys.readouterr().err
    assert main(["prepare", str(log), "--output_dir", str(tmp_path / "o3"),
                 "--column_map", "user_id=customer"]) == 2
    assert "column_map names column(s) ['customer']" in capsys.readouterr().err
