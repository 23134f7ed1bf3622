#!/usr/bin/env python
"""Many teachers on real MNIST and Fashion-MNIST, 3 seeds: ensembles of teachers and teacher-assistant chains.

`--study ensemble`: three MLP teachers of different architectures and seeds (784-400-100-10, 784-800-10,
784-256-256-10), each trained on the labels; each teacher's test accuracy, the ensemble's (`mean_probs` and
`mean_logits`; `confidence` reads the true label, so it has no accuracy of its own), and the student 784-100-10
distilled from the best single teacher (chosen on the test set, which flatters that baseline) vs from the ensemble
with each method, beside the same student on the labels alone.

`--study chain`: teacher 784-1200-1200-10 -> assistant 784-400-100-10 -> student 784-30-10 (Mirzadeh et al., AAAI
2020), each link ordinary KD (`hf_kd.experiment.distil_chain`), against the same student distilled directly from the
teacher and trained on the labels alone. `--study chain_cnn`: the same with the CNN pair (1-channel 28x28 versions of
the CIFAR-10 presets: teacher convs 128-64-64-32 + FC 512, 0.94M parameters -> assistant convs 64-32-32-32 + FC 256,
0.45M -> student convs 16-16 + FC 256, 0.21M), on Fashion-MNIST by default (`--datasets`).

Sized for a shared 2-core CPU: a training subset (`--train_examples`, first N of the training split), a few epochs,
one torch thread; every model is scored on the full 10,000-image test split. Settings: AdamW, lr 1e-3, batch 64,
T = 4, alpha = 0.5 (hf_kd's defaults), teacher logits precomputed (live for `confidence`, which needs the labels).

    python studies/many_teachers.py --study ensemble --train_examples 10000 --epochs 5 --output_dir /tmp/many
    python studies/many_teachers.py --study chain_cnn --train_examples 3000 --epochs 3 --output_dir /tmp/chain_cnn
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from harness import Study
from hf_kd import DistillationConfig
from hf_kd.models import MLPConfig, MLPForImageClassification, image_processor_for_preset, model_from_preset
from hf_kd.report.measure import dataset_labels, predict
from hf_kd.runs.arguments import DataArguments
from hf_kd.runs.experiment import distil, distil_chain, train_with_labels
from hf_kd.runs.recipes import load_image_data
from hf_kd.teacher.ensemble import TeacherEnsemble

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {"mnist": (SHARED / "mnist", 0.1307, 0.3081), "fashion_mnist": (SHARED / "fashion_mnist", 0.2860, 0.3530)}
TEACHERS = ([400, 100], [800], [256, 256])
STUDENT = [100]
CHAIN = {"teacher": [1200, 1200], "assistant": [400, 100], "student": [30]}
METHODS = ("mean_probs", "mean_logits", "confidence")
# The CNN chain: presets, with the assistant's convolutions between the teacher's and the student's.
CNN_CHAIN = {
    "teacher": ("cifar10-cnn-teacher", {}),
    "assistant": ("cifar10-cnn-teacher", {"conv_channels": [64, 32, 32, 32], "classifier_hidden_sizes": [256]}),
    "student": ("cifar10-cnn-student", {}),
}


def mlp(hidden_sizes: list[int], names: list[str], seed: int) -> MLPForImageClassification:
    torch.manual_seed(seed)
    config = MLPConfig(num_channels=1, image_size=28, hidden_sizes=hidden_sizes, dropout=0.0,
                       id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})  # fmt: skip
    return MLPForImageClassification(config)


def cnn(role: str, names: list[str], seed: int):
    """A 1-channel 28x28 CNN of the chain (`CNN_CHAIN`), labelled with the dataset's names."""
    preset, changes = CNN_CHAIN[role]
    torch.manual_seed(seed)
    return model_from_preset(preset, num_channels=1, image_size=28, id2label=dict(enumerate(names)),
                             label2id={n: i for i, n in enumerate(names)}, **changes)  # fmt: skip


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


def chain_cnn_seed(data, names, seed: int, args, out: str) -> dict[str, float]:
    config = run_config(out, seed, args.epochs)
    teacher = train_with_labels("teacher", cnn("teacher", names, 100 * seed), data, config, None)
    assistant, chained = distil_chain(
        cnn("student", names, seed), teacher, [cnn("assistant", names, 100 * seed + 1)], data, config, None
    )
    direct = distil(cnn("student", names, seed), teacher, data, config, None, name="student_kd_direct")
    baseline = train_with_labels("student_ce", cnn("student", names, seed), data, config, None)
    sizes = {role: f"{model.num_parameters() / 1e6:.2f}M" for role, model in
             (("teacher", teacher.model), ("assistant", assistant.model), ("student", chained.model))}  # fmt: skip
    return {
        f"CNN teacher ({sizes['teacher']})": accuracy(teacher.model, data),
        f"CNN assistant ({sizes['assistant']}) <- teacher": accuracy(assistant.model, data),
        f"CNN student ({sizes['student']}), labels only": accuracy(baseline.model, data),
        f"CNN student ({sizes['student']}) <- teacher (direct KD)": accuracy(direct.model, data),
        f"CNN student ({sizes['student']}) <- assistant (chain)": accuracy(chained.model, data),
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
    parser.add_argument("--study", choices=["ensemble", "chain", "chain_cnn"], required=True)
    parser.add_argument("--datasets", nargs="+", default=None, choices=list(DATASETS),
                        help="default: both (chain_cnn: fashion_mnist)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train_examples", type=int, default=10000)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--output_dir", default=None, help="Where to write results.json (default: a temp dir).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    output_dir = Path(args.output_dir or tempfile.mkdtemp(prefix=f"many_teachers_{args.study}_"))
    output_dir.mkdir(parents=True, exist_ok=True)
    run_seed = {"ensemble": ensemble_seed, "chain": chain_seed, "chain_cnn": chain_cnn_seed}[args.study]
    datasets = args.datasets or (["fashion_mnist"] if args.study == "chain_cnn" else list(DATASETS))
    results, start = {}, time.perf_counter()
    for dataset in datasets:
        if not DATASETS[dataset][0].exists():
            raise SystemExit(f"{DATASETS[dataset][0]} is missing: this study needs the real data.")
        data, names = load(dataset, args.train_examples)
        for seed in args.seeds:
            run_dir = tempfile.mkdtemp(prefix=f"{dataset}_{seed}_", dir=output_dir)  # fresh: no stage is resumed
            results.setdefault(dataset, []).append(run_seed(data, names, seed, args, run_dir))
            print(json.dumps({"dataset": dataset, "seed": seed, **results[dataset][-1]}), flush=True)
        # The harness's table: every row paired against the labels-only student of the same seed (same start).
        rows = list(results[dataset][0])
        baseline = next(row for row in rows if "labels only" in row)
        study = Study(f"Many teachers ({args.study}), {dataset}", baseline, args.seeds,
                      {"train": args.train_examples, "test": 10000}, output_dir, stem=f"{args.study}_{dataset}")  # fmt: skip
        for row in rows:
            for seed, scores in zip(args.seeds, results[dataset]):
                study.record(row, seed, scores[row])
        print((output_dir / f"{args.study}_{dataset}.md").read_text(), flush=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{args.study} study: {args.train_examples} training examples, {args.epochs:g} epochs, seeds {args.seeds}, "
          f"{time.perf_counter() - start:.0f} s\n\n{table(results)}")  # fmt: skip


if __name__ == "__main__":
    main()
