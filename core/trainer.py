"""The Trainer finetty runs: transformers' Trainer, saving through the method plugin."""

from __future__ import annotations

from transformers import Trainer


class FinettyTrainer(Trainer):
    """``transformers.Trainer`` whose model saves go through the method's ``save`` when it has one.

    Everything else (loop, optimizer, scheduler, checkpoint contents, resume)
    is the stock Trainer's.
    """

    def __init__(self, *args, method=None, **kwargs):
        self.method = method
        super().__init__(*args, **kwargs)

    def _save(self, output_dir=None, state_dict=None):
        if self.method is None or self.method.save is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            self.method.save(self.accelerator.unwrap_model(self.model), output_dir)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
