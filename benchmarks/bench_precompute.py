"""The teacher's precompute alone, on the realistic text pair of bench_distill.py (the real MiniLM-L6 teacher when
installed; Rotten Tomatoes reviews padded to 64 tokens): what each speed-up is worth, and whether bf16 pays here.

  fixed-512   the teacher over the padded rows in their order, batches of 512, `no_grad` (hf_kd before issue 16)
  fixed-32    the same at the training batch size
  hf_kd       `add_teacher_logits` as the trainer calls it: inference mode, sorted by length, padded per batch,
              `teacher_batch_size="auto"` (measured, logged)
  hf_kd-bf16  the same in bf16 autocast (`precision="bfloat16"`), at the batch size hf_kd chose

Interleaved `--repeats` times, medians. The bf16 logits are compared with float32's: the largest absolute
difference, the same over the logits' spread, and how often the predicted class agrees.

    python benchmarks/bench_precompute.py [--max_train_samples N] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch
from bench_distill import Messages, text_pair
from transformers import AutoModelForSequenceClassification

from hf_kd.teacher.precompute import add_teacher_logits


def fixed_batches(teacher, columns: dict, batch_size: int) -> torch.Tensor:
    inputs = {k: v for k, v in columns.items() if k != "labels"}
    with torch.no_grad():
        return torch.cat([teacher(**{k: v[i : i + batch_size] for k, v in inputs.items()}).logits
                          for i in range(0, len(columns["labels"]), batch_size)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="time bf16 too (slow on a CPU without native bf16)")
    parser.add_argument("--teacher_dir", default=None, help="a fine-tuned MiniLM classifier to time and compare "
                        "instead of the pretrained encoder with a new, untrained head (whose logits are small and close)")  # fmt: skip
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    log = Messages()
    logging.getLogger("hf_kd.teacher.precompute").addHandler(log)
    logging.getLogger("hf_kd.teacher.precompute").setLevel(logging.INFO)
    pair = text_pair(cli.max_train_samples)
    if cli.teacher_dir:  # the same tokenizer's inputs, a trained head instead of the pair's untrained one
        teacher = AutoModelForSequenceClassification.from_pretrained(cli.teacher_dir)
    else:
        teacher = pair.make_teacher()
    teacher, data = teacher.eval(), pair.tensors
    chosen = {}

    def hf_kd_run(precision=None):
        size = chosen.get("size", "auto") if precision else "auto"
        logits = add_teacher_logits(data, teacher, batch_size=size, precision=precision).columns["teacher_logits"]
        chosen_sizes = [m for m in log.messages if "using teacher_batch_size=" in m]  # not the "computed once" line
        if chosen_sizes and "size" not in chosen:
            chosen["size"] = int(chosen_sizes[-1].rsplit("=", 1)[1].rstrip("."))
        return logits

    variants = {
        "fixed-512": lambda: fixed_batches(teacher, data.columns, 512),
        "fixed-32": lambda: fixed_batches(teacher, data.columns, 32),
        "hf_kd": hf_kd_run,
        "hf_kd-bf16": lambda: hf_kd_run("bfloat16"),
    }
    if not cli.bf16:
        del variants["hf_kd-bf16"]
    times, outputs = {name: [] for name in variants}, {}
    for repeat in range(cli.repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
            print(f"repeat {repeat} {name}: {times[name][-1]:.2f} s", flush=True)
    real = data.columns["attention_mask"].sum().item()
    print(f"\ndata: {pair.source}; {real / len(data):.1f} real tokens per example of {data.columns['input_ids'].shape[1]}")
    described = f"the fine-tuned classifier in {cli.teacher_dir}" if cli.teacher_dir else pair.description
    print(f"teacher: {described}; threads {torch.get_num_threads()}; {cli.repeats} repeats interleaved, medians")
    for name, values in times.items():
        print(f"{name:<11} {statistics.median(values):7.2f} s  [{min(values):.2f}-{max(values):.2f}]")
    print(f"auto batch size: {log.messages[0] if log.messages else 'not logged'}")
    full = outputs["hf_kd"]
    torch.testing.assert_close(full, outputs["fixed-32"], rtol=1e-4, atol=1e-4)  # sorting changes no value
    print(f"hf_kd / fixed-32: {statistics.median(times['hf_kd']) / statistics.median(times['fixed-32']):.2f}")
    if not cli.bf16:
        return
    half = outputs["hf_kd-bf16"]
    diff = (half - full).abs().max().item()
    agree = (half.argmax(-1) == full.argmax(-1)).float().mean().item()
    print(f"bf16 vs float32 logits: max |diff| {diff:.4f}, {diff / full.std().item():.3f} of the logits' std; "
          f"predicted class agrees on {agree:.1%}; bf16 time / float32 time "
          f"{statistics.median(times['hf_kd-bf16']) / statistics.median(times['hf_kd']):.2f}")


if __name__ == "__main__":
    main()
