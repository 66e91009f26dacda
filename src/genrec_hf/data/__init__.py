"""Data pipeline: event logs → `InteractionData` (per-user sequences + `ItemVocab`) → splits → model batches.

    data = load_interactions("path/to/ml-100k")               # or a MovieLens zip, csv/parquet, "synthetic"
    splits = leave_one_out(data)                                 # or time_split(data, quantile=0.9)
    train_rows = sliding_windows(splits["train"], max_length=50)
    batch = NextItemCollator(50, mode="train")([train_rows[0], train_rows[1]])
"""

from .collators import IGNORE_INDEX, NextItemCollator, sliding_windows
from .events import LoadedEvents
from .interactions import SEQUENCE_FEATURES, InteractionData, build_interactions, remap_to_vocab
from .load import FORMATS, detect_format, load_interactions, read_events
from .movielens import load_movielens
from .mtp import MultiTokenTargets
from .recbole import load_recbole
from .sequence_text import load_sequence_text
from .splits import leave_one_out, time_split
from .synthetic import generate_synthetic
from .tabular import load_table
from .vocab import VOCAB_FILE, ItemVocab, save_item_tokenizer

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "SEQUENCE_FEATURES",
    "VOCAB_FILE",
    "InteractionData",
    "ItemVocab",
    "LoadedEvents",
    "MultiTokenTargets",
    "NextItemCollator",
    "build_interactions",
    "detect_format",
    "generate_synthetic",
    "leave_one_out",
    "load_interactions",
    "load_movielens",
    "load_recbole",
    "load_sequence_text",
    "load_table",
    "read_events",
    "remap_to_vocab",
    "save_item_tokenizer",
    "sliding_windows",
    "time_split",
]
