"""A real Ctrl-C (SIGINT to this process) in the middle of a chosen training step, for the resume tests."""
import contextlib
import os
import signal

from gessl import train


@contextlib.contextmanager
def interrupted_at(monkeypatch, step):
    """Inside the block, training sends itself SIGINT inside step ``step`` + 1 (counted from 1), right
    after the backbone's first forward pass: BatchNorm statistics are updated, weights, queues and
    the optimiser not yet."""
    real_step = train.Trainer.train_step

    def interrupted_step(self):
        if self.step != step:
            return real_step(self)
        def once(*_):
            hook.remove()
            os.kill(os.getpid(), signal.SIGINT)

        hook = self.model.backbone.register_forward_hook(once)
        try:
            return real_step(self)
        finally:
            hook.remove()

    monkeypatch.setattr(train.Trainer, "train_step", interrupted_step)
    try:
        yield
    finally:
        monkeypatch.setattr(train.Trainer, "train_step", real_step)
