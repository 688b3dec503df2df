"""Few-shot evaluation over cached frozen features.

A dataset is embedded once (`embed`); episodes are then drawn as *indices* by learn2learn's task
samplers (`sample_episodes`) and classified in one batched tensor op over all episodes
(`evaluate_fewshot`; `episode_accuracies` scores any share of them). Episodes depend only on
(labels, ways, shots, queries, episodes, seed), so every model sees the same episodes and two
models can be compared paired.

Protocol (Ericsson et al. 2021, "How Well Do Self-Supervised Models Transfer?"; BSCD-FSL):
N-way K-shot episodes with Q queries per class, accuracy averaged over episodes and reported as
mean ± 1.96·s/√n (`mean_ci95`).
"""
import copy
import hashlib
import random

import numpy as np
import torch
import torch.nn.functional as F
from learn2learn.data import MetaDataset, Taskset
from learn2learn.data.transforms import FusedNWaysKShots
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from tasks.common.errors import UserError
from tasks.evaluation.frozen import frozen_features
from tasks.evaluation.linear import logreg_logits

_EPISODE_CACHE = {}  # (labels digest, ways, shots, queries, episodes, seed) -> (support, query)
_EPISODE_CACHE_SIZE = 32
_CHUNK_ELEMENTS = 1 << 24  # features gathered per classifier call (64 MiB of float32)


