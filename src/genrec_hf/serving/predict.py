"""Batch prediction: the top-k items of every user of a prepared folder, written as sharded Parquet.

    genrec-hf predict MODEL_DIR --data PREPARED_DIR --k 100 --output_dir OUT [--adapter DIR] [--embeddings]
    accelerate launch -m genrec_hf.cli predict ...        (each process predicts its own shards)

This is the cached-candidate-list job of large recommenders: a model (or a task adapter on its base) scores every
user's full history once, and a serving layer reads the lists until the next refresh. Input shard i of the prepared
folder becomes output part i (`part-00003-of-00016.parquet`: `user_id`, `item_ids` (raw ids, best first), `scores`,
optionally `user_embedding`), written to a temporary name and renamed when complete, so an interrupted job resumes
shard by shard: a part that is there and was written by the same job (model, adapter, data, k and options: the
`job` fingerprint in the part's Parquet metadata) is kept, anything else is redone. Process r of n predicts the parts
r, r + n, ...; the last process to finish writes `predictions.json` (the job, the model revision, the vocabulary hash,
the parts with their users and sha256).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from .._version import __version__
from ..data import VOCAB_FILE, ItemVocab
from ..data.prepared import PreparedData, open_prepared
from ..integrity import MANIFEST_FILE, file_sha256
from ..loading import load_model, load_saved_model
from ..models.genrec.modeling_genrec import history_inputs
from ..models.genrec.scoring import history_exclusions
from .index import KINDS, FaissIndex

logger = logging.getLogger(__name__)
PREDICTIONS_FILE = "predictions.json"
PART_METADATA_KEY = b"genrec_hf.predict"
INDEXES = ("exact", *KINDS)


@dataclass
class PredictOutcome:
    output_dir: Path
    parts_written: int
    parts_kept: int  # already complete from an earlier run of the same job
    users: int  # users predicted by this process (kept parts included)
    seconds: float
    manifest: dict[str, Any] | None  # predictions.json, when this process wrote it


def part_name(index: int, total: int) -> str:
    return f"part-{index:05d}-of-{total:05d}.parquet"


def _model_revision(folder: Path) -> str:
    """The saved weights' identity: the sha256 of their manifest (of the weights file when there is none)."""
    for name in (MANIFEST_FILE, "adapter_model.safetensors", "model.safetensors"):
        digest = file_sha256(folder / name)
        if digest:
            return digest
    raise FileNotFoundError(f"{folder}: no weights to predict with (no {MANIFEST_FILE} or model.safetensors).")


def _index_lookup(data_vocab: ItemVocab, model_vocab: ItemVocab) -> np.ndarray:
    """(V_data,) model index of each prepared item index (0: padding, or an item the model does not know)."""
    lookup = np.zeros(len(data_vocab), dtype=np.int64)
    for index, raw in enumerate(data_vocab.raw_ids, start=1):
        if raw in model_vocab:
            lookup[index] = model_vocab.encode(raw)
    return lookup


def _rank_layout(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): given, else the launcher's (accelerate / torchrun set RANK and WORLD_SIZE)."""
    if rank is None or world_size is None:
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} of {world_size} processes: expected 0 <= rank < world size.")
    return rank, world_size


