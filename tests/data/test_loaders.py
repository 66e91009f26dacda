"""Loaders: the real ML-100K and Amazon Toys logs, every GroupLens MovieLens layout (folder and zip), csv/parquet tables."""

from __future__ import annotations

import zipfile

import pandas as pd
import pytest

from genrec_hf.data import SEQUENCE_FEATURES, detect_format, load_interactions

from tests.helpers import require_shared_data as shared


@pytest.fixture(scope="module")
def ml100k():
    return load_interactions(shared("ml-100k"))


def test_ml100k_recbole_counts_and_metadata(ml100k):
    assert ml100k.name == "ml-100k"
    assert (ml100k.num_users, ml100k.num_items, ml100k.num_events) == (943, 1682, 100000)
    assert len(ml100k.vocab) == 1683  # + padding
    assert ml100k.has_timestamps and ml100k.num_action_types == 6  # ratings 1..5 as action ids
    assert ml100k.sequences.features == SEQUENCE_FEATURES
    assert ml100k.item_info["1"] == {"title": "Toy Story", "year": 1995,
                                     "genres": ["Animation", "Children's", "Comedy"]}
    assert sum("title" in info for info in ml100k.item_info.values()) == 1682
    assert ml100k.vocab.encode("1") == 1  # integer ids sort numerically
    row = ml100k.sequences[0]
    assert row["timestamps"] == sorted(row["timestamps"])
    assert row["action_ids"] == [int(r) for r in row["ratings"]]


def test_amazon_toys_sequence_text():
    data = load_interactions(shared("amazon-toys") / "Toys_and_Games.txt")
    assert (data.num_users, data.num_items, data.num_events) == (19412, 11924, 167597)
    assert not data.has_timestamps and data.num_action_types == 0
    row = data.sequences[0]
    assert row["timestamps"] == list(range(len(row["item_ids"])))
    assert data.vocab.decode_many(row["item_ids"]) == ["1", "2", "3", "4", "5"]  # line 1: "1 1 2 3 4 5"
    assert data.item_info["4"]["attributes"] == [1, 2, 3, 4, 5]
    assert load_interactions(shared("amazon-toys")).num_events == 167597  # the folder works too


# --- GroupLens layouts, from tiny hand-written files --------------------------------------------------------------

U_DATA = "1\t10\t5\t100\n1\t20\t3\t200\n2\t10\t4\t150\n2\t30\t1\t160\n2\t20\t2\t170\n3\t30\t4\t10\n"
U_ITEM = ("10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1" + "|0" * 13 + "\n"
          "20|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1" + "|0" * 16 + "\n"
          "30|Four Rooms (1995)|01-Jan-1995||http://x" + "|0" * 16 + "|1|0|0\n")
RATINGS_DAT = "1::10::5::100\n1::20::3::200\n2::10::4::150\n2::30::1::160\n2::20::2::170\n3::30::4::10\n"
MOVIES_DAT = "10::Toy Story (1995)::Animation|Children's|Comedy\n20::GoldenEye (1995)::Action\n30::Café (2001)::Drama\n"
RATINGS_CSV = ("userId,movieId,rating,timestamp\n1,10,5.0,100\n1,20,3.5,200\n2,10,4.0,150\n2,30,0.5,160\n"
               "2,20,2.0,170\n3,30,4.0,10\n")
MOVIES_CSV = ('movieId,title,genres\n10,Toy Story (1995),Animation|Comedy\n20,"American President, The (1995)",'
              "Comedy|Drama|Romance\n30,Untitled,(no genres listed)\n")


def _check_tiny(data) -> None:
    # user 3 has one event: dropped; user 2 is time-ordered 10, 30, 20
    assert data.num_users == 2 and data.num_events == 5
    assert data.sequences["user_id"] == ["1", "2"]
    assert data.vocab.decode_many(data.sequences[1]["item_ids"]) == ["10", "30", "20"]
    assert data.sequences[1]["timestamps"] == [150, 160, 170]
    assert data.item_info["10"]["title"] == "Toy Story"


def test_movielens_100k_folder_and_zip(tmp_path, caplog):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text(U_DATA)
    (folder / "u.item").write_bytes(U_ITEM.encode("latin-1"))
    with caplog.at_level("WARNING"):
        data = load_interactions(folder)
    assert "dropped 1 users with fewer than 2 events" in caplog.text
    _check_tiny(data)
    assert data.name == "ml-100k" and data.num_action_types == 6
    assert data.item_info["10"]["genres"] == ["Animation", "Children's", "Comedy"]
    assert data.item_info["10"]["release_timestamp"] == 788918400
    assert data.item_info["30"]["genres"] == ["Thriller"]
    archive = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(folder / "u.data", "ml-100k/u.data")
        z.write(folder / "u.item", "ml-100k/u.item")
    _check_tiny(load_interactions(archive))
    _check_tiny(load_interactions(folder / "u.data"))


