"""`genrec-hf` command line: train, finetune, evaluate, recommend, export-embeddings, serve, prepare, card,
scaling fit/run.

Every command has `--help`. Errors a user can fix (missing file, bad column, unknown item, unwritable folder,
unreadable weights) are printed as one clear line and exit with status 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from safetensors import SafetensorError

from ._version import __version__

logger = logging.getLogger("genrec_hf")


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from .training import load_recipe, parse_override_args, train

    overrides = parse_override_args(extra)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    recipe = load_recipe(args.recipe, overrides)
    resume: str | bool | None = args.resume_from_checkpoint
    if resume == "latest":
        resume = True
    outcome = train(recipe, overwrite_output_dir=args.overwrite_output_dir, resume_from_checkpoint=resume)
    if not outcome.is_main_process:
        return 0
    _print_metrics(outcome.metrics, recipe.output_dir)
    _print_examples(outcome, recipe.evaluation.num_examples)
    return 0


def _print_metrics(metrics: dict[str, Any], output_dir: str) -> None:
    test = metrics["test"]
    keys = [k for k in ("mrr", "hr@10", "ndcg@10", "hr@50") if k in test]
    print(f"\nTest ({metrics['protocol']}) on {metrics['dataset']}: "
          + ", ".join(f"{k} {test[k]:.4f}" for k in keys))
    popularity = metrics.get("popularity_baseline", {}).get("test")
    if popularity:
        print("Most-popular baseline, same protocol: " + ", ".join(f"{k} {popularity[k]:.4f}" for k in keys))
    print(f"Model, item_vocab.json, metrics.json and README.md (model card) written to {output_dir}")


def _print_examples(outcome: Any, num_examples: int) -> None:
    from .serving import Recommender

    data = outcome.data
    recommender = Recommender(outcome.model, data.vocab)
    for row in data.sequences.select(range(min(num_examples, len(data.sequences)))):
        history = [data.vocab.decode(i) for i in row["item_ids"]]
        recs = recommender.recommend(history, k=5)
        shown = ", ".join(_label(r.item_id, r.title) for r in recs)
        recent = ", ".join(_label(i, data.item_info.get(i, {}).get("title")) for i in history[-3:])
        print(f"user {row['user_id']}: recent [{recent}] -> recommended [{shown}]")


def _label(item_id: str, title: str | None) -> str:
    return f"{item_id} ({title})" if title else item_id


def cmd_finetune(args: argparse.Namespace, extra: list[str]) -> int:
    from .training import parse_override_args, run_finetune

    overrides = parse_override_args(extra)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    metrics = run_finetune(args.base_dir, args.recipe, mode=args.mode, overrides=overrides,
                           overwrite_output_dir=args.overwrite_output_dir)
    print(json.dumps(finetune_summary(metrics), indent=2, default=str))
    return 0


def finetune_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """What `genrec-hf finetune` prints: the task, where the result is, how much was trained, and the test metrics
    beside the base's zero-shot ones on the same rows (the comparison the run exists for)."""
    parameters = metrics.get("parameters") or {}
    summary = {k: metrics.get(k) for k in ("task", "mode", "output_dir", "dataset")}
    summary.update(trainable_parameters=parameters.get("trainable"), total_parameters=parameters.get("total"),
                   trainable_fraction=parameters.get("trainable_fraction"), test=metrics.get("test"),
                   zero_shot_test=metrics.get("zero_shot_test"))
    test, zero_shot = metrics.get("test") or {}, metrics.get("zero_shot_test") or {}
    if zero_shot:
        summary["test_minus_zero_shot"] = {k: test[k] - zero_shot[k] for k in test
                                           if k in zero_shot and isinstance(test[k], (int, float))
                                           and isinstance(zero_shot[k], (int, float))}
    return summary


