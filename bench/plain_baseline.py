"""The baseline: a plain transformers Trainer + PEFT LoRA script, as one would write it by hand.

``python bench/plain_baseline.py MODEL DATA.jsonl OUT.jsonl --steps N [--lr ...]``

Same model, data, chat template, LoRA settings and hyperparameters as the
finetty recipe ``bench/run.py`` writes; loss on the assistant's tokens
(``return_assistant_tokens_mask`` with the template's ``{% generation %}``),
``DataCollatorForSeq2Seq`` padding per batch, the default random sampler
(``--group-by-length``: transformers' ``LengthGroupedSampler``, as finetty does).
Writes one JSON line per optimizer step to OUT (wall time, real tokens so
far), which is all ``bench/run.py`` reads.
"""

import time

STARTED = time.time()  # before the heavy imports: they are part of the time to first step

import argparse  # noqa: E402
import json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--work", default="/tmp/plain-baseline")
    parser.add_argument("--group-by-length", action="store_true",
                        help="train_sampling_strategy=group_by_length (what finetty does unpacked)")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))

    def tokenize(record):
        prompt = f"{record['instruction']}\n\n{record['input']}" if record.get("input") else record["instruction"]
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        ids = out["input_ids"][: args.max_length]
        mask = out["assistant_masks"][: args.max_length]
        return {"input_ids": ids, "labels": [t if m else -100 for t, m in zip(ids, mask)]}

    with open(args.data, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    dataset = Dataset.from_list([tokenize(r) for r in records])

    log = open(args.out, "w", encoding="utf-8")
    counted = {"tokens": 0}
    padder = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)

    def collate(features):
        batch = padder(features)
        counted["tokens"] += int(batch["attention_mask"].sum())
        return batch

    class Timing(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            log.write(json.dumps({"step": state.global_step, "ts": time.time(), "tokens": counted["tokens"],
                                  "started": STARTED}) + "\n")
            log.flush()

    targs = TrainingArguments(output_dir=args.work, max_steps=args.steps, per_device_train_batch_size=args.batch,
                              learning_rate=args.lr, lr_scheduler_type="linear", logging_steps=1,
                              save_strategy="no", report_to="none", seed=42,
                              train_sampling_strategy="group_by_length" if args.group_by_length else "random")
    trainer = Trainer(model=model, args=targs, train_dataset=dataset, data_collator=collate, callbacks=[Timing()])
    trainer.train()
    log.close()


if __name__ == "__main__":
    main()
