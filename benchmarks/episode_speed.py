"""Few-shot evaluation speed: our cached-feature suite against the common per-episode pipeline.

Both run the same episodes with the same classifier (prototypes) and backbone on the glyphs'
evaluation split:

- per-episode pipeline (what most few-shot code does): learn2learn's ``Taskset`` over the *images*
  (``FusedNWaysKShots``, ``LoadData``, ``RemapLabels``), the backbone run on each episode's
  images, then the classifier;
- the same with our fast forward pass (``tasks.evaluation.frozen.frozen_features`` on a channels-last copy),
  to separate what caching gains from what the forward pass gains;
- ours, cold: embed the split once, then draw every episode as indices and classify them all in
  batched tensor work (``tasks.evaluation.fewshot.evaluate_fewshot``);
- ours, warm: the same with the features already embedded (a second shot setting, classifier or
  σ on the same model, or a cached embedding).

Seeded alike, the two samplers draw the same episodes; the script checks that the per-episode
accuracies agree. Usage: ``python benchmarks/episode_speed.py --episodes 600 --shots 5``.
"""
import argparse
import copy
import json
import random
import time

import numpy as np
import torch
from learn2learn.data import MetaDataset, Taskset
from learn2learn.data.transforms import FusedNWaysKShots, LoadData, RemapLabels
from torch.utils.data import Dataset

from gessl import build_model, resolve_config
from tasks.common.io import atomic_write_text
from tasks.data.registry import load_split
from tasks.evaluation.fewshot import class_codes, clear_episode_cache, embed, evaluate_fewshot, prototype_logits
from tasks.evaluation.frozen import frozen_features


class ImageDataset(Dataset):
    """(image in [0, 1] with a channel dimension, class code) pairs, as a per-episode pipeline reads them."""

    def __init__(self, images, codes):
        self.images, self.codes = torch.as_tensor(images), codes.tolist()

    def __len__(self):
        return len(self.codes)

    def __getitem__(self, i):
        return self.images[i].float().div(255).unsqueeze(0), self.codes[i]


@torch.no_grad()
def per_episode_pipeline(forward, images, labels, ways, shots, queries, episodes, seed):
    """Accuracy (%) of every episode, the backbone run on each episode's images."""
    _, codes = class_codes(labels)
    by_class = np.split(np.argsort(codes, kind="stable"), np.cumsum(np.bincount(codes))[:-1])
    dataset = MetaDataset(ImageDataset(images, codes),
                          labels_to_indices={c: idx.tolist() for c, idx in enumerate(by_class)})
    taskset = Taskset(dataset, [FusedNWaysKShots(dataset, n=ways, k=shots + queries), LoadData(dataset),
                                RemapLabels(dataset)], num_tasks=episodes)
    random.seed(seed)
    accuracies = []
    for i in range(episodes):
        x, y = taskset[i]
        order = y.argsort(stable=True).view(ways, shots + queries)
        support, query = order[:, :shots].reshape(-1), order[:, shots:].reshape(-1)
        features = forward(x).flatten(1)
        logits = prototype_logits(features[support], y[support], features[query], ways)
        accuracies.append(100 * float((logits.argmax(1) == y[query]).double().mean()))
    return np.array(accuracies)


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/episode_speed.json")
    args = parser.parse_args()
    images, labels = load_split("glyphs", "evaluation")
    net = build_model(resolve_config({"backbone": "conv4", "seed": 0}), in_channels=1, num_classes=1).backbone.eval()
    setting = (args.ways, args.shots, args.queries, args.episodes)
    theirs, t_theirs = timed(lambda: per_episode_pipeline(net, images, labels, *setting, args.seed))
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    theirs_fast, t_theirs_fast = timed(lambda: per_episode_pipeline(
        lambda x: frozen_features(fast, x), images, labels, *setting, args.seed))

    def ours():
        clear_episode_cache()  # draw the episodes again: part of the protocol's cost
        return evaluate_fewshot(embed(net, images), labels, *setting, seed=args.seed)["accuracies"]

    cold, t_cold = timed(ours)
    features = embed(net, images)
    clear_episode_cache()
    warm, t_warm = timed(lambda: evaluate_fewshot(features, labels, *setting, seed=args.seed)["accuracies"])
    result = {"setting": dict(zip(["ways", "shots", "queries", "episodes"], setting)), "images": len(images),
              "seconds": {"per_episode": t_theirs, "per_episode_fast_forward": t_theirs_fast, "ours_cold": t_cold,
                          "ours_warm": t_warm},
              "episodes_per_s": {k: args.episodes / t for k, t in
                                 [("per_episode", t_theirs), ("per_episode_fast_forward", t_theirs_fast),
                                  ("ours_cold", t_cold), ("ours_warm", t_warm)]},
              "speed_up": {"cold": t_theirs / t_cold, "warm": t_theirs / t_warm,
                           "cold_vs_fast_forward": t_theirs_fast / t_cold},
              "episodes_with_different_accuracy": int((np.abs(theirs - cold) > 1e-9).sum()),
              "episodes_with_different_accuracy_fast_forward": int((np.abs(theirs_fast - cold) > 1e-9).sum()),
              "mean_accuracy": {"per_episode": float(theirs.mean()), "ours": float(cold.mean())}}
    assert np.array_equal(cold, warm)
    atomic_write_text(args.out, json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
