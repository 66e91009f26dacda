"""The scaling ladder (`genrec-hf scaling run`): pre-train a list of presets with everything but the backbone held
fixed, evaluate every downstream task on the same users, append one CSV row per (size, task) for
`genrec-hf scaling fit`.

    recipe.py   the ladder recipe (a pre-training and a fine-tune recipe as templates)
    shared.py   what every size shares, built once (log, tasks, pre-training cut, item tower)
    runner.py   `run_ladder`: bases through the run pipeline, tasks through fine-tuning, rows with per-user ranks
    cold.py     the `<task>/cold` slice rows, derived from the saved ranks
    results.py  the append-only CSV and the ladder's folder markers
"""

from .cold import add_cold_slices, cold_slice_ranks
from .recipe import LadderRecipe, load_ladder_recipe
from .results import BASE_DONE, COLD_SLICE, MARKER, ResultsCSV, csv_columns
from .runner import LadderOutcome, rerun_tasks, run_ladder
from .shared import LadderData, prepare_shared

__all__ = ["BASE_DONE", "COLD_SLICE", "MARKER", "LadderData", "LadderOutcome", "LadderRecipe", "ResultsCSV",
           "add_cold_slices", "cold_slice_ranks", "csv_columns", "load_ladder_recipe", "prepare_shared",
           "rerun_tasks", "run_ladder"]
