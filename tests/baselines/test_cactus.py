"""CACTUs: its k-means and partitions checked by hand on tiny sets, its tasks (clusters of one
partition, replayed from (seed, step)), its loss shown to be ProtoNet's and MAML's on the cluster
pseudo-labels, its options refused in one line, and a short run on the glyphs that learns its cluster tasks and
beats its random backbone."""
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from baselines.cactus import CACTUs, PartitionEpisodes, cactus_partitions, kmeans, kmeans_objective
from baselines.maml import MAML
from baselines.protonet import ProtoNet
from gessl import train
from gessl.backbones import build_backbone, load_backbone, save_backbone
from gessl.evaluate import evaluate_run
from tasks.common.errors import UserError
from tasks.evaluation.fewshot import embed, mean_ci95
from tasks.training.episodes import EpisodeSampler
from tests.helpers import metrics
from tests.tasks.data.test_omniglot import REAL, real_files


def blobs(sizes, centres, spread=0.1, seed=0):
    """Points around ``centres``, ``sizes[i]`` of blob i, in blob order, and their blob numbers."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.tensor(c, dtype=torch.float64) + spread * torch.randn(n, len(c), generator=g,
                                                                              dtype=torch.float64)
                   for n, c in zip(sizes, centres)])
    return x, torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))


def same_partition(a, b):
    """Whether the labelings ``a`` and ``b`` group the points alike (up to renaming the groups)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@pytest.mark.parametrize("seed", range(5))
def test_kmeans_finds_well_separated_blobs(seed):
    x, truth = blobs([15, 20, 25, 10], [(0, 0), (6, 0), (0, 6), (6, 6)], seed=seed)
    assign, centres = kmeans(x, 4, torch.Generator().manual_seed(seed))
    assert same_partition(assign, truth)
    for c in range(4):  # a fixed point: every centre the mean of its points
        torch.testing.assert_close(centres[c], x[assign == c].mean(0))


def test_lloyd_iterations_never_raise_the_objective_and_end_at_a_fixed_point():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(200, 3, generator=g, dtype=torch.float64)  # no cluster structure: many iterations
    objectives = []
    for iterations in range(1, 30):  # the same seeding each time, one Lloyd iteration more
        assign, centres = kmeans(x, 8, torch.Generator().manual_seed(0), iterations=iterations)
        objectives.append(kmeans_objective(x, assign, centres).item())
    assert all(b <= a + 1e-12 for a, b in zip(objectives, objectives[1:])), objectives
    assert objectives[-1] < objectives[0] - 1e-3
    distances = (x[:, None, :] - centres[None]).square().sum(-1)  # nearest centre by hand
    assert torch.equal(distances.argmin(1), assign)


def test_partitions_rescale_the_dimensions_after_the_first_and_drop_small_clusters():
    # Three blobs, the third of 2 points: with at least 3 members a cluster is kept.
    z, truth = blobs([6, 8, 2], [(0, 0), (5, 0), (0, 5)], seed=1)
    labels = cactus_partitions(z, 3, 3, 3, torch.Generator().manual_seed(7))
    assert labels.shape == (3, 16)
    g = torch.Generator().manual_seed(7)  # the rule by hand: k-means of z, then of z ⊙ U(0, 1) weights
    first, _ = kmeans(z, 3, g)
    weights = torch.rand(2, generator=g, dtype=z.dtype)
    second, _ = kmeans(z * weights, 3, g)
    for want, got in ((first, labels[0]), (second, labels[1])):
        counts = torch.bincount(want, minlength=3)
        torch.testing.assert_close(got, torch.where(counts[want] >= 3, want, -1))
    assert same_partition(labels[0][:14], truth[:14]) and (labels[0][14:] == -1).all()