def cmd_evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    from .evaluation.saved_models import evaluate_saved_model

    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder {model_dir} does not exist or is not a folder; expected a folder "
                                "written by `genrec-hf train`.")
    if args.staleness is None and (args.cut is not None or args.cut_quantile is not None or args.task
                                   or args.staleness_anchor != "request"):
        raise ValueError("--cut, --cut_quantile, --task and --staleness_anchor belong to a staleness replay; add "
                         "--staleness 0,1h,24h,48h.")
    name = args.split
    if args.staleness is not None:
        where = args.split if args.staleness_anchor == "request" else "cut"
        name = f"staleness_{args.task or 'short_horizon'}_{where}"
    output = Path(args.output) if args.output else model_dir / f"eval_results_{name}.json"
    if output.is_symlink() and not output.exists():
        raise FileNotFoundError(f"--output {output} is a symbolic link to {output.readlink()}, which does not exist.")
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a folder; expected a JSON file path.")
    if output.exists() and not args.overwrite:
        raise FileExistsError(f"{output} exists; pass --overwrite to replace it or --output to write elsewhere.")
    output.parent.mkdir(parents=True, exist_ok=True)
    if args.staleness is not None:
        from .evaluation.staleness import evaluate_saved_model_staleness

        metrics = evaluate_saved_model_staleness(
            args.model_dir, args.data, args.staleness, format=args.format, anchor=args.staleness_anchor,
            split=args.split, cut=args.cut,
            cut_quantile=args.cut_quantile, task=args.task or "short_horizon", max_length=args.max_length,
            batch_size=args.batch_size, exclude_history=not args.include_history, base=args.base, verify=not args.no_verify)
    else:
        metrics = evaluate_saved_model(args.model_dir, args.data, format=args.format, split=args.split,
                                       max_length=args.max_length, batch_size=args.batch_size,
                                       exclude_history=not args.include_history, base=args.base,
                                       verify=not args.no_verify)
    print(json.dumps(metrics, indent=2))
    output.write_text(json.dumps(metrics, indent=2))
    print(f"written to {output}", file=sys.stderr)
    return 0


def cmd_recommend(args: argparse.Namespace, extra: list[str]) -> int:
    """Print the top-k; when the history leaves no item to recommend, one line on stderr says so (exit 0)."""
    from .serving import Recommender

    recommender = Recommender.from_pretrained(args.model_dir, base=args.base, verify=not args.no_verify)
    history = [item.strip() for item in args.history.split(",") if item.strip()]
    timestamps = [int(t) for t in args.timestamps.split(",")] if args.timestamps else None
    recs = recommender.recommend(history, k=args.k, timestamps=timestamps, exclude_seen=not args.include_seen)
    if not recs:
        print(f"genrec-hf recommend: no item left to recommend: the history's {len(set(history))} distinct items "
              f"cover the whole catalog of {len(recommender.vocab) - 1} items (--include_seen allows seen items).",
              file=sys.stderr)
    if args.json:
        print(json.dumps([r.to_dict() for r in recs], indent=2))
    else:
        for rank, rec in enumerate(recs, 1):
            print(f"{rank:3d}. {rec.item_id:>12}  {rec.score:9.4f}  {rec.title or ''}")
    return 0


def cmd_add_items(args: argparse.Namespace, extra: list[str]) -> int:
    """Cold start: grow a saved model's catalog from an items file, without retraining."""
    from .serving.catalog import add_items_to_folder, read_items_file

    items = read_items_file(args.items)
    _, vocab = add_items_to_folder(args.model_dir, items, args.output_dir, text_encoder=args.text_encoder,
                                   overwrite=args.overwrite, verify=not args.no_verify)
    print(f"added {len(items)} items: {args.output_dir} now serves {vocab.num_items} items "
          "(new items are scored from their metadata alone)")
    return 0


def cmd_export_embeddings(args: argparse.Namespace, extra: list[str]) -> int:
    from .serving.export import export_embeddings

    manifest = export_embeddings(args.model_dir, args.data, args.out, format=args.format, overwrite=args.overwrite,
                                 align_to=args.align_to, batch_size=args.batch_size)
    print(json.dumps({k: manifest[k] for k in ("dims", "counts", "alignment")}, indent=2))
    print(f"item and user vectors (safetensors + Parquet) and manifest.json written to {args.out}", file=sys.stderr)
    if args.push_to_hub:
        from .serving.export import push_export_to_hub

        print(f"uploaded to the dataset repo {args.push_to_hub}: {push_export_to_hub(args.out, args.push_to_hub)}",
              file=sys.stderr)
    return 0


def cmd_predict(args: argparse.Namespace, extra: list[str]) -> int:
    """Top-k lists of every user of a prepared folder, as sharded Parquet (the cached-candidate job)."""
    from .serving.predict import predict

    users = None
    if args.users:
        path = Path(args.users)
        if not path.is_file():
            raise FileNotFoundError(f"--users {path} does not exist; expected a text file of user ids, one per line.")
        users = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    outcome = predict(args.model_dir, args.data, args.output_dir, k=args.k, adapter=args.adapter, users=users,
                      embeddings=args.embeddings, index=args.index, exclude_seen=not args.include_seen,
                      batch_size=args.batch_size, overwrite=args.overwrite, verify=not args.no_verify)
    print(f"{outcome.parts_written} parts written, {outcome.parts_kept} kept from an earlier run, {outcome.users} "
          f"users, in {outcome.seconds:.1f} s: {outcome.output_dir}"
          + ("" if outcome.manifest else " (other processes are still on their parts)"))
    return 0


