"""The Trainer finetty runs: transformers' Trainer, saving and resuming through the method plugin."""

from __future__ import annotations

import os

from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Length-grouped order drawn from ``seed + epoch`` alone, never from the global RNG.

    transformers' ``LengthGroupedSampler`` without a generator draws its
    permutation from torch's global RNG when an epoch's iterator starts. A
    resume in the middle of an epoch starts that iterator before the
    checkpoint's RNG state is restored (the Trainer restores it only after
    skipping the trained batches), so the resumed epoch got another order and
    every later loss differed. Seeded per epoch, as accelerate's
    ``SeedableRandomSampler`` is for plain shuffling, the order of epoch ``e``
    is the same whenever and however often it is drawn; the Trainer reaches
    :meth:`set_epoch` through the prepared data loader.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        import torch

        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class FinettyTrainerMixin:
    """Model saves go through the method's ``save`` and checkpoint loads through its ``restore``.

    Mixed in before a ``transformers.Trainer`` (or subclass such as TRL's
    DPOTrainer); everything else (loop, optimizer, scheduler, checkpoint
    contents, resume) is the stock Trainer's.
    """

    def __init__(self, *args, method=None, **kwargs):
        self.method = method
        super().__init__(*args, **kwargs)

    def length_grouped_sampler(self, lengths: list[int]) -> EpochSeededLengthGroupedSampler:
        """Batches of similar lengths in an order a resume reproduces (the data seed, else the seed)."""
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return EpochSeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                               lengths, seed)

    def _get_train_sampler(self, train_dataset=None):
        sampler = super()._get_train_sampler(train_dataset)
        if type(sampler) is LengthGroupedSampler:  # the stock group_by_length strategy draws from the global RNG
            return self.length_grouped_sampler(sampler.lengths)
        return sampler

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