def predict(model_dir: str | Path, data: str | Path, output_dir: str | Path, *, k: int = 100,
            adapter: str | Path | None = None, users: Iterable[str] | None = None, embeddings: bool = False,
            index: str = "exact", index_options: dict[str, Any] | None = None, exclude_seen: bool = True,
            batch_size: int = 256, overwrite: bool = False,
            verify: bool = True, rank: int | None = None, world_size: int | None = None,
            progress: bool = True) -> PredictOutcome:
    """Top-`k` items of every user (or of `users`) of the prepared folder `data` under the model in `model_dir`
    (with the task `adapter` merged onto it when given), written to `output_dir` (module docstring). `index_options`
    go to `FaissIndex.build` (nlist, nprobe, ef_search, ...) when `index` is a faiss kind."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}; expected a positive integer number of items per user.")
    if index not in INDEXES:
        raise ValueError(f"index={index!r}; expected one of {INDEXES}.")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; expected a positive integer.")
    started = time.monotonic()
    rank, world_size = _rank_layout(rank, world_size)
    prepared = open_prepared(data)
    model_dir = Path(model_dir)
    if adapter is not None:
        model, vocab = load_saved_model(adapter, base=model_dir, verify=verify)
    else:
        model, vocab = load_model(model_dir, verify=verify)
    model.eval()
    wanted = None if users is None else {str(u) for u in users}
    job = _job(model_dir, adapter, prepared, k=k, embeddings=embeddings, index=index,
               index_options=dict(index_options or {}), exclude_seen=exclude_seen, users=wanted)
    output_dir = Path(output_dir)
    _claim_output(output_dir, job, overwrite and rank == 0)
    lookup = _index_lookup(prepared.vocab, vocab)
    search = _searcher(model, index, k, index_options or {})
    written = kept = predicted = 0
    parts = range(rank, prepared.num_shards, world_size)
    bar = tqdm(parts, desc=f"predict (rank {rank})", disable=not progress)
    for shard in bar:
        path = output_dir / part_name(shard, prepared.num_shards)
        done = _finished_part(path, job)
        if done is not None:
            kept += 1
            predicted += done
            continue
        table = _predict_shard(prepared, shard, model, vocab, lookup, search, k=k, wanted=wanted,
                               embeddings=embeddings, exclude_seen=exclude_seen, batch_size=batch_size)
        _write_part(table, path, job)
        written += 1
        predicted += table.num_rows
    manifest = _finish(output_dir, prepared, job, model_dir, adapter, vocab)
    logger.info("predict rank %d/%d: %d parts written, %d kept, %d users in %.1f s%s", rank, world_size, written,
                kept, predicted, time.monotonic() - started, "; predictions.json written" if manifest else "")
    return PredictOutcome(output_dir=output_dir, parts_written=written, parts_kept=kept, users=predicted,
                          seconds=time.monotonic() - started, manifest=manifest)


def _job(model_dir: Path, adapter: str | Path | None, prepared: PreparedData, **options: Any) -> dict[str, Any]:
    """What makes a part reusable: the weights, the data and the options (equal job = equal parts)."""
    users = options.pop("users")
    return {"model": _model_revision(model_dir), "adapter": _model_revision(Path(adapter)) if adapter else None,
            "data_vocab": prepared.manifest["vocab"]["sha256"],
            "data_shards": [entry["sha256"] for entry in prepared.manifest["shards"]],
            "users": None if users is None else hashlib.sha256("\n".join(sorted(users)).encode()).hexdigest(),
            **options}


def _claim_output(output_dir: Path, job: dict[str, Any], overwrite: bool) -> None:
    """Create the output folder, or reuse one of the same job (a resume); refuse anything else without overwrite."""
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"--output_dir {output_dir} exists and is not a folder.")
    output_dir.mkdir(parents=True, exist_ok=True)
    job_file = output_dir / "predict_job.json"
    if job_file.is_file():
        if json.loads(job_file.read_text()) == job:
            return
        if not overwrite:
            raise FileExistsError(f"{output_dir} holds predictions of another job (other model, data, k or options "
                                  "in predict_job.json); pass --overwrite to replace them or choose another "
                                  "--output_dir.")
        for stale in [*output_dir.glob("part-*.parquet"), output_dir / PREDICTIONS_FILE]:
            stale.unlink(missing_ok=True)
    elif any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} is not empty and holds no predictions; choose an empty --output_dir "
                              "(or pass --overwrite).")
    tmp = job_file.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(job, indent=2, sort_keys=True))
    os.replace(tmp, job_file)


def _finished_part(path: Path, job: dict[str, Any]) -> int | None:
    """Users of a complete part written by the same job, or None (absent, unreadable or another job's)."""
    if not path.is_file():
        return None
    try:
        metadata = pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError):
        return None
    raw = (metadata.metadata or {}).get(PART_METADATA_KEY)
    if not raw or json.loads(raw).get("job") != job:
        return None
    return metadata.num_rows


def _searcher(model: torch.nn.Module, index: str, k: int, options: dict[str, Any]):
    """(queries, exclude) -> TopItems: the model's exact chunked top-k, or a faiss index built once."""
    if index == "exact":
        return lambda queries, exclude: model.topk(queries, k, exclude=exclude)
    faiss_index = FaissIndex.build(model.item_vectors.detach(), kind=index, temperature=model.config.score_temperature,
                                   l2_normalize=model.config.l2_normalize_scores, **options)
    return lambda queries, exclude: faiss_index.search(queries, k, exclude=exclude)


def _batches(table: pa.Table, size: int) -> Iterator[pa.Table]:
    for start in range(0, table.num_rows, size):
        yield table.slice(start, size)


