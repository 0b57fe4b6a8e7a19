"""The Trainer finetty runs: transformers' Trainer, saving and resuming through the method plugin."""

from __future__ import annotations

import os

from transformers import Trainer


class FinettyTrainerMixin:
    """Model saves go through the method's ``save`` and checkpoint loads through its ``restore``.

    Mixed in before a ``transformers.Trainer`` (or subclass such as TRL's
    DPOTrainer); everything else (loop, optimizer, scheduler, checkpoint
    contents, resume) is the stock Trainer's.
    """

    def __init__(self, *args, method=None, **kwargs):
        self.method = method
        super().__init__(*args, **kwargs)

    def _save(self, output_dir=None, state_dict=None):
        if self.method is None or self.method.save is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            self.method.save(self.accelerator.unwrap_model(self.model), output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.method is None or self.method.restore is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self.method.restore(self.accelerator.unwrap_model(model or self.model), resume_from_checkpoint)


class FinettyTrainer(FinettyTrainerMixin, Trainer):
    """``transformers.Trainer`` with finetty's saving and resuming (see :class:`FinettyTrainerMixin`)."""


_CLASSES: dict[type, type] = {Trainer: FinettyTrainer}


def trainer_class(base: type | None = None) -> type:
    """``base`` (a Trainer subclass) with :class:`FinettyTrainerMixin` in front; one class per base."""
    base = base or Trainer
    if base not in _CLASSES:
        _CLASSES[base] = type(f"Finetty{base.__name__}", (FinettyTrainerMixin, base), {})
    return _CLASSES[base]
