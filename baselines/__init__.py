"""Base self-supervised objectives. Each is an ``nn.Module`` holding the heads it needs whose
``forward(backbone, batch)`` returns an ``SSLOutput`` (the loss, its named terms, the projections
of each view); ``batch["views"]`` holds the augmented views. Registry: name → class. The
constructor takes the backbone's feature dimension, then keyword options named like the training
config's fields (``proj_hidden``, ``temperature``, ``barlow_lambda``, ...), which ``gessl.train``
fills from the config. A method's ``proj_dim`` attribute is the width of its projections.

For GeSSL a method must be a pure function of its parameters and the batch: state that is not
trained by gradient (momentum encoders, EMA targets) is held in parameters with
``requires_grad=False`` or in buffers (queues), which the inner loop never changes."""
from baselines.barlow import BarlowTwins
from baselines.simclr import SimCLR
from baselines.vicreg import VICReg

BASE_METHODS = {"simclr": SimCLR, "barlow": BarlowTwins, "vicreg": VICReg}
