"""PsCo: its pseudo tasks built by hand from crafted queues, its loss and gradients against a reference
written here from the paper's equations, the queue and momentum updates, its place in the CLI (a
meta-learner: no GeSSL around it) and a short run on the glyphs that beats its random backbone on
unseen scripts."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from baselines.psco import PsCo, pseudo_shots
from gessl import train
from gessl.evaluate import evaluate_run
from tasks.common.errors import UserError
from tasks.evaluation.fewshot import mean_ci95


def unit(degrees):
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_the_equipartition_gives_each_key_its_own_shot_where_nearest_neighbours_would_share_one():
    # Keys at 0°, 10°, 20°; queue entries at 10°, −60°, 80°. Every key's nearest entry is the one at
    # 10°, but each entry must take a third of the mass: the transport that keeps the most cosine
    # gives 0° → −60° (cos 60°), 10° → 10° (cos 0°), 20° → 80° (cos 60°), 2.0 in all against 1.83 for
    # the two other assignments that give 10° to a neighbour.
    keys = torch.tensor([unit(0), unit(10), unit(20)], dtype=torch.float64)
    queue = torch.tensor([unit(10), unit(-60), unit(80)], dtype=torch.float64)
    assert (keys @ queue.T).argmax(1).tolist() == [0, 0, 0]
    shots, assignment = pseudo_shots(keys, queue, 1, epsilon=0.05)
    assert shots.tolist() == [[1], [0], [2]]
    torch.testing.assert_close(assignment.sum(1), torch.ones(3, dtype=torch.float64))  # each row an assignment


def test_the_top_k_shots_are_the_entries_of_the_keys_cluster():
    # Three keys on the axes of R³; the queue holds two entries near each axis, interleaved.
    keys = torch.eye(3, dtype=torch.float64)
    near = {0: [1, 3], 1: [0, 5], 2: [2, 4]}  # axis -> its queue entries
    queue = torch.zeros(6, 3, dtype=torch.float64)
    for axis, rows in near.items():
        for row, tilt in zip(rows, (0.1, -0.2)):
            queue[row, axis], queue[row, (axis + 1) % 3] = 1.0, tilt
    queue = nn.functional.normalize(queue, dim=1)
    shots, assignment = pseudo_shots(keys, queue, 2, epsilon=0.05)
    assert [sorted(row) for row in shots.tolist()] == [near[0], near[1], near[2]]
    # Each entry takes a sixth of the mass and each key a third: the key's two entries share it.
    torch.testing.assert_close(assignment.gather(1, shots), torch.full((3, 2), 0.5, dtype=torch.float64))


def reference_sinkhorn(scores, epsilon, iterations):
    """SwAV's Sinkhorn-Knopp written out: Q = exp(S / ε) / Σ exp(S / ε); each iteration divides every
    column by M times its sum, then every row by N times its sum; the rows are scaled to sum to 1."""
    n, m = scores.shape
    q = torch.exp(scores / epsilon)
    q = q / q.sum()
    for _ in range(iterations):
        q = torch.stack([q[:, j] / (m * q[:, j].sum()) for j in range(m)], dim=1)
        q = torch.stack([q[i] / (n * q[i].sum()) for i in range(n)])
    return q * n


def reference_loss(method, backbone, batch, queue):
    """L = ½ Σ over the two directions of L_PsCo + L_MoCo, each term written from its equation."""
    views = torch.cat(batch["views"])
    q = nn.functional.normalize(method.predictor(method.projector(backbone(views))), dim=1)
    with torch.no_grad():
        keys = nn.functional.normalize(method.key_encoder.projector(method.key_encoder.backbone(views)), dim=1)
    n, tau_p, tau = len(views) // 2, method.psco_temperature, method.temperature
    total = 0
    for qs, ks in ((q[:n], keys[n:]), (q[n:], keys[:n])):
        a = reference_sinkhorn(ks @ queue.T, method.epsilon, 3)
        shots = [queue[a[i].argsort(descending=True)[:method.shots]] for i in range(n)]
        psco = 0
        for i in range(n):
            denominator = sum(torch.exp(qs[i] @ s / tau_p) for j in range(n) for s in shots[j])
            psco = psco - sum(torch.log(torch.exp(qs[i] @ s / tau_p) / denominator) for s in shots[i]) / method.shots
        moco = 0
        for i in range(n):
            positive = torch.exp(qs[i] @ ks[i] / tau)
            moco = moco - torch.log(positive / (positive + torch.exp(queue @ qs[i] / tau).sum()))
        total = total + (psco + moco) / n / 2
    return total


def setup(queue=10, shots=2):
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.BatchNorm1d(6), nn.ReLU()).double()
    method = PsCo(6, backbone, proj_hidden=8, proj_dim=4, temperature=0.2, moco_queue=queue, psco_shots=shots,
                  psco_temperature=0.5, psco_epsilon=0.1).double()
    with torch.no_grad():  # a key encoder that differs from the online networks, as after training
        for p in method.key_encoder.parameters():
            p.add_(0.3 * torch.randn_like(p))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(7, 1, 4, 4, generator=g, dtype=torch.float64)
    views = [images + 0.2 * torch.randn(images.shape, generator=g, dtype=torch.float64) for _ in range(2)]
    return backbone, method, {"images": images, "views": views}


def online_parameters(backbone, method):
    return [*backbone.parameters(), *method.projector.parameters(), *method.predictor.parameters()]


def test_loss_and_gradients_follow_the_equations():
    backbone, method, batch = setup()
    queue = method.queue.clone()
    out = method(backbone, batch)
    parameters = online_parameters(backbone, method)
    got_grads = torch.autograd.grad(out.loss, parameters)
    method.queue.copy_(queue)
    want = reference_loss(method, backbone, batch, queue)
    want_grads = torch.autograd.grad(want, parameters)
    assert out.loss.item() == pytest.approx(want.item(), rel=1e-12)
    assert (out.terms["psco_pseudo_contrast"] + out.terms["psco_moco_infonce"]).item() == pytest.approx(out.loss.item(), rel=1e-12)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_gradient_reaches_the_online_networks_only():
    backbone, method, batch = setup()
    method(backbone, batch).loss.backward()
    for p in online_parameters(backbone, method):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in method.key_encoder.parameters())
    assert not method.queue.requires_grad and method.queue.grad is None
    trained = {name.split(".")[0] for name, p in method.named_parameters() if p.requires_grad}
    assert trained == {"projector", "predictor"}


def test_the_second_views_keys_are_enqueued_first_in_first_out():
    backbone, method, batch = setup(queue=10)
    before = method.queue.clone()
    method(backbone, batch)
    with torch.no_grad():  # the key encoder's BatchNorm normalises over both views, as in the forward pass
        keys = nn.functional.normalize(method.key_encoder(torch.cat(batch["views"])), dim=1)[7:]
    torch.testing.assert_close(method.queue[:7], keys)
    torch.testing.assert_close(method.queue[7:], before[7:])
    assert int(method.queue_ptr) == 7
    method(backbone, batch)  # 7 more keys into 10 slots: rows 7, 8, 9, then 0, 1, 2, 3
    torch.testing.assert_close(method.queue[[7, 8, 9, 0, 1, 2, 3]], keys)
    torch.testing.assert_close(method.queue[4:7], keys[4:7])
    assert int(method.queue_ptr) == 4


def test_the_key_encoder_follows_backbone_and_projector_by_momentum_and_has_no_predictor():
    backbone, method, batch = setup()
    method.momentum = 0.9
    old = [p.clone() for p in method.key_encoder.parameters()]
    method.after_step(backbone, 0.5)
    online = [*backbone.parameters(), *method.projector.parameters()]
    for new, xi, theta in zip(method.key_encoder.parameters(), old, online, strict=True):
        torch.testing.assert_close(new, 0.9 * xi + 0.1 * theta)


def test_both_encoders_standardise_their_projections_with_a_batchnorm_on_the_projector_output():
    # The paper's projector ends in a BatchNorm: each projection dimension has mean 0 and variance 1
    # over the batch (at initialisation, scale 1 and shift 0), online and momentum alike.
    _, _, batch = setup()
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU()).double()
    method = PsCo(6, backbone, proj_hidden=8, proj_dim=4).double()
    views = torch.cat(batch["views"])
    for z in (method.projector(backbone(views)), method.key_encoder(views)):
        torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1], dtype=z.dtype), atol=1e-5, rtol=0)
        torch.testing.assert_close(z.var(0, unbiased=False), torch.ones(z.shape[1], dtype=z.dtype), atol=1e-3, rtol=0)


@pytest.mark.parametrize("flags, message", [
    (["--meta", "gessl"], "itself a meta-learner"),
    (["--meta", "none", "--psco-shots", "0"], "--psco-shots must be positive"),
    (["--meta", "none", "--psco-temperature", "0"], "--psco-temperature must be positive"),
    (["--meta", "none", "--psco-epsilon", "-0.1"], "--psco-epsilon must be positive"),
    (["--meta", "none", "--psco-shots", "20", "--moco-queue", "10"],
     "--psco-shots 20 asks for more shots per image than the --moco-queue 10 keys"),
])
def test_psco_is_a_meta_learner_and_its_options_are_checked(glyph_root, tmp_path, flags, message):
    with pytest.raises(UserError, match=message) as error:
        train.main(["--base", "psco", *flags, "--out", str(tmp_path / "run")])
    assert "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_a_short_run_beats_its_random_backbone_on_the_glyph_evaluation_scripts(glyph_root, tmp_path):
    # 100 steps of 64 images with a queue of 512 keys (full after 8 steps); 5-way 1-shot episodes on
    # unseen scripts, paired with the random backbone. Measured: +11.3 ± 1.8 points. A momentum
    # method starts slowly: after 30 steps PsCo is 6.2 points below its random backbone and MoCo 1.1
    # (SimCLR 6.7 above), after 60 steps PsCo is 3.7 above.
    out = tmp_path / "run"
    train.main(["--base", "psco", "--meta", "none", "--max-steps", "100", "--batch-size", "64", "--moco-queue", "512",
                "--eval-episodes", "0", "--out", str(out)])
    evaluate_run(out, "quick", axes=["generalization"], episodes=100)
    with np.load(out / "episodes.npz") as saved:
        accuracy = {name.split("/")[0]: saved[name] for name in saved.files
                    if "/glyphs/evaluation/generalization/proto/5/1/" in name}
    assert sorted(accuracy) == ["run", "run (random init)"]
    gain, ci95 = mean_ci95(accuracy["run"] - accuracy["run (random init)"])
    assert gain - ci95 > 0, (gain, ci95)