@torch.no_grad()
def embed(extractor, images, batch_size=1024, device="cpu", progress=True):
    """Features of uint8 ``images`` ([N,H,W] or [N,C,H,W]) as a float32 CPU tensor [N,D].

    Each batch of ``batch_size`` images is scaled to [0, 1] (x/255), given a channel dim if it has
    none and put in the channels-last layout. A Module extractor runs as an eval-mode channels-last
    copy through `tasks.evaluation.frozen.frozen_features` (BatchNorm folded, cache-sized chunks on the CPU;
    docs/results.md, 'Evaluation speed'), so the caller's module is left as it was; the features equal
    ``extractor.eval()(x)`` up to float rounding. Outputs with more than two dims are flattened to
    [B, D]. ``progress``: show a progress bar.
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise TypeError(f"embed expects uint8 images, got {images.dtype}")
    if images.dim() not in (3, 4):
        raise ValueError(f"embed expects images [N,H,W] or [N,C,H,W], got shape {tuple(images.shape)}")
    if len(images) == 0:
        raise UserError("no images to embed: the dataset split is empty; check the data folder and split")
    if isinstance(extractor, torch.nn.Module):
        module = copy.deepcopy(extractor).eval().to(memory_format=torch.channels_last)
        extractor = lambda x: frozen_features(module, x)  # noqa: E731
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="embed", unit="batch", leave=False,
                      disable=not progress):
        batch = images[start:start + batch_size].to(device).float().div_(255)
        if batch.dim() == 3:
            batch = batch.unsqueeze(1)
        out.append(extractor(batch.contiguous(memory_format=torch.channels_last)).flatten(1).float().cpu())
    return torch.cat(out)


def class_codes(labels):
    """Labels of any comparable type as int64 codes 0..C-1 in sorted label order, and the labels."""
    labels = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    classes, codes = np.unique(labels, return_inverse=True)
    return classes, codes.astype(np.int64)


def check_episode_args(labels, ways, shots, queries, episodes):
    """Raise ``UserError`` unless ``labels`` allow ``ways``-way ``shots``+``queries`` episodes.

    Cheap; call it before expensive work (embedding) so bad flags fail at once.
    """
    classes, codes = class_codes(labels)
    _check_codes(classes, codes, ways, shots, queries, episodes)


def _check_codes(classes, codes, ways, shots, queries, episodes):
    if ways < 2:
        raise UserError(f"asked for {ways} ways; few-shot episodes need --ways 2 or more")
    if ways > len(classes):
        raise UserError(f"asked for {ways} ways but the split has {len(classes)} classes; "
                        f"use --ways {len(classes)} or fewer")
    for name, value in (("shots", shots), ("queries", queries), ("episodes", episodes)):
        if value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    counts = np.bincount(codes, minlength=len(classes))
    small = counts < shots + queries
    if small.any():
        worst = int(counts.argmin())
        raise UserError(
            f"{shots} shots + {queries} queries need {shots + queries} samples per class but "
            f"{int(small.sum())} of {len(classes)} classes have fewer (class {classes[worst]!r} has "
            f"{counts[worst]}); use --shots and --queries that add up to {counts.min()} or less")


class IndexDataset(Dataset):
    """Sample ``i`` is ``(i, codes[i])``: learn2learn draws indices, features are gathered after."""

    def __init__(self, codes):
        self.codes = codes.tolist()

    def __len__(self):
        return len(self.codes)

    def __getitem__(self, i):
        return i, self.codes[i]


def sample_episodes(labels, ways, shots, queries, episodes, seed):
    """Draw ``episodes`` few-shot episodes over ``labels`` with learn2learn's task samplers.

    Returns, per episode, ``(support_idx [ways*shots], query_idx [ways*queries])``: int64 indices
    into the dataset, laid out class by class, so the episode label of position i is
    ``i // shots`` (support) and ``i // queries`` (query); classes are in a random order per episode.

    A `Taskset` (learn2learn's `TaskDataset` under its current, non-deprecated name) over a
    dataset of (index, class) pairs with `FusedNWaysKShots(ways, shots + queries)` draws each
    task's description: the indices, class by class in the order the classes were drawn. Each
    class's samples are then split into its first ``shots`` (support) and the rest (query).
    `FusedNWaysKShots` is learn2learn's one-step `NWays` + `KShots` (same distribution: ``ways``
    classes uniformly without replacement, then ``shots + queries`` samples of each without
    replacement); unlike the two-step pair, whose cost grows with the class size (docs/results.md,
    'One-off costs'), its cost depends only on ``ways * (shots + queries)``.
    The usual `LoadData` and `RemapLabels` steps after it load each (index, class) pair and
    relabel the classes 0..ways-1 in a shuffled order; they took most of the drawing time
    (docs/results.md, 'Evaluation speed'). Here the
    relabelling is done directly on the description, as RemapLabels does it (the classes'
    ``list(set(...))`` order, then `random.shuffle` from the same stream), so the episodes and
    their class order are those of the full learn2learn pipeline (tested).
    learn2learn draws from Python's `random`: it is seeded with ``seed`` here and the caller's
    state is restored after, so the episodes depend on nothing but the arguments (not on features
    or any global seed). Labels are coded by sorted value, so any 1-D array of labels works.
    """
    support, query = _draw_episodes(labels, ways, shots, queries, episodes, seed)
    return list(zip(support.unbind(), query.unbind()))


def _draw_episodes(labels, ways, shots, queries, episodes, seed):
    """`sample_episodes` as stacked tensors (support [E, ways*shots], query [E, ways*queries])."""
    classes, codes = class_codes(labels)
    _check_codes(classes, codes, ways, shots, queries, episodes)
    draw = episode_drawer(codes, ways, shots + queries, episodes)
    state = random.getstate()
    random.seed(seed)
    try:
        per_class = torch.tensor([draw() for _ in range(episodes)])
    finally:
        random.setstate(state)
    return per_class[:, :, :shots].reshape(episodes, -1), per_class[:, :, shots:].reshape(episodes, -1)


def episode_drawer(codes, ways, per_class, episodes=-1):
    """The one episode sampler: a function drawing, from Python's ``random``, one episode over the
    class codes ``codes`` (0..C-1) as dataset indices [ways, per_class], a row per class in the order
    RemapLabels would label them (see `sample_episodes`). Evaluation draws all its episodes from one
    seed; training (``tasks.training.episodes``) one per step, seeded by the step."""
    by_class = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
    dataset = MetaDataset(IndexDataset(codes), labels_to_indices={c: idx.tolist() for c, idx in enumerate(by_class)})
    taskset = Taskset(dataset, [FusedNWaysKShots(dataset, n=ways, k=per_class)], num_tasks=episodes)
    code_of = codes.tolist()
    return lambda: _relabelled(taskset, code_of, ways)


def _relabelled(taskset, code_of, ways):
    """One task's indices [ways, per class], class rows in the order RemapLabels (shuffle=True) labels them."""
    index = [d.index for d in taskset.sample_task_description()]  # class by class, in blocks
    per_class = len(index) // ways
    blocks = {code_of[index[start]]: index[start:start + per_class] for start in range(0, len(index), per_class)}
    classes = list(set(code_of[i] for i in index))
    random.shuffle(classes)
    return [blocks[c] for c in classes]


def cached_episodes(labels, ways, shots, queries, episodes, seed):
    """`_draw_episodes`, memoised per (labels' class codes, ways, shots, queries, episodes, seed)."""
    _, codes = class_codes(labels)
    key = (hashlib.sha256(codes.tobytes()).hexdigest(), ways, shots, queries, episodes, seed)
    if key not in _EPISODE_CACHE:
        if len(_EPISODE_CACHE) >= _EPISODE_CACHE_SIZE:
            del _EPISODE_CACHE[next(iter(_EPISODE_CACHE))]
        _EPISODE_CACHE[key] = _draw_episodes(codes, ways, shots, queries, episodes, seed)
    return _EPISODE_CACHE[key]


def clear_episode_cache():
    """Forget the episodes ``cached_episodes`` keeps, so that the next evaluation draws them again."""
    _EPISODE_CACHE.clear()


