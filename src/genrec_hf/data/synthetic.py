"""The embedded default data set: a seeded synthetic interaction log with the structure real logs have.

What a model can learn from it, strongest first:
  * sequential dependence: items of a taste cluster form a chain ordered by release (think series / episodes);
    within a session users mostly move 1-5 steps along the chain of the item they just consumed, so "what comes
    after item i" carries signal beyond popularity;
  * taste: each user mixes 1-3 clusters, and a session starts in a cluster drawn from that mix, so the history
    predicts the cluster of the next session; the mix drifts towards one new cluster over the user's lifetime;
  * popularity: Zipf item popularity, used for session entry points and exploration jumps;
  * time: sessions of events minutes apart, days between sessions; some items are released during the log
    and get picked up soon after release ("newly available"); nothing is consumed before its release.
Engagement (rating 1..5, also the action id) rises with how well the item's cluster matches the user's taste.
Item metadata: genres (from the cluster), a title built from words (the cluster's theme noun + an adjective), year
and release timestamp. The latent cluster itself is not exposed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .events import LoadedEvents
from .interactions import InteractionData, build_interactions

GENRES = ["Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Family", "Fantasy",
          "History", "Horror", "Music", "Mystery", "Romance", "Sci-Fi", "Sport", "Thriller", "Western"]
_ADJECTIVES = ["Silent", "Crimson", "Hidden", "Golden", "Broken", "Lost", "Wild", "Electric", "Frozen", "Secret",
               "Last", "Midnight", "Burning", "Distant", "Hollow", "Iron", "Velvet", "Restless", "Shattered", "Bright"]
_THEMES = ["River", "Empire", "Garden", "Signal", "Harbor", "Machine", "Kingdom", "Storm", "Orchard", "Circuit",
           "Desert", "Lantern", "Voyage", "Frontier", "Station", "Forest", "Comet", "Citadel", "Canyon", "Carnival",
           "Mirror", "Galaxy", "Island", "Temple", "Festival"]
_SUFFIXES = ["", "", "", " II", " III", " Returns", " Rising", " Chronicles"]
_DAY = 86_400
_STEP_PROBS = np.array([0.45, 0.25, 0.15, 0.10, 0.05])  # chain steps 1..5 within a session


@dataclass
class _Catalog:
    cluster: np.ndarray  # (I,) latent cluster of each item
    release: np.ndarray  # (I,) release unix time
    quality: np.ndarray  # (I,) engagement offset
    chain_pos: np.ndarray  # (I,) position of the item in its cluster's chain
    chains: list[np.ndarray]  # per cluster: items ordered by release
    cum_pop: list[np.ndarray]  # per cluster: cumulative popularity over `chains[c]`
    global_cum: np.ndarray  # cumulative popularity over all items
    by_release: np.ndarray  # items sorted by release time
    popularity: np.ndarray


def generate_synthetic(
    num_users: int = 2000,
    num_items: int = 1000,
    num_clusters: int = 20,
    seed: int = 0,
    **options: Any,
) -> InteractionData:
    """A seeded synthetic log (same arguments → identical data); see the module docstring for its structure.

    `sequential_strength` is the chance that the next event in a session follows the chain of the current item,
    `exploration` the chance of a global popularity jump (the rest switches to another cluster of the user's taste),
    `new_item_rate` the chance of picking an item released in the last 30 days. `options` are the keyword-only
    arguments of `synthetic_events` (mean_sessions, mean_session_length, zipf_exponent, sequential_strength,
    exploration, new_item_rate, drift, new_item_fraction, days, max_events_per_user).
    """
    loaded = synthetic_events(num_users, num_items, num_clusters, seed, **options)
    return build_interactions(loaded.events, item_info=loaded.item_info, name=loaded.name,
                              has_timestamps=True)


def synthetic_events(
    num_users: int = 2000,
    num_items: int = 1000,
    num_clusters: int = 20,
    seed: int = 0,
    *,
    mean_sessions: float = 8.0,
    mean_session_length: float = 4.0,
    zipf_exponent: float = 1.0,
    sequential_strength: float = 0.5,
    exploration: float = 0.15,
    new_item_rate: float = 0.05,
    drift: float = 0.5,
    new_item_fraction: float = 0.15,
    days: int = 365,
    max_events_per_user: int = 200,
) -> LoadedEvents:
    """The raw events + item metadata behind `generate_synthetic` (for `load_interactions`' own filters)."""
    if num_users < 1 or num_items < 2 or not 1 <= num_clusters <= num_items:
        raise ValueError(f"synthetic: need num_users >= 1, num_items >= 2 and 1 <= num_clusters <= num_items; got "
                         f"num_users={num_users}, num_items={num_items}, num_clusters={num_clusters}.")
    if sequential_strength < 0 or exploration < 0 or new_item_rate < 0 or \
            sequential_strength + exploration + new_item_rate > 1:
        raise ValueError("synthetic: sequential_strength, exploration and new_item_rate must be >= 0 and sum to "
                         "at most 1.")
    rng = np.random.default_rng(seed)
    start = int(dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc).timestamp())
    span = days * _DAY
    catalog = _make_catalog(rng, num_items, num_clusters, zipf_exponent, new_item_fraction, start, span)
    cluster_weights = 1.0 / np.arange(1, num_clusters + 1) ** 0.7
    cluster_weights = rng.permutation(cluster_weights / cluster_weights.sum())

    users, items, times, ratings = [], [], [], []
    for user in range(num_users):
        u_items, u_times, u_ratings = _simulate_user(
            rng, catalog, cluster_weights, start=start, span=span, mean_sessions=mean_sessions,
            mean_session_length=mean_session_length, sequential_strength=sequential_strength,
            exploration=exploration, new_item_rate=new_item_rate, drift=drift, max_events=max_events_per_user)
        users.extend([str(user + 1)] * len(u_items))
        items.extend(u_items)
        times.extend(u_times)
        ratings.extend(u_ratings)
    ratings_array = np.asarray(ratings, dtype=np.float64)
    events = pd.DataFrame({"user_id": users, "item_id": (np.asarray(items, dtype=np.int64) + 1).astype(str),
                           "timestamp": np.asarray(times, dtype=np.int64), "rating": ratings_array,
                           "action": ratings_array.astype(np.int64)})
    return LoadedEvents(events=events, item_info=_item_info(rng, catalog, num_clusters), has_timestamps=True,
                        name="synthetic")


def _make_catalog(rng: np.random.Generator, num_items: int, num_clusters: int, zipf_exponent: float,
                  new_item_fraction: float, start: int, span: int) -> _Catalog:
    cluster = rng.permutation(np.arange(num_items) % num_clusters)
    popularity = 1.0 / (rng.permutation(num_items) + 1.0) ** zipf_exponent
    is_new = rng.random(num_items) < new_item_fraction
    release = np.where(is_new, start + rng.uniform(0.05, 0.9, num_items) * span,
                       start - rng.uniform(0.0, 20 * 365, num_items) * _DAY).astype(np.int64)
    chains, cum_pop = [], []
    chain_pos = np.zeros(num_items, dtype=np.int64)
    for c in range(num_clusters):
        members = np.flatnonzero(cluster == c)
        members = members[np.argsort(release[members], kind="stable")]
        chain_pos[members] = np.arange(len(members))
        chains.append(members)
        cum_pop.append(np.cumsum(popularity[members]))
    return _Catalog(cluster=cluster, release=release, quality=rng.normal(0.0, 0.5, num_items), chain_pos=chain_pos,
                    chains=chains, cum_pop=cum_pop, global_cum=np.cumsum(popularity),
                    by_release=np.argsort(release, kind="stable"), popularity=popularity)


def _simulate_user(rng: np.random.Generator, cat: _Catalog, cluster_weights: np.ndarray, *, start: int, span: int,
                   mean_sessions: float, mean_session_length: float, sequential_strength: float, exploration: float,
                   new_item_rate: float, drift: float, max_events: int) -> tuple[list[int], list[int], list[int]]:
    num_clusters = len(cat.chains)
    taste_size = min(int(rng.integers(1, 4)), num_clusters)
    taste = rng.choice(num_clusters, size=taste_size, replace=False, p=cluster_weights)
    base = np.zeros(num_clusters)
    base[taste] = rng.dirichlet(np.ones(taste_size))
    drift_to = rng.choice(num_clusters, p=cluster_weights)
    num_sessions = 1 + int(rng.poisson(max(mean_sessions - 1, 0.0)))
    t = start + int(rng.uniform(0.0, 0.6) * span)
    seen: set[int] = set()
    items: list[int] = []
    times: list[int] = []
    ratings: list[int] = []
    for session in range(num_sessions):
        progress = session / max(num_sessions - 1, 1)
        mix = (1 - drift * progress) * base
        mix[drift_to] += drift * progress
        if session:
            t += int(3600 + rng.exponential(3.0) * _DAY)  # days between sessions
        length = 1 + int(rng.poisson(max(mean_session_length - 1, 0.0)))
        current = -1
        for step in range(length):
            if len(items) >= max_events:
                return items, times, ratings
            u = rng.random()
            if step == 0 or current < 0:
                item = _popular_in_cluster(rng, cat, int(rng.choice(num_clusters, p=mix)), t, seen)
            elif u < sequential_strength:
                item = _follow_chain(rng, cat, current, t, seen)
            elif u < sequential_strength + exploration:
                item = _popular_global(rng, cat, t, seen)
            elif u < sequential_strength + exploration + new_item_rate:
                item = _recent_release(rng, cat, t, seen)
            else:
                item = _popular_in_cluster(rng, cat, int(rng.choice(num_clusters, p=mix)), t, seen)
            if item < 0:
                item = _popular_global(rng, cat, t, seen)
            if item < 0:  # everything released is consumed
                break
            seen.add(item)
            current = item
            match = mix[cat.cluster[item]] / mix.max()
            score = 1.5 + 3.0 * match + cat.quality[item] + rng.normal(0.0, 0.7)
            items.append(item)
            times.append(t)
            ratings.append(int(np.clip(np.rint(score), 1, 5)))
            t += int(60 + rng.exponential(15.0) * 60)  # minutes between events of a session
    return items, times, ratings


def _available(cat: _Catalog, item: int, t: int, seen: set[int]) -> bool:
    return cat.release[item] <= t and item not in seen


def _popular_in_cluster(rng: np.random.Generator, cat: _Catalog, cluster: int, t: int, seen: set[int]) -> int:
    chain, cum = cat.chains[cluster], cat.cum_pop[cluster]
    for _ in range(20):
        item = int(chain[min(np.searchsorted(cum, rng.random() * cum[-1]), len(chain) - 1)])
        if _available(cat, item, t, seen):
            return item
    return -1


def _popular_global(rng: np.random.Generator, cat: _Catalog, t: int, seen: set[int]) -> int:
    for _ in range(50):
        item = int(min(np.searchsorted(cat.global_cum, rng.random() * cat.global_cum[-1]), len(cat.release) - 1))
        if _available(cat, item, t, seen):
            return item
    candidates = [i for i in range(len(cat.release)) if _available(cat, i, t, seen)]
    return int(rng.choice(candidates)) if candidates else -1


def _follow_chain(rng: np.random.Generator, cat: _Catalog, current: int, t: int, seen: set[int]) -> int:
    """1-5 steps along the current item's chain, skipping consumed or unreleased items."""
    chain = cat.chains[cat.cluster[current]]
    position = int(cat.chain_pos[current]) + 1 + int(rng.choice(len(_STEP_PROBS), p=_STEP_PROBS))
    for offset in range(len(chain)):
        item = int(chain[(position + offset) % len(chain)])
        if _available(cat, item, t, seen):
            return item
    return -1


def _recent_release(rng: np.random.Generator, cat: _Catalog, t: int, seen: set[int]) -> int:
    """An item released in the last 30 days, weighted by popularity ("newly available")."""
    releases = cat.release[cat.by_release]
    lo, hi = np.searchsorted(releases, t - 30 * _DAY), np.searchsorted(releases, t, side="right")
    candidates = [int(i) for i in cat.by_release[lo:hi] if int(i) not in seen]
    if not candidates:
        return -1
    weights = cat.popularity[candidates]
    return int(rng.choice(candidates, p=weights / weights.sum()))


def _item_info(rng: np.random.Generator, cat: _Catalog, num_clusters: int) -> dict[str, dict[str, Any]]:
    cluster_genres = [list(rng.choice(len(GENRES), size=2, replace=False)) for _ in range(num_clusters)]
    info: dict[str, dict[str, Any]] = {}
    for item in range(len(cat.release)):
        c = int(cat.cluster[item])
        genres = [GENRES[g] for g in cluster_genres[c]]
        if rng.random() < 0.3:
            extra = GENRES[int(rng.integers(len(GENRES)))]
            genres += [extra] if extra not in genres else []
        title = (f"{_ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]} {_THEMES[c % len(_THEMES)]}"
                 f"{_SUFFIXES[int(rng.integers(len(_SUFFIXES)))]}")
        release = int(cat.release[item])
        info[str(item + 1)] = {"title": title, "genres": genres, "release_timestamp": release,
                               "year": dt.datetime.fromtimestamp(release, tz=dt.timezone.utc).year}
    return info
