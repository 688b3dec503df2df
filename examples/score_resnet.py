"""A torchvision ResNet-18's weights scored on two registry data sets and one ImageFolder tree
(docs/api.md, example b), beside its random-initialised twin on the same episodes.

    python examples/score_resnet.py --weights resnet18.pt --folder /data/eurosat --out results/resnet18

does what ``python -m gessl.evaluate --backbone torchvision:resnet18 --weights resnet18.pt --in-channels 3
--image-size 32 --datasets mnist fashion-mnist folder:/data/eurosat --out results/resnet18`` does.
"""
import argparse
from pathlib import Path

import torch
import torchvision
from torch import nn

import gessl


def headless_resnet18(weights=None):
    """ResNet-18 with ``weights`` (a state dict file; None: random) and its classifier removed."""
    net = torchvision.models.resnet18()
    if weights:
        net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    net.fc = nn.Identity()
    return net


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="state dict of a torchvision ResNet-18 (default: random weights)")
    parser.add_argument("--datasets", nargs=2, default=["mnist", "fashion-mnist"], help="two registry sets")
    parser.add_argument("--folder", required=True, help="an ImageFolder tree: CLASS/IMAGE files")
    parser.add_argument("--out", default="results/resnet18", help="where results.jsonl goes")
    parser.add_argument("--data-root", default=None, help="data folder(s) of the registry sets")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per setting (default: the suite's)")
    parser.add_argument("--classes", type=int, default=None, help="at most this many classes of each set")
    args = parser.parse_args()
    model = headless_resnet18(args.weights)
    torch.manual_seed(0)
    twin = headless_resnet18()  # the same architecture, seeded random weights
    datasets = [*args.datasets, f"folder:{Path(args.folder).resolve()}"]
    records = gessl.evaluate_backbone(model, datasets=datasets, out=args.out, random_twin=twin, in_channels=3,
                                      image_size=32, suite="quick", data_root=args.data_root,
                                      episodes=args.episodes, classes=args.classes)
    for r in records:
        if r["protocol"] == "fewshot":
            print(f"{r['run']:<28} {r['dataset']:<24} {r['ways']}-way {r['shots']}-shot  "
                  f"{r['value']:6.2f} ± {r['ci95']:.2f} %")


if __name__ == "__main__":
    main()
