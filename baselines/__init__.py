"""Base self-supervised objectives. Each is an ``nn.Module`` holding the heads it needs whose
``forward(backbone, batch)`` returns an ``SSLOutput`` (the loss, its named terms, the projections
of each view); ``batch["views"]`` holds the augmented views. Registry: name → class; adding a method
is one file and one line here (docs/bases.md, "Adding a base method").

A method owns its options: its class attribute ``Options`` is a dataclass of fields made with
``baselines.options.option`` (default, ``--help`` text, bounds). The constructor takes the
backbone's feature dimension, then keywords named like those fields, which ``gessl.train`` fills
from the run's config; a keyword may also name a shared option of the training config
(``episode_shots``, ...), ``num_classes`` (the training classes) or ``backbone`` (the online
backbone, which a method with a momentum copy, MoCo or BYOL, copies). A method's ``proj_dim``
attribute is the width of its projections.

For GeSSL a method must be a pure function of its parameters and the batch: state that is not
trained by gradient (momentum encoders, EMA targets) is held in parameters with
``requires_grad=False`` or in buffers (queues), which the inner loop never changes. Under
DistributedDataParallel the buffers of process 0 are copied to the others before each forward pass;
a method whose buffers must stay per process (SwAV's queue) sets ``broadcast_buffers = False``.

Label-using references: ``supervised`` (cross-entropy over the training classes; takes
``num_classes``) and the episodic ``protonet`` and ``maml`` (class attribute ``episodic = True``:
``gessl.train`` feeds them few-shot episodes of ``tasks.training.episodes`` instead of ``--batch-size``
batches; ``meta_learner = True`` marks MAML, which cannot run inside ``--meta gessl``). They read
``batch["labels"]``. Unsupervised meta-learning: ``umtra`` (``meta_learner = True``) builds its tasks
from unlabelled ``--batch-size`` batches; ``psco`` (``meta_learner = True``, a ``MoCo`` with a
predictor) builds an N-way K-shot pseudo task per batch, its N images the classes and their shots the
queue entries that SwAV's ``sinkhorn`` assigns to each image's momentum key, and adds to MoCo's loss
a supervised contrastive loss over that task; ``cactus`` (``meta_learner = True``, ``episodic = True``)
clusters the embeddings of the training images by a frozen encoder with k-means, P times, and meta-learns
(ProtoNet's or MAML's module) on episodes whose classes are the clusters of one partition: the method's
``episode_sampler(images, encoder, embed, sampler, seed, progress)``, which ``gessl.train`` calls at the
start of training with the frozen encoder (the file its ``encoder_file`` names, else the run's backbone
at its initialisation), the evaluation suite's ``embed``, the ``EpisodeSampler`` and a progress bar. A
method may define ``check_config(cfg)``, raising a one-line ``ValueError`` for a config it cannot train
with (``cfg.base_options`` holds its options), which ``gessl.train`` reports up front.

The package imports torch and itself only (``tests/test_arrows.py``), and learn2learn in the methods
that are learn2learn's (``baselines.maml``'s MAML wrapper, which UMTRA's head uses too).
"""
from baselines.barlow import BarlowTwins
from baselines.byol import BYOL
from baselines.cactus import CACTUs
from baselines.maml import MAML
from baselines.moco import MoCo
from baselines.music import MUSIC
from baselines.protonet import ProtoNet
from baselines.psco import PsCo
from baselines.simclr import SimCLR
from baselines.simsiam import SimSiam
from baselines.supervised import Supervised
from baselines.swav import SwAV
from baselines.umtra import UMTRA
from baselines.vicreg import VICReg

BASE_METHODS = {"simclr": SimCLR, "barlow": BarlowTwins, "vicreg": VICReg, "swav": SwAV, "music": MUSIC,
                "moco": MoCo, "byol": BYOL, "simsiam": SimSiam, "supervised": Supervised, "protonet": ProtoNet,
                "maml": MAML, "umtra": UMTRA, "cactus": CACTUs, "psco": PsCo}
