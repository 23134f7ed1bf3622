#!/usr/bin/env python
"""Many teachers on real MNIST and Fashion-MNIST, 3 seeds: ensembles of teachers and teacher-assistant chains.

`--study ensemble`: three MLP teachers of different architectures and seeds (784-400-100-10, 784-800-10,
784-256-256-10), each trained on the labels; each teacher's test accuracy, the ensemble's (`mean_probs` and
`mean_logits`; `confidence` reads the true label, so it has no accuracy of its own), and the student 784-100-10
distilled from the best single teacher (chosen on the test set, which flatters that baseline) vs from the ensemble
with each method, beside the same student on the labels alone.

`--study chain`: teacher 784-1200-1200-10 -> assistant 784-400-100-10 -> student 784-30-10 (Mirzadeh et al., AAAI
2020), each link ordinary KD (`hf_kd.experiment.distil_chain`), against the same student distilled directly from the
teacher and trained on the labels alone.

Sized for a shared 2-core CPU: a training subset (`--train_examples`, first N of the training split), a few epochs,
one torch thread; every model is scored on the full 10,000-image test split. Settings: AdamW, lr 1e-3, batch 64,
T = 4, alpha = 0.5 (hf_kd's defaults), teacher logits precomputed (live for `confidence`, which needs the labels).

    python studies/many_teachers.py --study ensemble --train_examples 10000 --epochs 5 --output_dir /tmp/many
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from hf_kd import DistillationConfig
from hf_kd.arguments import DataArguments
from hf_kd.ensemble import TeacherEnsemble
from hf_kd.experiment import distil, distil_chain, train_with_labels
from hf_kd.measure import dataset_labels, predict
from hf_kd.models import MLPConfig, MLPForImageClassification, image_processor_for_preset
from hf_kd.recipes import load_image_data

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {"mnist": (SHARED / "mnist", 0.1307, 0.3081), "fashion_mnist": (SHARED / "fashion_mnist", 0.2860, 0.3530)}
TEACHERS = ([400, 100], [800], [256, 256])
STUDENT = [100]
CHAIN = {"teacher": [1200, 1200], "assistant": [400, 100], "student": [30]}
METHODS = ("mean_probs", "mean_logits", "confidence")


def mlp(hidden_sizes: list[int], names: list[str], seed: int) -> MLPForImageClassification:
    torch.manual_seed(seed)
    config = MLPConfig(num_channels=1, image_size=28, hidden_sizes=hidden_sizes, dropout=0.0,
                       id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})  # fmt: skip
    return MLPForImageClassification(config)


def run_config(output_dir: str, seed: int, epochs: float, **changes) -> DistillationConfig:
    return DistillationConfig(
        output_dir=output_dir, seed=seed, num_train_epochs=epochs, per_device_train_batch_size=64, learning_rate=1e-3,
        temperature=4.0, alpha=0.5, save_strategy="no", eval_strategy="no", logging_steps=10**6, report_to="none",
        disable_tqdm=True, dataloader_pin_memory=False, **{"precompute_teacher_logits": True, **changes},
    )  # fmt: skip


def accuracy(model, data) -> float:
    predictions, _ = predict(model, data.eval_dataset)
    return float((predictions == dataset_labels(data.eval_dataset)).mean())


def load(dataset: str, train_examples: int):
    path, mean, std = DATASETS[dataset]
    processor = image_processor_for_preset("mnist-mlp-student", image_mean=[mean], image_std=[std])
    return load_image_data(DataArguments(dataset_name=str(path), max_train_samples=train_examples), processor)


def ensemble_seed(data, names, seed: int, args, out: str) -> dict[str, float]:
    config = run_config(out, seed, args.epochs)
    teachers = [
        train_with_labels(f"teacher_{k}", mlp(hidden, names, 100 * seed + k), data, config, None)
        for k, hidden in enumerate(TEACHERS)
    ]
    scores = {f"teacher {k} ({'-'.join(map(str, [784, *h, 10]))})": accuracy(t.model, data) for k, (t, h) in
              enumerate(zip(teachers, TEACHERS))}  # fmt: skip
    best = max(range(len(teachers)), key=lambda k: list(scores.values())[k])
    models = [t.model for t in teachers]
    for method in METHODS[:2]:
        scores[f"ensemble ({method})"] = accuracy(TeacherEnsemble(models, method=method, temperature=4.0), data)
    scores["student, labels only"] = accuracy(
        train_with_labels("student_ce", mlp(STUDENT, names, seed), data, config, None).model, data
    )
    scores["student <- best teacher"] = accuracy(distil(mlp(STUDENT, names, seed), teachers[best], data, config, None).model, data)
    for method in METHODS:
        method_config = run_config(out, seed, args.epochs, ensemble_method=method,
                                   precompute_teacher_logits=method != "confidence")  # fmt: skip
        student = distil(mlp(STUDENT, names, seed), models, data, method_config, None, name=f"student_{method}")
        scores[f"student <- ensemble ({method})"] = accuracy(student.model, data)
    return scores


def chain_seed(data, names, seed: int, args, out: str) -> dict[str, float]:
    config = run_config(out, seed, args.epochs)
    teacher = train_with_labels("teacher", mlp(CHAIN["teacher"], names, 100 * seed), data, config, None)
    assistant, chained = distil_chain(
        mlp(CHAIN["student"], names, seed), teacher, [mlp(CHAIN["assistant"], names, 100 * seed + 1)], data, config, None
    )
    direct = distil(mlp(CHAIN["student"], names, seed), teacher, data, config, None, name="student_kd_direct")
    baseline = train_with_labels("student_ce", mlp(CHAIN["student"], names, seed), data, config, None)
    return {
        "teacher 784-1200-1200-10": accuracy(teacher.model, data),
        "assistant 784-400-100-10 <- teacher": accuracy(assistant.model, data),
        "student 784-30-10, labels only": accuracy(baseline.model, data),
        "student 784-30-10 <- teacher (direct KD)": accuracy(direct.model, data),
        "student 784-30-10 <- assistant (chain)": accuracy(chained.model, data),
    }


def table(results: dict[str, list[dict[str, float]]]) -> str:
    datasets = list(results)
    rows = list(results[datasets[0]][0])
    lines = ["| model | " + " | ".join(f"{d} (mean ± std, %)" for d in datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
    for row in rows:
        cells = []
        for dataset in datasets:
            values = [100 * seed[row] for seed in results[dataset]]
            cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0:.2f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=["ensemble", "chain"], required=True)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_examples", type=int, default=10000)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--output_dir", default=None, help="Where to write results.json (default: a temp dir).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix=f"many_teachers_{args.study}_"))
    output_dir.mkdir(parents=True, exist_ok=True)
    run_seed = ensemble_seed if args.study == "ensemble" else chain_seed
    results, start = {}, time.perf_counter()
    for dataset in args.datasets:
        if not DATASETS[dataset][0].exists():
            raise SystemExit(f"{DATASETS[dataset][0]} is missing: this study needs the real data.")
        data, names = load(dataset, args.train_examples)
        for seed in args.seeds:
            run_dir = tempfile.mkdtemp(prefix=f"{dataset}_{seed}_", dir=output_dir)  # fresh: no stage is resumed
            results.setdefault(dataset, []).append(run_seed(data, names, seed, args, run_dir))
            print(json.dumps({"dataset": dataset, "seed": seed, **results[dataset][-1]}), flush=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{args.study} study: {args.train_examples} training examples, {args.epochs:g} epochs, seeds {args.seeds}, "
          f"{time.perf_counter() - start:.0f} s\n\n{table(results)}")  # fmt: skip


if __name__ == "__main__":
    main()
