"""Serve a model over HTTP on the loopback interface and query it: the whole round trip in one script.

    pip install "genrec-hf[serve]" httpx
    python examples/serve_and_query.py [--workdir runs/serve_example] [--epochs 1]

Trains a tiny model for one epoch on the built-in synthetic log (seconds on a CPU), starts the server in a
background thread on 127.0.0.1 and a free port, sends two requests (recommend from a history; record events for a
user, then recommend for that user), prints the answers and stops the server. For a real deployment run
`genrec-hf serve MODEL_DIR --port 8000` instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import httpx

from genrec_hf.serving import Recommender
from genrec_hf.serving.server import ServerThread, create_app
from genrec_hf.training import load_recipe, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/serve_example")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data", default="synthetic:num_users=200,num_items=80,num_clusters=4")
    args = parser.parse_args()

    model_dir = Path(args.workdir) / "model"
    if not (model_dir / "config.json").is_file():
        recipe = load_recipe("recipes/pretrain/genrec-100k.yaml", {
            "output_dir": str(model_dir), "data.source": args.data, "data.max_length": "20",
            "training.num_train_epochs": str(args.epochs), "training.disable_tqdm": "true",
            "model.overrides": "{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2}",
            "evaluation.num_examples": "0",
        })
        train(recipe)

    recommender = Recommender.from_pretrained(model_dir)
    history = recommender.vocab.raw_ids[:3]
    with ServerThread(create_app(recommender)) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        print(f"serving {model_dir} on {server.url}")
        answer = client.post("/recommend", json={"history": history, "k": 5})
        answer.raise_for_status()
        print(f"POST /recommend history={history}:\n{json.dumps(answer.json()['items'], indent=2)}")

        client.post("/events", json={"user_id": "alice", "events": history[:2]}).raise_for_status()
        client.post("/events", json={"user_id": "alice", "events": history[2:]}).raise_for_status()
        answer = client.post("/recommend", json={"user_id": "alice", "k": 3})
        answer.raise_for_status()
        print("POST /recommend user_id=alice (after two POST /events):")
        for item in answer.json()["items"]:
            print(f"  {item['item_id']:>6}  {item['score']:7.3f}  {item['title'] or ''}")
    print("server stopped")


if __name__ == "__main__":
    main()
