"""Ctrl-C at a chosen training step, for the resume tests."""
import contextlib

from gessl import train


@contextlib.contextmanager
def interrupted_at(monkeypatch, step):
    """Inside the block, training raises KeyboardInterrupt when it reaches ``step``."""
    real_step = train.Trainer.train_step

    def interrupted_step(self):
        if self.step == step:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(train.Trainer, "train_step", interrupted_step)
    try:
        yield
    finally:
        monkeypatch.setattr(train.Trainer, "train_step", real_step)
