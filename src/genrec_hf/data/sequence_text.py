"""One sequence per line, `user item1 item2 ...` in time order (S3-Rec / P5 / TIGER Amazon format).

There are no timestamps: event order 0, 1, 2, ... stands in for time (`has_timestamps=False`). A
`<stem>_item2attributes.json` next to the file ({item: [attribute ids]}) becomes `item_info[item]["attributes"]`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._parsing import require_path
from .events import LoadedEvents

logger = logging.getLogger(__name__)


def load_sequence_text(source: str | Path) -> LoadedEvents:
    """Events of a `user item1 item2 ...` file (+ item attributes when the S3-Rec json sits next to it)."""
    path = Path(source)
    require_path(path, "sequence file")
    if path.is_dir():
        candidates = sorted(path.glob("*.txt"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"Expected one `user item1 item2 ...` .txt file in {path}; found "
                                    f"{[p.name for p in candidates]}.")
        path = candidates[0]
    users: list[str] = []
    items: list[str] = []
    positions: list[int] = []
    first_line: dict[str, int] = {}
    no_items = 0
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            user = tokens[0]
            if user in first_line:
                raise ValueError(f"{path}, line {line_number}: user {user!r} already has a sequence on line "
                                 f"{first_line[user]}; expected one line per user.")
            first_line[user] = line_number
            if len(tokens) == 1:
                no_items += 1
            users.extend([user] * (len(tokens) - 1))
            items.extend(tokens[1:])
            positions.extend(range(len(tokens) - 1))
    if not first_line:
        raise ValueError(f"{path} is empty; expected lines of `user item1 item2 ...`.")
    if no_items:
        logger.warning("%s: %d users have no items and are dropped", path.name, no_items)
    if not items:
        raise ValueError(f"{path}: no line has items; expected lines of `user item1 item2 ...`.")
    events = pd.DataFrame({"user_id": users, "item_id": items, "timestamp": np.asarray(positions, dtype=np.int64),
                           "rating": np.nan})
    return LoadedEvents(events=events, item_info=_attributes(path), has_timestamps=False, name=path.stem)


def _attributes(path: Path) -> dict[str, dict[str, Any]]:
    attributes = path.with_name(f"{path.stem}_item2attributes.json")
    if not attributes.is_file():
        return {}
    try:
        raw = json.loads(attributes.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{attributes}: not valid JSON ({error}); expected {{item id: [attribute ids]}}.") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{attributes}: expected a JSON object {{item id: [attribute ids]}}.")
    return {str(item): {"attributes": list(values) if isinstance(values, list) else [values]}
            for item, values in raw.items()}