def test_an_episode_is_clusters_of_one_partition_with_members_of_each_and_replays_from_seed_and_step():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 9, (4, 120), generator=g)
    labels[labels == 8] = -1  # dropped points
    ways, shots, queries = 3, 2, 1
    episodes = PartitionEpisodes(labels, ways, shots, queries, EpisodeSampler)
    seen = set()
    for step in range(40):
        index, episode_labels = episodes.sample(seed=5, step=step)
        p = episodes.partition(5, step)
        seen.add(p)
        clusters = labels[p][index]
        assert (clusters >= 0).all() and len(index.unique()) == len(index) == 9
        assert torch.equal(episode_labels, torch.arange(ways).repeat(shots + queries))
        for c in range(ways):  # each episode class is one cluster of partition p, K + Q of its members
            assert len(clusters[episode_labels == c].unique()) == 1
        assert len(clusters.unique()) == ways
        again = episodes.sample(seed=5, step=step)
        fresh = PartitionEpisodes(labels.clone(), ways, shots, queries, EpisodeSampler).sample(seed=5, step=step)
        assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip((index, episode_labels), again, fresh))
    assert len(seen) > 1  # the partition moves with the step
    assert not torch.equal(episodes.sample(seed=6, step=0)[0], episodes.sample(seed=5, step=0)[0])


def test_a_partition_with_fewer_kept_clusters_than_ways_is_refused():
    labels = torch.tensor([[0] * 5 + [1] * 5 + [-1] * 5, [0] * 5 + [1] * 5 + [2] * 5])
    with pytest.raises(ValueError, match="partition 0 of the CACTUs clusters has 2 clusters"):
        PartitionEpisodes(labels, 3, 2, 2, EpisodeSampler)


