"""`genrec-hf prepare`: raw event logs → a prepared folder of per-user sequence shards (see `..prepared`).

    from genrec_hf.data.prepare import prepare_events
    prepared = prepare_events("logs/*.parquet", "prepared/", column_map={"user_id": "uid", "item_id": "sku"},
                              engine="duckdb", memory_limit="2GB")
    data = prepared.to_interactions()          # or load_interactions("prepared/")
"""

from ..prepared import PreparedData, PreparedFolderError, open_prepared
from .generate import generate_event_log
from .pipeline import ENGINES, SPLITS, choose_cold_items, prepare_events, split_spec

__all__ = ["ENGINES", "SPLITS", "PreparedData", "PreparedFolderError", "choose_cold_items", "generate_event_log",
           "open_prepared", "prepare_events", "split_spec"]