def _adapter_pairs(pairs: list[str] | None) -> dict[str, str]:
    adapters: dict[str, str] = {}
    for text in pairs or []:
        name, sep, folder = text.partition("=")
        if not sep or not name or not folder:
            raise ValueError(f"--adapter {text!r}: expected NAME=DIR, e.g. short_horizon=runs/short_horizon_lora.")
        if name in adapters:
            raise ValueError(f"--adapter: task {name!r} is given twice.")
        adapters[name] = folder
    return adapters


def cmd_serve(args: argparse.Namespace, extra: list[str]) -> int:
    adapters = _adapter_pairs(args.adapter)
    if not Path(args.model_dir).is_dir():
        raise FileNotFoundError(f"model folder {args.model_dir} does not exist or is not a folder.")
    try:
        from .serving.server import serve
    except ImportError as error:
        raise RuntimeError(str(error)) from None
    if args.index != "exact":
        from .serving.index import require_faiss

        try:
            require_faiss()
        except ImportError as error:
            raise RuntimeError(str(error)) from None
    serve(args.model_dir, adapters=adapters or None, host=args.host, port=args.port, index=args.index,
          max_body_bytes=args.max_body_bytes, max_k=args.max_k, max_rows=args.max_rows, max_users=args.max_users,
          max_events=args.max_events, max_cache_bytes=args.max_cache_mb << 20, overflow_keep=args.overflow_keep)
    return 0


def cmd_prepare(args: argparse.Namespace, extra: list[str]) -> int:
    from .data.prepare import prepare_events, split_spec

    split = split_spec(args.split, cut=args.cut, quantile=args.cut_quantile, fraction=args.cold_fraction,
                       seed=args.cold_seed)
    try:
        prepared = prepare_events(args.source, args.output_dir, format=args.format, column_map=args.column_map,
                                  min_user_events=args.min_user_events, k_core=args.k_core, dedup=not args.no_dedup,
                                  split=split, num_shards=args.num_shards, events_per_shard=args.events_per_shard,
                                  engine=args.engine, threads=args.threads, memory_limit=args.memory_limit,
                                  temp_dir=args.temp_dir, overwrite=args.overwrite)
    except ImportError as error:  # an engine's optional extra is missing: a user error, not a crash
        raise RuntimeError(str(error)) from None
    manifest = prepared.manifest
    print(f"{manifest['num_users']} users, {manifest['num_items']} items, {manifest['num_events']} events in "
          f"{prepared.num_shards} shards written to {prepared.path} (split: {manifest['split']['kind']})")
    return 0


def _column_map(text: str) -> dict[str, str]:
    """argparse type: 'user_id=uid,item_id=sku' or a YAML/JSON mapping '{user_id: uid, item_id: sku}'."""
    import yaml

    if text.strip().startswith("{"):
        value = yaml.safe_load(text)
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
    pairs = [part.partition("=") for part in text.split(",") if part.strip()]
    if not pairs or any(not sep or not key.strip() or not column.strip() for key, sep, column in pairs):
        raise argparse.ArgumentTypeError(f"expected CANONICAL=COLUMN pairs such as 'user_id=uid,item_id=sku', got "
                                         f"{text!r}")
    return {key.strip(): column.strip() for key, _, column in pairs}


def cmd_card(args: argparse.Namespace, extra: list[str]) -> int:
    from .cards import push_to_hub, write_model_card

    card = {"base_model": args.base_model, "dataset_name": args.dataset_name}
    if args.push_to_hub:  # the card is written for that repo first, then the folder's model files go up
        url = push_to_hub(args.model_dir, args.push_to_hub, **card)
        print(f"model card written and {args.model_dir} uploaded: {url}")
    else:
        print(f"model card written to {write_model_card(args.model_dir, repo_id=args.repo_id, **card)}")
    return 0


