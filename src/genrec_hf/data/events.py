"""What a loader hands to the shared builder: events + item metadata + whether timestamps are real."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class LoadedEvents:
    """Output of every loader: `events` has `user_id`, `item_id` (str), `timestamp` (int64), `rating` (float, NaN
    where absent) and optionally `action` (int64, 0 = unknown), in file order."""

    events: pd.DataFrame
    item_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    has_timestamps: bool = True
    name: str = "interactions"