def tiny_images(n=60, seed=0):
    return torch.randint(0, 256, (n, 28, 28), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_the_encoder_is_the_initial_backbone_or_a_saved_one_and_the_partitions_are_reproducible(tmp_path):
    images = tiny_images()
    options = dict(cactus_partitions=2, cactus_clusters=4, episode_ways=2, episode_shots=1, episode_queries=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        backbone = build_backbone("conv4")
        cactus = CACTUs(backbone.out_dim, **options)
        runs.append(cactus.episode_sampler(images, backbone, embed, EpisodeSampler, 3).labels)
    assert torch.equal(*runs)
    assert backbone.training  # the encoder's mode is restored
    torch.manual_seed(1)
    other = build_backbone("conv4")
    save_backbone(other, "conv4", 1, 28, tmp_path / "backbone.pt")
    cactus = CACTUs(64, cactus_encoder=str(tmp_path), **options)
    assert cactus.encoder_file == tmp_path / "backbone.pt"
    saved = cactus.episode_sampler(images, load_backbone(cactus.encoder_file)[0], embed, EpisodeSampler, 3).labels
    other.eval()
    with torch.no_grad():
        z = other(images.float().div(255).unsqueeze(1))
    torch.testing.assert_close(saved, cactus_partitions(z, 2, 4, 2, torch.Generator().manual_seed(3)))


def episode(ways=3, shots=2, queries=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(ways * (shots + queries), 5, generator=g, dtype=torch.float64) for _ in range(2)]
    return {"views": views, "labels": torch.arange(ways).repeat(shots + queries)}


@pytest.mark.parametrize("learner", ["proto", "maml"])
def test_the_loss_is_protonets_or_mamls_on_the_pseudo_labels(learner):
    options = dict(episode_ways=3, episode_shots=2, episode_queries=2)
    torch.manual_seed(0)
    cactus = CACTUs(4, cactus_learner=learner, maml_inner_steps=2, maml_inner_lr=0.3, **options).double()
    torch.manual_seed(0)
    reference = (ProtoNet(4, episode_shots=2, episode_queries=2) if learner == "proto" else
                 MAML(4, maml_inner_steps=2, maml_inner_lr=0.3, **options)).double()
    backbone = nn.Sequential(nn.Linear(5, 4), nn.Tanh()).double()
    batch = episode()
    got, want = cactus(backbone, batch), reference(backbone, batch)
    assert got.loss.item() == want.loss.item() and got.terms.keys() == want.terms.keys()
    grads = [torch.autograd.grad(out.loss, [*backbone.parameters(), *module.parameters()])
             for out, module in ((got, cactus), (want, reference))]
    for a, b in zip(*grads, strict=True):
        assert torch.equal(a, b)
    if learner == "proto":  # and ProtoNet's loss by hand: prototypes of the support, softmax of −‖q − c‖²
        h = torch.cat([backbone(v) for v in batch["views"]])
        y, support = batch["labels"].repeat(2), (torch.arange(12) % 12 < 6).repeat(2)
        c = torch.stack([h[support & (y == k)].mean(0) for k in range(3)])
        logits = -(h[~support][:, None] - c[None]).square().sum(-1)
        manual = (torch.logsumexp(logits, 1) - logits[torch.arange(len(logits)), y[~support]]).mean()
        assert got.loss.item() == pytest.approx(manual.item(), rel=1e-12)


@pytest.mark.parametrize("flags, message", [
    (["--meta", "gessl"], "itself a meta-learner"),
    (["--meta", "none", "--cactus-learner", "knn"], "--cactus-learner must be proto or maml"),
    (["--meta", "none", "--cactus-clusters", "1"], "--cactus-clusters must be at least 2"),
    (["--meta", "none", "--cactus-partitions", "0"], "--cactus-partitions must be positive"),
    (["--meta", "none", "--cactus-clusters", "10"], "--cactus-clusters 10 cannot give --episode-ways 20-way"),
    (["--meta", "none", "--cactus-encoder", "no/such/run"], "neither random nor a run folder"),
])
def test_bad_options_are_refused_in_one_line_and_write_nothing(tmp_path, flags, message):
    with pytest.raises(UserError, match=message) as error:
        train.main(["--base", "cactus", *flags, "--out", str(tmp_path / "run")])
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


@real_files
def test_a_corrupt_encoder_is_one_line_and_leaves_no_run_folder(tmp_path):
    (tmp_path / "encoder").mkdir()
    (tmp_path / "encoder" / "backbone.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserError, match="corrupt or unreadable") as error:
        train.main(["--base", "cactus", "--meta", "none", "--dataset", "omniglot-small", "--cactus-encoder",
                    str(tmp_path / "encoder"), "--data-root", f"{tmp_path / 'cache'}{os.pathsep}{REAL}",
                    "--out", str(tmp_path / "run")])
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


@real_files
def test_a_short_run_on_the_glyphs_beats_its_random_backbone_on_unseen_classes(glyph_root, tmp_path):
    # With the random encoder: its clusters are tasks the backbone learns (the query loss falls below
    # a uniform guess's), and the features then beat the random backbone on unseen glyph classes,
    # paired over the same 5-way 1-shot episodes.
    out = tmp_path / "run"
    train.main(["--base", "cactus", "--meta", "none", "--max-steps", "40", "--cactus-partitions", "2",
                "--cactus-clusters", "100", "--episode-ways", "10", "--episode-shots", "2", "--episode-queries", "2",
                "--eval-episodes", "0", "--log-every", "10", "--data-root", str(glyph_root), "--out", str(out)])
    losses = [record["proto_loss"] for record in metrics(out)]
    assert losses[-1] < 0.8 * losses[0] and losses[-1] < math.log(10), losses
    evaluate_run(out, "quick", axes=["generalization"], episodes=100, shots=[1])
    with np.load(out / "episodes.npz") as saved:
        accuracy = {name.split("/")[0]: saved[name] for name in saved.files if "/glyphs/" in name and "/proto/" in name}
    gain, ci95 = mean_ci95(accuracy["run"] - accuracy["run (random init)"])
    assert gain - ci95 > 0, (gain, ci95)
