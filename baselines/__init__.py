"""Base self-supervised objectives. Each is an ``nn.Module`` holding the heads it needs whose
``forward(backbone, batch)`` returns a dict of named loss terms with the total under ``"loss"``;
``batch["views"]`` holds the augmented views. Registry: name → class."""
from baselines.simclr import SimCLR

BASE_METHODS = {"simclr": SimCLR}
