"""Re-estimated BatchNorm statistics: the cumulative average of per-batch statistics, by formula."""
import torch
from torch import nn

from gessl.bn_stats import reestimate


def test_running_statistics_become_the_average_of_the_batches_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    net[1].running_mean.fill_(5.0)  # stale statistics, as from other parameters
    before = {k: v.clone() for k, v in net.named_parameters()}
    batches = [torch.randn(6, 1, 8, 8) * (i + 1) + i for i in range(3)]
    reestimate(net, iter(batches))
    assert not net.training and all(torch.equal(before[k], v) for k, v in net.named_parameters())
    with torch.no_grad():
        net.train()  # batch statistics, as in training; the formula below from the activations themselves
        for bn_index in (1, 4):
            means, variances = [], []
            for x in batches:
                h = net[:bn_index](x)  # input of the BatchNorm
                means.append(h.mean(dim=(0, 2, 3)))
                variances.append(h.var(dim=(0, 2, 3), unbiased=True))
            torch.testing.assert_close(net[bn_index].running_mean, torch.stack(means).mean(0))
            torch.testing.assert_close(net[bn_index].running_var, torch.stack(variances).mean(0))
        assert net[1].momentum == 0.1
