"""``eval_forward``: BatchNorm folded into convolutions and ReLU after max-pool, against the plain forward."""
import pytest
import torch
from torch import nn
from torchvision.ops import Conv2dNormActivation

from gessl.backbones import Conv4, build_backbone
from tasks.evaluation.frozen import eval_forward, fold_batchnorm


def randomise_statistics(net, seed):
    """Running statistics, affine parameters and biases far from their initial 0 / 1, so that a fold
    that drops the bias, ε, γ or β, or takes σ for σ², is visibly wrong."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_var is not None:
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=m.running_mean.dtype))
                m.running_var.copy_(0.05 + torch.rand(m.num_features, generator=g, dtype=m.running_var.dtype))
            if isinstance(m, (nn.BatchNorm2d, nn.Conv2d)):
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def batchnorm_calls(net):
    """A list that grows by one at each call of a BatchNorm of ``net``."""
    calls = []
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.register_forward_hook(lambda *args: calls.append(1))
    return calls


@pytest.mark.parametrize("conv_bias, affine", [(True, True), (False, True), (True, False), (False, False)])
def test_folded_convolution_equals_convolution_then_batchnorm(conv_bias, affine):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=conv_bias).double()
    bn = nn.BatchNorm2d(5, eps=0.3, affine=affine).double()  # a large ε: using 1e-5 instead would show
    randomise_statistics(nn.Sequential(conv, bn), 1).eval()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(conv._conv_forward(x, *fold_batchnorm(conv, bn)), bn(conv(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_conv4_runs_folded_and_equals_its_plain_forward(channels_last):
    net = randomise_statistics(build_backbone("conv4", 1, 28).double(), 2).eval()
    x = torch.randn(6, 1, 28, 28, dtype=torch.float64)
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    want = net(x)
    calls = batchnorm_calls(net)
    torch.testing.assert_close(eval_forward(net, x), want, rtol=1e-12, atol=1e-12)
    assert not calls  # the folded path ran: no BatchNorm was called


class Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


def test_nested_sequentials_fold_and_other_modules_run_their_own_forward():
    torch.manual_seed(0)
    net = nn.Sequential(
        Conv2dNormActivation(2, 4, 3),  # a Sequential subclass: conv, BN, ReLU, all folded
        nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4, affine=False, eps=0.2)),
        nn.ReLU(), nn.MaxPool2d(2),
        Residual(nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))),  # own forward: runs as it is
        nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3, track_running_stats=False),  # batch statistics: not foldable
        nn.ReLU(), nn.AvgPool2d(2)).double()
    randomise_statistics(net, 3).eval()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    want = net(x)
    calls = batchnorm_calls(net)
    torch.testing.assert_close(eval_forward(net, x), want, rtol=1e-12, atol=1e-12)
    assert len(calls) == 2  # the residual's and the batch-statistics BatchNorm; the other three folded


def test_a_network_not_made_of_sequentials_runs_its_own_forward():
    net = randomise_statistics(build_backbone("resnet18", 1, 8), 4).eval()
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(eval_forward(net, x), net(x))
    train_mode_conv4, x = Conv4(), torch.randn(2, 1, 16, 16)
    assert torch.equal(eval_forward(train_mode_conv4, x), train_mode_conv4(x))  # BatchNorm in training mode
