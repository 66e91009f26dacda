"""Embedding export: item and user vectors of a saved model, as safetensors and Parquet, with a manifest.

    genrec-hf export-embeddings MODEL_DIR --data SOURCE --out DIR [--align_to PREV_DIR] [--overwrite]

Files (rows aligned between the two formats):
  * `items.safetensors` (`item_vectors`, (N, d) float32) and `items.parquet` (`item_id`, `index`, `vector`): one row
    per raw item id in `item_vocab.json` order (index 1..N; padding is left out). `item_vocab.json` is copied.
  * `users.safetensors` (`user_vectors`, (U, d)) and `users.parquet` (`user_id`, `num_events`, `vector`): the user
    embedding of each user's full history in the data (items the model does not know are dropped, users left with
    no known event are skipped and counted; the model reads the most recent `max_position_embeddings` events).
  * `manifest.json`: model fingerprint (sha256 of model.safetensors), vocab hash, created_at, package version,
    scoring rule (temperature, L2 normalisation), dims, counts and, with `align_to`, the alignment and its drift.

Alignment: retrained models embed items in an arbitrary rotation of the previous space, so downstream consumers
of the vectors see drift that is not a change of meaning. `align_to` fits the orthogonal Procrustes rotation R
minimising ||A R - B|| over the items shared with the previous export (A: these vectors, B: the previous ones) and
applies it to items and users; dot products and norms, so every score, are unchanged. A d-dimensional rotation has
d(d-1)/2 free parameters: fitted on fewer than d items it can map them onto anything, so at least d items to fit
it on plus a fifth of the shared items held out are required. The manifest records the mean cosine distance on
the held-out shared items before and after a rotation fitted without them (`drift_before`, `drift_after`: what
alignment does for items it did not see), and on all shared items after the rotation applied (fitted on all of
them; `drift_after_fit`, in-sample).

An adapter folder is exported merged onto its base, with the base's vocabulary. The previous export given to
`align_to` is read and checked (format, files, rows) before anything is computed.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.numpy import load_file, save_file
from scipy.linalg import orthogonal_procrustes

from .._version import __version__
from ..adapters import adapter_base_dir, is_adapter_folder
from ..cards import upload_to_hub
from ..data import VOCAB_FILE, ItemVocab, load_interactions
from ..data.interactions import flat_column, row_lengths
from ..integrity import file_sha256
from ..loading import load_saved_model
from ..models.genrec import GenRecForNextItemPrediction
from ..models.genrec.modeling_genrec import history_inputs
from ..training.run_folder import refuse_dangling_link

MANIFEST = "manifest.json"
EXPORT_FILES = ("items.safetensors", "items.parquet", "users.safetensors", "users.parquet", VOCAB_FILE, MANIFEST)
FORMAT = "genrec_hf.embeddings"
FORMAT_VERSION = 1


@dataclass
class Export:
    """An export folder read back: raw ids, vectors and the manifest."""

    item_ids: list[str]
    item_vectors: np.ndarray
    user_ids: list[str]
    user_vectors: np.ndarray
    manifest: dict[str, Any]


def read_export(directory: str | Path) -> Export:
    """Read an export folder (the Parquet files carry the ids; vectors come from safetensors), checking that it is
    one: a manifest of this format and version, every file present and readable, ids and vectors row for row."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not an embedding export (no {MANIFEST}); write one with "
                                "`genrec-hf export-embeddings`.")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); expected the manifest of an embedding export.") \
            from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("format_version") != \
            FORMAT_VERSION:
        found = (f"format {manifest.get('format')!r}, format_version {manifest.get('format_version')!r}"
                 if isinstance(manifest, dict) else f"a {type(manifest).__name__}")
        raise ValueError(f"{path} holds {found}; this genrec_hf reads embedding exports of format {FORMAT!r}, "
                         f"format_version {FORMAT_VERSION}.")
    missing = [name for name in EXPORT_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} is an incomplete embedding export: {', '.join(missing)} "
                                f"{'is' if len(missing) == 1 else 'are'} missing (an export holds "
                                f"{', '.join(EXPORT_FILES)}).")
    columns = {}
    for name, column in (("items.parquet", "item_id"), ("users.parquet", "user_id")):
        try:
            columns[name] = pq.read_table(directory / name, columns=[column]).column(column).to_pylist()
        except (pa.ArrowException, OSError, KeyError) as error:
            raise ValueError(f"{directory / name}: not an export's Parquet file with a {column!r} column "
                             f"({error}).") from None
    vectors = {}
    for name, key in (("items.safetensors", "item_vectors"), ("users.safetensors", "user_vectors")):
        try:
            vectors[name] = load_file(directory / name)[key]
        except Exception as error:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
            raise ValueError(f"{directory / name}: not an export's safetensors file with {key!r} ({error}).") \
                from None
    for ids, name in ((columns["items.parquet"], "items"), (columns["users.parquet"], "users")):
        rows = vectors[f"{name}.safetensors"]
        if rows.ndim != 2 or len(ids) != rows.shape[0]:
            raise ValueError(f"{directory}: {name}.parquet has {len(ids)} rows but {name}.safetensors holds vectors "
                             f"of shape {tuple(rows.shape)}; the export's files do not belong together.")
    return Export(columns["items.parquet"], vectors["items.safetensors"], columns["users.parquet"],
                  vectors["users.safetensors"], manifest)


