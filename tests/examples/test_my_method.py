"""examples/my_method.py: its loss against the formula written out here, and the method trained inside
GeSSL with DSA from the command line, as its docstring says (tiny data, a few steps)."""
import math

import pytest
import torch
import yaml

from examples.my_method import MyMethod, align_uniform_loss
from gessl.backbones import load_torch_file
from gessl.config import read_run_config
from gessl.train import build_model
from tests.helpers import metrics, train_cli


def test_the_loss_is_alignment_plus_weighted_uniformity():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    t, w = 1.5, 0.7
    u1, u2 = z1 / z1.norm(dim=1, keepdim=True), z2 / z2.norm(dim=1, keepdim=True)
    align = sum(((u1[i] - u2[i]) ** 2).sum() for i in range(6)) / 6

    def uniformity(u):
        terms = [math.exp(-t * ((u[i] - u[j]) ** 2).sum().item()) for i in range(6) for j in range(6) if i != j]
        return math.log(sum(terms) / len(terms))

    loss, got_align, got_uniform = align_uniform_loss(z1, z2, t, w)
    uniform = (uniformity(u1) + uniformity(u2)) / 2
    assert got_align.item() == pytest.approx(align.item(), rel=1e-12)
    assert got_uniform.item() == pytest.approx(uniform, rel=1e-12)
    assert loss.item() == pytest.approx(align.item() + w * uniform, rel=1e-12)


def test_the_example_trains_inside_gessl_with_dsa_from_the_command_line(glyph_root, tmp_path):
    out = tmp_path / "run"
    result = train_cli("--base", "examples.my_method:MyMethod", "--meta", "gessl", "--reg", "dsa", "--my-dim", "32",
                       "--my-weight", "2", "--batch-size", "32", "--max-steps", "6", "--log-every", "1",
                       "--warmup-steps", "1", "--eval-episodes", "0", "--data-root", str(glyph_root), "--out", str(out))
    assert result.returncode == 0, result.stderr
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["examples.my_method:MyMethod"] == {"my_dim": 32, "my_t": 2.0, "my_weight": 2.0}
    losses = [r["loss"] for r in metrics(out)]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert {"align", "uniform"} <= set(metrics(out)[0])
    cfg = read_run_config(out)
    assert isinstance(build_model(cfg, 1, 10).method, MyMethod)
    initial = build_model(cfg, 1, 10).state_dict()  # the seeded initialisation the run started from
    trained = load_torch_file(out / "checkpoint.pt", "checkpoint", "cpu")["model"]
    moved = [k for k, v in initial.items() if v.is_floating_point() and not torch.equal(v, trained[k])]
    assert any(k.startswith("backbone.") for k in moved) and any(k.startswith("method.projector") for k in moved)