def test_movielens_1m_dat_folder_and_zip(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text(RATINGS_DAT)
    (folder / "movies.dat").write_bytes(MOVIES_DAT.encode("latin-1"))
    data = load_interactions(folder)
    _check_tiny(data)
    assert data.item_info["30"] == {"title": "Café", "year": 2001, "genres": ["Drama"]}  # latin-1 decoded
    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(folder / "ratings.dat", "ml-1m/ratings.dat")
        z.write(folder / "movies.dat", "ml-1m/movies.dat")
    assert detect_format(archive) == "movielens"
    zipped = load_interactions(archive)
    _check_tiny(zipped)
    assert zipped.name == "ml-1m" and zipped.item_info == data.item_info
    # a GroupLens zip unpacked into a parent folder: ratings one level down
    assert load_interactions(tmp_path, format="movielens").num_events == 5


def test_movielens_csv_layout_half_stars(tmp_path):
    folder = tmp_path / "ml-25m"
    folder.mkdir()
    (folder / "ratings.csv").write_text(RATINGS_CSV)
    (folder / "movies.csv").write_text(MOVIES_CSV)
    assert detect_format(folder / "ratings.csv") == "movielens"
    data = load_interactions(folder)
    _check_tiny(data)
    assert data.item_info["20"] == {"title": "American President, The", "year": 1995,
                                    "genres": ["Comedy", "Drama", "Romance"]}
    assert data.item_info["30"] == {"title": "Untitled", "genres": []}
    assert data.sequences[0]["ratings"] == [5.0, 3.5] and data.sequences[0]["action_ids"] == [5, 4]
    assert data.sequences[1]["action_ids"] == [4, 1, 2]  # 0.5 star → action 1
    archive = tmp_path / "ml-25m.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(folder / "ratings.csv", "ml-25m/ratings.csv")
        z.write(folder / "movies.csv", "ml-25m/movies.csv")
    _check_tiny(load_interactions(archive))


# --- generic tables -------------------------------------------------------------------------------------------------

def _table() -> pd.DataFrame:
    return pd.DataFrame({"customer": ["a", "a", "b", "b", "b", "a"], "sku": ["x", "y", "x", "z", "z", "x"],
                         "when": ["2024-01-01 10:00:00", "2024-01-02", "2024-01-01T09:00:00Z", "2024-01-03",
                                  "2024-01-03", "2024-01-01 08:00:00"],
                         "stars": [5, 4, 3, None, None, 2], "kind": ["view", "buy", "view", "view", "view", "buy"]})


COLUMN_MAP = {"user_id": "customer", "item_id": "sku", "timestamp": "when", "rating": "stars", "action": "kind"}


def _check_table(data) -> None:
    assert data.has_timestamps and data.num_users == 2
    a, b = data.sequences[0], data.sequences[1]
    assert data.vocab.decode_many(a["item_ids"]) == ["x", "x", "y"]  # 08:00, 10:00, next day
    assert a["timestamps"][0] == 1704096000  # 2024-01-01 08:00 UTC
    assert a["ratings"] == [2.0, 5.0, 4.0]
    assert a["action_ids"] == [1, 2, 1]  # sorted action names: buy=1, view=2
    assert b["ratings"] == [3.0, 0.0]  # duplicate (b, z, 2024-01-03) removed; absent rating = 0.0
    assert data.num_action_types == 3


def test_csv_and_parquet_with_column_map(tmp_path):
    _table().to_csv(tmp_path / "events.csv", index=False)
    _check_table(load_interactions(tmp_path / "events.csv", column_map=COLUMN_MAP))
    _table().to_csv(tmp_path / "events.tsv", index=False, sep="\t")
    _check_table(load_interactions(tmp_path / "events.tsv", column_map=COLUMN_MAP))
    table = _table()
    table["when"] = pd.to_datetime(table["when"], format="mixed", utc=True)
    table.to_parquet(tmp_path / "events.parquet")
    _check_table(load_interactions(tmp_path / "events.parquet", column_map=COLUMN_MAP))


def test_table_with_canonical_names_and_numeric_times(tmp_path):
    frame = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [5, 6, 5, 7], "timestamp": [3.7, 1.2, 2, 9]})
    frame.to_parquet(tmp_path / "log.parquet")
    data = load_interactions(tmp_path / "log.parquet")
    assert data.vocab.decode_many(data.sequences[0]["item_ids"]) == ["6", "5"]
    assert data.sequences[0]["timestamps"] == [1, 3]  # seconds, floored
    assert data.num_action_types == 0 and data.sequences[0]["ratings"] == [0.0, 0.0]


def test_dedup_and_k_core(tmp_path):
    rows = ["user_id,item_id,timestamp"] + [f"u{u},i{i},{t}" for u, i, t in
                                             [(1, 1, 1), (1, 1, 1), (1, 2, 2), (2, 1, 1), (2, 2, 2), (2, 3, 3),
                                              (3, 1, 1), (3, 2, 2)]]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    assert load_interactions(tmp_path / "log.csv").num_events == 7
    assert load_interactions(tmp_path / "log.csv", dedup=False).num_events == 8
    cored = load_interactions(tmp_path / "log.csv", k_core=2)  # i3 has 1 event → gone; every user keeps 2
    assert cored.vocab.raw_ids == ["i1", "i2"] and cored.num_events == 6