def cmd_scaling_fit(args: argparse.Namespace, extra: list[str]) -> int:
    from .scaling.fit import fit_csv, format_table

    if args.plot:
        from .scaling.plot import require_matplotlib

        try:
            require_matplotlib()
        except ImportError as error:
            raise RuntimeError(str(error)) from None
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)  # before the fit, so a bad path fails at once
    named = {}
    for text in args.extrapolate or []:
        name, _, size = text.rpartition("=")
        try:
            named[name or size] = float(size)
        except ValueError:
            raise ValueError(f"--extrapolate {text!r}: expected a size such as 1e9 or NAME=SIZE such as "
                             "xl=1e9.") from None
    fits = fit_csv(args.results, args.task, metric=args.metric, n_bootstrap=args.bootstrap, seed=args.seed,
                   confidence=args.confidence, criterion=args.criterion, extrapolate_sizes=named,
                   size_column=args.size_column)
    if args.json:
        print(json.dumps({task: fit.to_dict() for task, fit in fits.items()}, indent=2))
    else:
        print(format_table(fits))
    if args.plot:
        from .scaling.plot import plot_fits

        print(f"plot written to {plot_fits(fits, args.plot)}", file=sys.stderr)
    return 0


def cmd_scaling_run(args: argparse.Namespace, extra: list[str]) -> int:
    from .scaling.ladder import load_ladder_recipe, run_ladder
    from .training import parse_override_args

    overrides = parse_override_args(extra)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    recipe = load_ladder_recipe(args.recipe, overrides)
    outcome = run_ladder(recipe)
    print(f"{outcome.rows_written} rows written, {outcome.rows_skipped} already there: {outcome.csv_path}")
    if outcome.data_axis_csv_path:
        print(f"data-size axis: {outcome.data_axis_csv_path} (fit with --size_column train_events)")
    print(f"fit: genrec-hf scaling fit {outcome.csv_path} --plot {outcome.csv_path.with_suffix('.png')}")
    return 0


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= `minimum` (argparse names the flag in its error)."""
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _int_list(text: str) -> str:
    """argparse type: comma-separated integers such as '1700000000,1700000100'; returned unchanged once checked."""
    for part in text.split(",") if text.strip() else []:
        try:
            int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers (unix seconds), got {part.strip()!r} "
                                             f"in {text!r}") from None
    return text


def _durations(text: str) -> list[int]:
    """argparse type: comma-separated durations such as '0,1h,24h,48h' → seconds."""
    from .evaluation.staleness import parse_durations

    try:
        return parse_durations(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_load_flags(p: argparse.ArgumentParser) -> None:
    """--base / --no_verify of the commands that load a model or adapter folder."""
    p.add_argument("--base", default=None, metavar="DIR",
                   help="base model folder of an adapter MODEL_DIR (default: the base the adapter names)")
    p.add_argument("--no_verify", action="store_true",
                   help="skip the weights checks (sha256 against genrec_weights.json, no NaN/inf tensors)")


_GLOBAL_FLAGS = {"--debug": "debug", "-v": "verbose", "--verbose": "verbose"}
MODEL_DIR_HELP = "a model folder written by `genrec-hf train` (or `finetune`), or a LoRA adapter folder"


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it has none to show (None, False) or says it already."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "(default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with `HelpFormatter`, for the command and every subcommand (`add_subparsers`
    makes its parsers of the parent's class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="genrec-hf", description="Generative recommenders on the HF stack.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the genrec_hf version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of the one-line message")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a YAML recipe",
                       description="Train from a recipe; any recipe key can be overridden as --section.key value "
                                   "(e.g. --training.num_train_epochs 5 --model.preset genrec-8m).")
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/pretrain/genrec-2m.yaml")
    p.add_argument("--output_dir", help="where the model, vocab, metrics and card are written")
    p.add_argument("--overwrite_output_dir", action="store_true", help="allow writing into a non-empty output_dir")
    p.add_argument("--resume_from_checkpoint", nargs="?", const="latest", default=None,
                   help="continue from a checkpoint folder (or the latest one in output_dir when no path is given)")
    p.set_defaults(func=cmd_train, allow_extra=True)

    p = sub.add_parser("finetune", help="fine-tune a trained backbone on a downstream task (LoRA adapter by default)",
                       description="Train one task adapter on a frozen base (mode lora: only the adapter is saved), "
                                   "or compare with full fine-tuning / training from scratch through the same "
                                   "command. Recipe keys can be overridden as --section.key value.")
    p.add_argument("base_dir", help="a model folder written by `genrec-hf train`")
    p.add_argument("recipe", help="YAML recipe, e.g. recipes/finetune/short_horizon_lora.yaml")
    p.add_argument("--mode", choices=["lora", "full", "from_scratch"], default=None, help="override the recipe's mode")
    p.add_argument("--output_dir", help="where the adapter (or model), metrics and card are written")
    p.add_argument("--overwrite_output_dir", action="store_true", help="allow writing into a non-empty output_dir")
    p.set_defaults(func=cmd_finetune, allow_extra=True)

    p = sub.add_parser("evaluate", help="full-catalog ranking metrics of a saved model",
                       description="Rank each user's held-out item against the whole catalog (history excluded, "
                                   "ties pessimistic) and report MRR, HR@K, NDCG@K.")
    p.add_argument("model_dir", help=MODEL_DIR_HELP)
    p.add_argument("--data", required=True, help="events: a path or 'synthetic' (same as a recipe's data.source)")
    p.add_argument("--format", default=None, help="loader name when it cannot be detected from the path")
    p.add_argument("--split", default="test", choices=["validation", "test"], help="which held-out event to rank")
    p.add_argument("--max_length", type=_positive_int, default=None,
                   help="history length (default: the model's maximum)")
    p.add_argument("--batch_size", type=_positive_int, default=256, help="users scored per batch")
    p.add_argument("--include_history", action="store_true", help="also rank items already in the history")
    p.add_argument("--staleness", type=_durations, default=None, metavar="DELTAS",
                   help="staleness replay of cached serving, e.g. 0,1h,24h,48h: each list is computed from the "
                        "user state DELTA old, items consumed in between are excluded (docs/evaluation.md)")
    p.add_argument("--staleness_anchor", choices=["request", "cut"], default="request",
                   help="request (default): each --split request (at the target's time; long_horizon: at the "
                        "context's end, its window unchanged) is served from the state DELTA before it; cut: one "
                        "cache refresh at --cut, lists shown DELTA later, targets after that")
    p.add_argument("--cut", type=int, default=None,
                   help="staleness_anchor cut: the cache time (unix seconds; default: the model's time-split cut)")
    p.add_argument("--cut_quantile", type=float, default=None,
                   help="staleness_anchor cut: the cut as a quantile of event times")
    p.add_argument("--task", default=None, choices=["short_horizon", "high_engagement", "availability",
                                                    "long_horizon"],
                   help="staleness: what the targets after the show time are (default short_horizon: the next)")
    p.add_argument("--output", default=None,
                   help="JSON file, its folder created if missing (default: MODEL_DIR/eval_results_SPLIT.json; "
                        "staleness: eval_results_staleness_TASK_{SPLIT|cut}.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_load_flags(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-k items after a history of raw item ids",
                       description="Print the k items the model ranks highest after a history of raw item ids "
                                   "(oldest first), with scores and titles; items of the history are left out.")
    p.add_argument("model_dir", help=MODEL_DIR_HELP)
    p.add_argument("--history", required=True, help="comma-separated raw item ids, oldest first")
    p.add_argument("--timestamps", type=_int_list, default=None,
                   help="comma-separated unix seconds, one per history item")
    p.add_argument("--k", type=_positive_int, default=10, help="number of items to recommend")
    p.add_argument("--include_seen", action="store_true", help="allow items already in the history")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_load_flags(p)
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("add-items", help="cold start: add new items to a saved model without retraining",
                       description="Add items (JSON lines: item_id + title / genres / year / attributes) to a model "
                                   "trained with an item tower; they are scored from their metadata alone. Writes "
                                   "the grown model, item_vocab.json and manifest into OUTPUT_DIR.")
    p.add_argument("model_dir", help="a model folder written by `genrec-hf train` with model.item_tower")
    p.add_argument("items", help="JSON lines (or a JSON list) of {\"item_id\": ..., metadata...}")
    p.add_argument("--output_dir", required=True, help="where the grown model is written")
    p.add_argument("--text_encoder", default=None,
                   help="encoder folder for titles, when the model's title_text block was made with one")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output_dir")
    p.add_argument("--no_verify", action="store_true", help="skip the weights manifest check")
    p.set_defaults(func=cmd_add_items)

    p = sub.add_parser("export-embeddings", help="write item and user vectors (safetensors + Parquet + manifest)",
                       description="Item vectors (one row per raw item id) and user vectors (each user's full "
                                   "history in --data, mapped into the model's vocabulary) as safetensors and "
                                   "Parquet, with manifest.json (model and vocab hashes, dims, counts). "
                                   "--align_to rotates them onto a previous export (orthogonal Procrustes on "
                                   "the shared items; scores are unchanged) and records the drift.")
    p.add_argument("model_dir", help=MODEL_DIR_HELP)
    p.add_argument("--data", required=True, help="events: a path or 'synthetic' (same as a recipe's data.source)")
    p.add_argument("--format", default=None, help="loader name when it cannot be detected from the path")
    p.add_argument("--out", required=True, help="export folder to write (missing parent folders are created)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --out")
    p.add_argument("--align_to", default=None, metavar="PREV_DIR", help="a previous export to align to")
    p.add_argument("--batch_size", type=_positive_int, default=256, help="users encoded per batch")
    p.add_argument("--push_to_hub", default=None, metavar="REPO_ID",
                   help="also upload the export's files to this Hub dataset repo (needs network and a token)")
    p.set_defaults(func=cmd_export_embeddings)

    p = sub.add_parser("predict", help="top-k items of every user of a prepared folder, as sharded Parquet",
                       description="Score every user of a prepared folder (genrec-hf prepare) with a model, or a task "
                                   "adapter on its base, and write their top-k raw item ids and scores as one "
                                   "Parquet part per input shard (+ predictions.json). Resumable: parts a "
                                   "previous run of the same job finished are kept. Under accelerate launch / "
                                   "torchrun each process predicts its own shards.")
    p.add_argument("model_dir", help="a model folder written by `genrec-hf train` (the base, with --adapter)")
    p.add_argument("--data", required=True, help="a prepared folder (genrec-hf prepare)")
    p.add_argument("--output_dir", required=True, help="folder of the parts and predictions.json")
    p.add_argument("--k", type=_positive_int, default=100, help="items per user (default 100)")
    p.add_argument("--adapter", default=None, metavar="DIR", help="a task adapter folder to predict with")
    p.add_argument("--users", default=None, metavar="FILE", help="only these users (a text file, one id per line)")
    p.add_argument("--embeddings", action="store_true", help="also write each user's embedding")
    p.add_argument("--index", choices=["exact", "ivf", "hnsw", "flat"], default="exact",
                   help="exact chunked top-k (default) or a faiss index (needs pip install \"genrec-hf[ann]\")")
    p.add_argument("--include_seen", action="store_true", help="allow items already in the user's history")
    p.add_argument("--batch_size", type=_positive_int, default=256, help="users per forward pass (default 256)")
    p.add_argument("--overwrite", action="store_true", help="replace the predictions of another job in --output_dir")
    p.add_argument("--no_verify", action="store_true", help="skip the weights checks")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("serve", help="HTTP recommendation server (needs pip install \"genrec-hf[serve]\")",
                       description="Serve POST /recommend, POST /events, GET /health and GET /items/{id} over a "
                                   "saved model and optional task adapters.")
    p.add_argument("model_dir", help=MODEL_DIR_HELP)
    p.add_argument("--adapter", action="append", metavar="NAME=DIR",
                   help="task adapter folder, served as task NAME (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (loopback: this machine only)")
    p.add_argument("--port", type=_int_at_least(0), default=8000, help="TCP port (0: any free port)")
    p.add_argument("--index", choices=["exact", "ivf", "hnsw", "flat"], default="exact",
                   help="top-k: exact chunked scoring or a faiss index (needs pip install \"genrec-hf[ann]\")")
    p.add_argument("--max_k", type=_positive_int, default=1000, help="largest k a request may ask for")
    p.add_argument("--max_body_bytes", type=_positive_int, default=1 << 20, help="larger request bodies get 413")
    p.add_argument("--max_rows", type=_positive_int, default=1000,
                   help="most histories one POST /recommend may hold (more get 413)")
    p.add_argument("--max_users", type=_positive_int, default=100_000,
                   help="users whose /events histories are kept (least recently used evicted)")
    p.add_argument("--max_events", type=_positive_int, default=1024, help="events kept per user")
    p.add_argument("--max_cache_mb", type=_int_at_least(0), default=1024,
                   help="MiB of cached per-user backbone states (least recently used dropped; see docs/serving.md)")
    p.add_argument("--overflow_keep", type=_positive_int, default=None,
                   help="events a user's cached state is rebuilt from once it outgrows the window (default: half the "
                        "window, one rebuild per window/2 events; the whole window reads exactly the events a "
                        "stateless request reads, with a full forward per event)")
    p.set_defaults(func=cmd_serve)


    p = sub.add_parser("prepare", help="raw event logs -> a prepared folder of per-user sequence shards",
                       description="Read an event log (csv / tsv / Parquet: one file, a glob or a folder of shards; "
                                   "RecBole .inter; MovieLens, sequence text and 'synthetic' through their loaders), "
                                   "apply the filters and the split once, and write per-user sequence shards, "
                                   "item_vocab.json and manifest.json into OUTPUT_DIR (docs/scale.md). "
                                   "`genrec-hf train recipe --data.source OUTPUT_DIR` trains from it.")
    p.add_argument("source", help="events: a file, a quoted glob ('logs/*.parquet'), a folder or 'synthetic[:k=v,...]'")
    p.add_argument("--output_dir", required=True, help="the prepared folder to write (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUTPUT_DIR (default: refuse)")
    p.add_argument("--format", default=None, help="loader name when it cannot be detected (default: detect)")
    p.add_argument("--column_map", type=_column_map, default=None, metavar="KEY=COL,...",
                   help="csv/Parquet columns of user_id, item_id, timestamp, rating, action (default: common names)")
    p.add_argument("--min_user_events", type=_positive_int, default=2,
                   help="drop users with fewer events after dedup and k-core (default 2)")
    p.add_argument("--k_core", type=_positive_int, default=None,
                   help="iterative k-core filter on users and items (default: none)")
    p.add_argument("--no_dedup", action="store_true",
                   help="keep repeated (user, item, timestamp) events (default: drop all but the first)")
    p.add_argument("--split", choices=["leave_one_out", "time", "cold_items"], default="leave_one_out",
                   help="the evaluation split recorded in the manifest (default leave_one_out)")
    p.add_argument("--cut", type=int, default=None, help="--split time: the cut in unix seconds")
    p.add_argument("--cut_quantile", type=float, default=None,
                   help="--split time: the cut at this quantile of event times (resolved and recorded)")
    p.add_argument("--cold_fraction", type=float, default=None,
                   help="--split cold_items: share of items held out (default 0.1)")
    p.add_argument("--cold_seed", type=int, default=0, help="--split cold_items: seed of the held-out draw (default 0)")
    p.add_argument("--num_shards", type=_positive_int, default=None,
                   help="sequence shards to write (default: one per --events_per_shard events)")
    p.add_argument("--events_per_shard", type=_positive_int, default=1_000_000,
                   help="events per shard when --num_shards is not given (default 1000000)")
    p.add_argument("--engine", choices=["auto", "memory", "duckdb", "spark"], default="auto",
                   help="auto (default): memory when the log fits in a quarter of RAM (or --memory_limit), else "
                        "duckdb (out-of-core, pip install \"genrec-hf[prepare]\"); spark: the active or a local "
                        "Spark session (pip install \"genrec-hf[spark]\")")
    p.add_argument("--threads", type=_positive_int, default=None, help="engine threads (default: the engine's)")
    p.add_argument("--memory_limit", default=None,
                   help="memory budget such as 2GB: DuckDB spills to disk above it (default: DuckDB's 80%% of RAM)")
    p.add_argument("--temp_dir", default=None, help="where the duckdb engine stages and spills (default: system temp)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("card", help="(re)generate the model card README.md of a model or adapter folder",
                       description="Render the Hub model card (README.md) of a saved model or adapter folder from "
                                   "its config, metrics and recipe; --push_to_hub also uploads the folder's model "
                                   "files, card, tokenizer and vocabulary (never checkpoints or optimizer state).")
    p.add_argument("model_dir", help=MODEL_DIR_HELP)
    p.add_argument("--repo_id", default=None, help="Hub repo id shown in the usage snippets (default: the folder "
                                                   "name, or --push_to_hub's repo)")
    p.add_argument("--base_model", default=None,
                   help="for adapters: the base model's Hub id (a local path is left out of the card's metadata)")
    p.add_argument("--dataset_name", default=None, help="dataset shown in the card (default: from metrics.json)")
    p.add_argument("--push_to_hub", default=None, metavar="REPO_ID", help="upload folder + card (needs network)")
    p.set_defaults(func=cmd_card)

    p = sub.add_parser("scaling", help="scaling laws: fit a metric against backbone size",
                       description="Scaling-law tools over a ladder of backbone sizes.")
    scaling = p.add_subparsers(dest="scaling_command", required=True)
    p = scaling.add_parser("fit", help="offset power law vs log-linear fit per task, ceiling P0 and headroom",
                           description="Fit P(N) = P0 - (N/N0)^(-a) and P = a*log N + b per task of a results CSV "
                                       "(columns backbone_params, task, the metric; optional ranks_path to per-user "
                                       "ranks for intervals over users), with bootstrap intervals, the preferred law "
                                       "and headroom = P0 - best measured value.")
    p.add_argument("results", nargs="+", help="results CSV, one row per (task, backbone size); several CSVs are "
                   "training seeds of one ladder: fitted at the per-size mean, intervals resample the seeds too")
    p.add_argument("--task", nargs="+", action="extend", default=None,
                   help="fit only these tasks, after the CSV or repeated (default: every task in the CSV)")
    p.add_argument("--metric", default="mrr", help="metric column to fit")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", default=None, metavar="PATH", help="also draw the fits to PATH, e.g. scaling.png, its "
                   "folder created if missing (needs matplotlib: pip install \"genrec-hf[plot]\")")
    p.add_argument("--bootstrap", type=_non_negative_int, default=1000,
                   help="bootstrap resamples for the intervals (0: none)")
    p.add_argument("--confidence", type=float, default=0.95, help="interval level")
    p.add_argument("--criterion", choices=["aic", "bic", "aicc"], default="aic",
                   help="information criterion that picks the preferred law")
    p.add_argument("--extrapolate", action="append", metavar="[NAME=]SIZE",
                   help="also predict at this backbone size (repeatable); 10x and 100x the largest are always shown")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--size_column", default="backbone_params",
                   help="column of the sizes (train_events for a ladder's data-size axis)")
    p.add_argument("--size-column", dest="size_column", default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # old
    p.set_defaults(func=cmd_scaling_fit)

    p = scaling.add_parser("run", help="train a ladder of backbone sizes and write the results CSV the fit reads",
                           description="Pre-train every preset of a ladder recipe with everything but the backbone "
                                       "size fixed (item-vector width included), fine-tune or evaluate every task "
                                       "on the same users, and append one row per (size, task) with per-user ranks "
                                       "to the results CSV. Resumable: finished rows are skipped. Recipe keys can be "
                                       "overridden as --section.key value.")
    p.add_argument("recipe", help="YAML ladder recipe, e.g. recipes/scaling/ladder.yaml")
    p.add_argument("--output_dir", help="where the bases, task runs, ranks and results.csv go")
    p.set_defaults(func=cmd_scaling_run, allow_extra=True)
    return parser


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, RuntimeError, OSError, SafetensorError)


def _one_line(error: BaseException, args: argparse.Namespace) -> str:
    """A user error as one line: OSErrors as 'path: reason', unreadable weights with the model folder."""
    if isinstance(error, KeyError) and error.args:
        message = str(error.args[0])
    elif isinstance(error, OSError) and error.filename is not None and error.strerror:
        message = f"{error.filename}: {error.strerror}"
        if error.filename2 is not None:
            message += f" ({error.filename2})"
    elif isinstance(error, SafetensorError):
        folder = getattr(args, "model_dir", None) or getattr(args, "base_dir", None)
        message = (f"cannot read the model weights{f' in {folder}' if folder else ''}: a .safetensors file is "
                   f"truncated or not in safetensors format ({error}); save or download the model again.")
    else:
        message = str(error) or type(error).__name__
    return " ".join(message.split())


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print `genrec-hf <command>: error: ...` and return 2 (`--debug`: traceback)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    for flag in [token for token in extra if token in _GLOBAL_FLAGS]:  # also accepted after the command
        setattr(args, _GLOBAL_FLAGS[flag], True)
        extra.remove(flag)
    if extra and not getattr(args, "allow_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if _launcher_rank() > 0:  # one rank logs the data lines and progress of a distributed run; the others warn only
        logging.getLogger("genrec_hf").setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace, list[str]], int] = args.func
    try:
        return func(args, extra)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"genrec-hf {args.command}: error: {_one_line(error, args)}", file=sys.stderr)
        return 2
    finally:
        _teardown_distributed()


def _launcher_rank() -> int:
    """The global rank a launcher (torchrun, accelerate launch, deepspeed) gave this process; 0 when launched alone."""
    for variable in ("RANK", "LOCAL_RANK"):
        if os.environ.get(variable, "").strip().isdigit():
            return int(os.environ[variable])
    return 0


def _teardown_distributed() -> None:
    """Destroy the process group a distributed command started: a rank left to interpreter shutdown can abort
    ("terminate called without an active exception")."""
    torch = sys.modules.get("torch")  # never imported for it: a command that did not load torch started no group
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
