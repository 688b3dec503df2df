"""Base self-supervised objectives. Each is an ``nn.Module`` holding the heads it needs whose
``forward(backbone, batch)`` returns an ``SSLOutput`` (the loss, its named terms, the projections
of each view); ``batch["views"]`` holds the augmented views. Registry: name → class.

For GeSSL a method must be a pure function of its parameters and the batch: state that is not
trained by gradient (momentum encoders, EMA targets) is held in parameters with
``requires_grad=False`` or in buffers (queues), which the inner loop never changes."""
from baselines.simclr import SimCLR

BASE_METHODS = {"simclr": SimCLR}