def prototype_logits(support, support_y, query, ways, normalize=True):
    """Nearest-centroid (ProtoNet) logits: ``-||q - c_k||²`` with ``c_k`` the mean of class k's support.

    Snell et al. 2017, "Prototypical Networks". Works on one episode (support [S,D], support_y [S],
    query [Q,D] -> [Q,ways]) or a batch of episodes ([E,S,D], [E,S], [E,Q,D] -> [E,Q,ways]).
    ``normalize`` (default True) L2-normalises support and query features before the prototypes
    are taken, as is usual for frozen SSL features, whose norms carry little class information.
    """
    if normalize:
        support, query = F.normalize(support, dim=-1), F.normalize(query, dim=-1)
    one_hot = F.one_hot(support_y, ways).to(support.dtype)  # [..., S, ways]
    prototypes = one_hot.transpose(-1, -2) @ support / one_hot.sum(-2).unsqueeze(-1)
    return -torch.cdist(query, prototypes, compute_mode="donot_use_mm_for_euclid_dist").square()


CLASSIFIERS = {"proto": prototype_logits, "logreg": logreg_logits}


def mean_ci95(values):
    """``(mean, 1.96 · s / √n)`` with ``s`` the sample std (ddof=1); the interval is nan for n < 2."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_ci95 needs at least one value")
    ci95 = 1.96 * values.std(ddof=1) / np.sqrt(values.size) if values.size > 1 else float("nan")
    return float(values.mean()), float(ci95)


def paired(accuracies_a, accuracies_b):
    """Paired differences A − B over the settings both mappings (setting → per-episode accuracies)
    hold with as many episodes: ``[(setting, {mean_a, mean_b, difference, ci95, n})]``, in A's
    order, ``difference, ci95 = mean_ci95(a − b)``. Equal settings must mean identical episodes
    (same seed, sizes and labels), which is what makes the difference paired."""
    rows = []
    for setting, a in accuracies_a.items():
        b = accuracies_b.get(setting)
        if b is not None and len(a) == len(b):
            difference, ci95 = mean_ci95(np.asarray(a, np.float64) - np.asarray(b, np.float64))
            rows.append((setting, {"mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)),
                                   "difference": difference, "ci95": ci95, "n": len(a)}))
    return rows


def evaluate_fewshot(features, labels, ways=5, shots=1, queries=15, episodes=600, seed=0, classifier="proto"):
    """Few-shot accuracy of frozen ``features`` [N,D] with ``labels`` [N] over seeded episodes.

    Returns ``{"accuracies": ndarray [episodes] in percent, "mean": float, "ci95": float}`` with
    the interval from `mean_ci95`; the accuracies are those of `episode_accuracies`.
    """
    accuracies = episode_accuracies(features, labels, ways, shots, queries, episodes, seed, classifier)
    mean, ci95 = mean_ci95(accuracies)
    return {"accuracies": accuracies, "mean": mean, "ci95": ci95}


def episode_accuracies(features, labels, ways=5, shots=1, queries=15, episodes=600, seed=0, classifier="proto",
                       share=slice(None)):
    """Accuracy (%, float64 ndarray) of each episode of the ``share`` of the seeded episodes, in order.

    Episodes come from `sample_episodes` and are cached per (labels, ways, shots, queries, episodes,
    seed), so a second model reuses them; all episodes of the share (a slice of range(episodes), by
    default all) are classified in batched tensor ops (in chunks bounded by memory) on
    ``features``' device. Processes that each score a share draw the same episodes.
    """
    if classifier not in CLASSIFIERS:
        raise UserError(f"unknown classifier {classifier!r}; choose one of {', '.join(sorted(CLASSIFIERS))}")
    features = torch.as_tensor(features)
    if features.dim() != 2 or len(features) != len(labels):
        raise ValueError(f"features must be [N,D] with N = len(labels) = {len(labels)}, "
                         f"got shape {tuple(features.shape)}")
    features = features.float()
    support_idx, query_idx = (t[share].to(features.device) for t in
                              cached_episodes(labels, ways, shots, queries, episodes, seed))
    support_y = torch.arange(ways, device=features.device).repeat_interleave(shots)
    query_y = torch.arange(ways, device=features.device).repeat_interleave(queries)
    chunk = max(1, _CHUNK_ELEMENTS // (ways * (shots + queries) * features.shape[1]))
    correct = [torch.empty(0, dtype=torch.float64, device=features.device)]  # an empty share scores nothing
    for s_idx, q_idx in zip(support_idx.split(chunk), query_idx.split(chunk)):
        if len(s_idx):
            logits = CLASSIFIERS[classifier](features[s_idx], support_y.expand(len(s_idx), -1), features[q_idx], ways)
            correct.append((logits.argmax(-1) == query_y).double().mean(-1))
    return 100 * torch.cat(correct).cpu().numpy()