@torch.no_grad()
def _predict_shard(prepared: PreparedData, shard: int, model: torch.nn.Module, vocab: ItemVocab,
                   lookup: np.ndarray, search, *, k: int, wanted: set[str] | None, embeddings: bool,
                   exclude_seen: bool, batch_size: int) -> pa.Table:
    table = prepared.read_shard(shard)
    if wanted is not None:
        keep = np.fromiter((u in wanted for u in table["user_id"].to_pylist()), bool, table.num_rows)
        table = table.filter(pa.array(keep))
    max_length = model.config.max_position_embeddings
    columns: dict[str, list] = {"user_id": [], "item_ids": [], "scores": []}
    if embeddings:
        columns["user_embedding"] = []
    raw_ids = np.array([""] + vocab.raw_ids, dtype=object)
    for batch in _batches(table, batch_size):
        histories, times, actions, names = [], [], [], []
        for user, items, stamps, acts in zip(batch["user_id"].to_pylist(), batch["item_ids"].to_pylist(),
                                             batch["timestamps"].to_pylist(), batch["action_ids"].to_pylist()):
            mapped = lookup[np.asarray(items, dtype=np.int64)]
            known = mapped > 0  # events of items the model does not know are left out of its history
            if not known.any():
                continue
            histories.append(mapped[known].tolist())
            times.append(np.asarray(stamps, dtype=np.int64)[known].tolist())
            actions.append(np.asarray(acts, dtype=np.int64)[known].tolist())
            names.append(user)
        if not histories:
            continue
        inputs = history_inputs(histories, max_length, timestamps=times,
                                action_ids=actions if model.config.num_action_types else None,
                                device=model.item_vectors.device)
        queries = model(**inputs).user_embeddings
        top = search(queries, history_exclusions(histories, queries.device) if exclude_seen else None)
        for row, user in enumerate(names):
            found = top.items[row] > 0
            columns["user_id"].append(user)
            columns["item_ids"].append(raw_ids[top.items[row][found].cpu().numpy()].tolist())
            columns["scores"].append(top.scores[row][found].float().cpu().tolist())
            if embeddings:
                columns["user_embedding"].append(queries[row].float().cpu().tolist())
    schema = [("user_id", pa.string()), ("item_ids", pa.list_(pa.string())), ("scores", pa.list_(pa.float32()))]
    if embeddings:
        schema.append(("user_embedding", pa.list_(pa.float32())))
    return pa.table(columns, schema=pa.schema(schema))


def _write_part(table: pa.Table, path: Path, job: dict[str, Any]) -> None:
    """Write a part under a temporary name and rename it: a part that exists is complete."""
    metadata = {PART_METADATA_KEY: json.dumps({"job": job, "genrec_hf": __version__}).encode()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _finish(output_dir: Path, prepared: PreparedData, job: dict[str, Any], model_dir: Path,
            adapter: str | Path | None, vocab: ItemVocab) -> dict[str, Any] | None:
    """Write predictions.json once every part is there (whichever process completes the set writes it)."""
    parts = []
    for shard in range(prepared.num_shards):
        path = output_dir / part_name(shard, prepared.num_shards)
        users = _finished_part(path, job)
        if users is None:
            return None  # another process is still on its parts
        parts.append({"file": path.name, "num_users": users, "sha256": file_sha256(path)})
    manifest = {"format": "genrec_hf.predictions", "job": job, "model_dir": str(model_dir),
                "adapter": None if adapter is None else str(adapter), "data": str(prepared.path),
                "vocab_sha256": file_sha256(model_dir / VOCAB_FILE), "num_users": sum(p["num_users"] for p in parts),
                "parts": parts, "genrec_hf": __version__}
    tmp = output_dir / f".{PREDICTIONS_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, output_dir / PREDICTIONS_FILE)
    return manifest


def read_predictions(output_dir: str | Path) -> pa.Table:
    """Every part of a finished predict job as one table (checked against predictions.json)."""
    output_dir = Path(output_dir)
    path = output_dir / PREDICTIONS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{output_dir} has no {PREDICTIONS_FILE}: the predict job did not finish (run the "
                                "same command again to complete it).")
    manifest = json.loads(path.read_text())
    tables = []
    for part in manifest["parts"]:
        if file_sha256(output_dir / part["file"]) != part["sha256"]:
            raise ValueError(f"{output_dir / part['file']}: differs from {PREDICTIONS_FILE} (sha256); predict again.")
        tables.append(pq.read_table(output_dir / part["file"]))
    return pa.concat_tables(tables)
