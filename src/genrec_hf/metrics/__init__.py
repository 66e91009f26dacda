"""`evaluate` modules shipped inside the package (loadable by path, offline): see `RANKING_METRIC_PATH`."""

from pathlib import Path

RANKING_METRIC_PATH = str(Path(__file__).parent / "genrec_ranking" / "genrec_ranking.py")