def mean_cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of 1 - cos(a_i, b_i) over rows (0 for identical directions, 1 for orthogonal)."""
    na = np.linalg.norm(a, axis=1).clip(min=1e-12)
    nb = np.linalg.norm(b, axis=1).clip(min=1e-12)
    return float(np.mean(1.0 - (a * b).sum(axis=1) / (na * nb)))


def procrustes_rotation(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(d, d) orthogonal R minimising ||source @ R - target||_F (scipy's orthogonal Procrustes)."""
    rotation, _ = orthogonal_procrustes(source.astype(np.float64), target.astype(np.float64))
    return rotation


def alignment_minimum(dim: int) -> int:
    """The fewest shared items a `dim`-dimensional alignment needs: `dim` to fit the rotation on, plus a fifth of
    the shared items (at least one) held out to measure its drift on."""
    shared = dim + 1
    while shared - _held_out_count(shared) < dim:
        shared += 1
    return shared


def _held_out_count(shared: int) -> int:
    return max(1, shared // 5)


def align_embeddings(item_ids: list[str], item_vectors: np.ndarray, user_vectors: np.ndarray,
                     reference_ids: list[str], reference_vectors: np.ndarray, *, seed: int = 0,
                     ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Rotate items and users onto a reference export through the shared items; returns them + drift stats.

    The drift is reported on a held-out fifth of the shared items (a rotation fitted on the others), so a rotation
    that only fits its own points is not mistaken for an aligned space; the rotation applied is fitted on all of
    them. Fewer shared items than `alignment_minimum(dim)` are refused."""
    dim = item_vectors.shape[1]
    if dim != reference_vectors.shape[1]:
        raise ValueError(f"Cannot align: these vectors have {dim} dims, the previous export "
                         f"{reference_vectors.shape[1]}.")
    position = {raw: i for i, raw in enumerate(reference_ids)}
    shared = [(i, position[raw]) for i, raw in enumerate(item_ids) if raw in position]
    minimum = alignment_minimum(dim)
    if len(shared) < minimum:
        raise ValueError(f"Cannot align: {len(shared)} item ids are shared with the previous export, and a "
                         f"{dim}-dimensional rotation needs at least {minimum} ({dim} to fit it on, the rest to "
                         "measure its drift on); on fewer it can map any points onto any others.")
    mine, theirs = (np.array(side) for side in zip(*shared))
    source, target = item_vectors[mine], reference_vectors[theirs]
    held = np.zeros(len(shared), bool)
    held[np.random.default_rng(seed).permutation(len(shared))[:_held_out_count(len(shared))]] = True
    held_out_rotation = procrustes_rotation(source[~held], target[~held])
    rotation = procrustes_rotation(source, target)
    items = (item_vectors.astype(np.float64) @ rotation).astype(np.float32)
    users = (user_vectors.astype(np.float64) @ rotation).astype(np.float32)
    stats = {"shared_items": len(shared), "fit_items": int((~held).sum()), "held_out_items": int(held.sum()),
             "drift_before": mean_cosine_distance(source[held], target[held]),
             "drift_after": mean_cosine_distance(source[held] @ held_out_rotation, target[held]),
             "drift_after_fit": mean_cosine_distance(items[mine], target),
             "metric": "mean cosine distance (1 - cos); drift_before / drift_after: held-out shared items, rotation "
                       "fitted on the others; drift_after_fit: all shared items, the rotation applied"}
    return items, users, stats


@torch.no_grad()
def user_vectors_from_data(model: GenRecForNextItemPrediction, vocab: ItemVocab, source: str, *,
                           format: str | None = None, batch_size: int = 256,
                           ) -> tuple[list[str], np.ndarray, np.ndarray, dict[str, int]]:
    """(user ids, (U, d) user vectors, (U,) known events, counts) of every user of `source` with a known event.

    A user's vector is `model`'s user embedding of their known events (the most recent `max_position_embeddings`).
    """
    data = load_interactions(source, format=format, min_user_events=1)
    lookup = np.array([0] + [vocab.encode(raw) if raw in vocab else 0 for raw in data.vocab.raw_ids], np.int64)
    if not (lookup[1:] > 0).any():
        raise ValueError(f"None of the {data.vocab.num_items} items of {data.name} is in the model's "
                         f"{VOCAB_FILE}: the data and the model use different item ids.")
    items, rows = flat_column(data.sequences, "item_ids")
    times, _ = flat_column(data.sequences, "timestamps")
    actions, _ = flat_column(data.sequences, "action_ids")
    mapped = lookup[items]
    known = mapped > 0
    offsets = np.concatenate([[0], np.cumsum(row_lengths(data.sequences))])
    user_ids_all = data.sequences["user_id"]
    use_actions = model.config.num_action_types > 0
    histories: list[tuple[str, list[int], list[int], list[int]]] = []
    for u in range(len(user_ids_all)):
        span = slice(offsets[u], offsets[u + 1])
        keep = known[span]
        if keep.any():
            histories.append((user_ids_all[u], mapped[span][keep].tolist(), times[span][keep].tolist(),
                              actions[span][keep].tolist()))
    vectors, user_ids, counts = [], [], []
    for start in range(0, len(histories), batch_size):
        chunk = histories[start:start + batch_size]
        inputs = history_inputs([h[1] for h in chunk], model.config.max_position_embeddings,
                                timestamps=[h[2] for h in chunk],
                                action_ids=[h[3] for h in chunk] if use_actions else None,
                                device=model.item_vectors.device)
        queries = model(**inputs).user_embeddings
        vectors.append(queries.float().cpu().numpy())
        user_ids.extend(h[0] for h in chunk)
        counts.extend(len(h[1]) for h in chunk)
    dim = model.item_vectors.shape[1]
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    stats = {"users": len(user_ids), "users_skipped": len(user_ids_all) - len(user_ids),
             "events": int(known.sum()), "events_unknown_items": int((~known).sum())}
    return user_ids, matrix.astype(np.float32), np.array(counts, np.int64), stats


def _vector_table(id_name: str, ids: list[str], extra: dict[str, np.ndarray], vectors: np.ndarray) -> pa.Table:
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1), pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    return pa.table({id_name: pa.array(ids, pa.string()), **{k: pa.array(v) for k, v in extra.items()},
                     "vector": column})


def _weights_file(folder: Path) -> Path:
    """The weights an export's fingerprint names: model.safetensors, or adapter_model.safetensors of an adapter."""
    return folder / ("adapter_model.safetensors" if is_adapter_folder(folder) else "model.safetensors")


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    refuse_dangling_link(out_dir, "--out")
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir} exists and is not a folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already holds files (an earlier export?); pass --overwrite to "
                                  "replace the export, or choose another --out.")
        foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in EXPORT_FILES)
        if foreign:
            raise FileExistsError(f"{out_dir} holds files that are not an export ({', '.join(foreign[:5])}); "
                                  "refusing to overwrite it.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)  # like `mkdir -p`: runs/embeddings/v1 on a fresh checkout


def export_embeddings(model_dir: str | Path, source: str, out_dir: str | Path, *, format: str | None = None,
                      overwrite: bool = False, align_to: str | Path | None = None,
                      batch_size: int = 256) -> dict[str, Any]:
    """Write the item and user vectors of the model in `model_dir` on `source` to `out_dir`; returns the manifest.

    An existing export is replaced only with `overwrite=True` (a folder holding other files never is). The files are
    written to a temporary folder next to `out_dir` first, so a failed export leaves no half-written folder.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    reference = read_export(align_to) if align_to is not None else None
    vocab_dir = adapter_base_dir(model_dir) if is_adapter_folder(model_dir) else model_dir  # an adapter: its base's
    if not (vocab_dir / VOCAB_FILE).is_file():
        raise FileNotFoundError(f"{vocab_dir} has no {VOCAB_FILE}: its item vectors could not be given raw ids.")
    model, vocab = load_saved_model(model_dir)
    if reference is not None and model.item_vectors.shape[1] != reference.item_vectors.shape[1]:
        raise ValueError(f"Cannot align: {model_dir} has {model.item_vectors.shape[1]}-dim vectors, the previous "
                         f"export {align_to} {reference.item_vectors.shape[1]}.")
    config = model.config
    item_ids = vocab.raw_ids
    item_vectors = model.item_vectors.detach()[1:].float().cpu().numpy()
    user_ids, user_vectors, num_events, counts = user_vectors_from_data(model, vocab, source, format=format,
                                                                        batch_size=batch_size)
    alignment = None
    if reference is not None:
        item_vectors, user_vectors, alignment = align_embeddings(item_ids, item_vectors, user_vectors,
                                                                 reference.item_ids, reference.item_vectors)
        alignment = {"reference": str(align_to), "reference_model_sha256": reference.manifest.get("model_sha256"),
                     **alignment}
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "genrec_hf_version": __version__,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_dir": str(model_dir), "model_sha256": file_sha256(_weights_file(model_dir)),
        **({"base_dir": str(vocab_dir), "base_model_sha256": file_sha256(vocab_dir / "model.safetensors")}
           if vocab_dir != model_dir else {}),
        "item_vocab_sha256": file_sha256(vocab_dir / VOCAB_FILE), "data": {"source": str(source), "format": format},
        "scoring": {"score_temperature": config.score_temperature, "l2_normalize_scores": config.l2_normalize_scores,
                    "rule": "score = user · item / score_temperature (cosine when l2_normalize_scores)"},
        "dims": {"item": int(item_vectors.shape[1]), "user": int(user_vectors.shape[1])},
        "counts": {"items": len(item_ids), **counts},
        "rows": "items in item_vocab.json order (index 1..N); users in users.parquet order",
        "alignment": alignment,
    }
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({"item_vectors": np.ascontiguousarray(item_vectors)}, tmp / "items.safetensors",
                  metadata={"format": FORMAT, "rows": "item_vocab.json order"})
        save_file({"user_vectors": np.ascontiguousarray(user_vectors)}, tmp / "users.safetensors",
                  metadata={"format": FORMAT, "rows": "users.parquet order"})
        pq.write_table(_vector_table("item_id", item_ids, {"index": np.arange(1, len(item_ids) + 1)}, item_vectors),
                       tmp / "items.parquet")
        pq.write_table(_vector_table("user_id", user_ids, {"num_events": num_events}, user_vectors),
                       tmp / "users.parquet")
        shutil.copyfile(vocab_dir / VOCAB_FILE, tmp / VOCAB_FILE)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        out_dir.mkdir(exist_ok=True)
        for name in EXPORT_FILES:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def push_export_to_hub(export_dir: str | Path, repo_id: str, *, token: str | None = None,
                       private: bool = False) -> str:
    """Upload an export (vectors, Parquet tables, item_vocab.json, manifest.json; nothing else in the folder) to the
    Hub dataset repo `repo_id`; returns the commit URL. The export is data, so it goes to a dataset repo."""
    read_export(export_dir)  # a folder that is not a complete export fails here, naming what is missing
    return upload_to_hub(export_dir, repo_id, allow_patterns=EXPORT_FILES, repo_type="dataset", token=token,
                         private=private, commit_message="Upload GenRec item and user embeddings (genrec_hf)")
