#!/usr/bin/env python
"""What a fine-tuned text teacher's soft targets carry beyond the labels, measured on the reviews the student trains
on and on the test reviews: the teacher's accuracy, its mean top-1 probability at temperature T, and the mean
probability mass it puts on the other class. A teacher that fits its training reviews leaves the student little to
learn there beyond the labels: the reason logit KD can fail to beat CE on the same reviews.

    python studies/text_teacher_targets.py --teacher_dir /tmp/text_kd_full/teacher_run/teacher \
        --dataset_name ../shared/data/rotten_tomatoes --max_train_samples 10201 --temperature 2
"""

from __future__ import annotations

import argparse
import json

import torch
from datasets import load_dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer


@torch.no_grad()
def targets(model, tokenizer, texts: list[str], labels: list[int], temperature: float, max_length: int) -> dict:
    """Accuracy, mean top-1 probability at `temperature` and at 1, over `texts` (batches of 64, padded per batch)."""
    correct, top1_t, top1 = 0, 0.0, 0.0
    for start in range(0, len(texts), 64):
        batch = tokenizer(texts[start : start + 64], truncation=True, max_length=max_length, padding=True,
                          return_tensors="pt")  # fmt: skip
        logits = model(**batch).logits.float()
        gold = torch.tensor(labels[start : start + 64])
        correct += (logits.argmax(-1) == gold).sum().item()
        top1_t += (logits / temperature).softmax(-1).amax(-1).sum().item()
        top1 += logits.softmax(-1).amax(-1).sum().item()
    n = len(texts)
    return {"examples": n, "accuracy": correct / n, f"top1_probability_T{temperature:g}": top1_t / n,
            "top1_probability_T1": top1 / n}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher_dir", required=True)
    parser.add_argument("--dataset_name", required=True)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--max_length", type=int, default=128, help="as the example's --max_length")
    options = parser.parse_args()
    torch.set_num_threads(1)
    model = AutoModelForSequenceClassification.from_pretrained(options.teacher_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(options.teacher_dir)
    data = load_dataset(options.dataset_name)
    train = data["train"]
    if options.max_train_samples is not None:
        train = train.select(range(min(options.max_train_samples, len(train))))
    result = {
        split: targets(model, tokenizer, list(rows["text"]), list(rows["label"]), options.temperature,
                       options.max_length)
        for split, rows in (("train", train), ("test", data["test"]))
    }  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
