#!/usr/bin/env python
"""Black-box distillation on MNIST: the headline MLP teacher (784-400-100-10, 10 epochs with 1-pixel jitter) served
over loopback HTTP by `python -m hf_kd.serve`, the 60,000 training images as an unlabeled transfer set (no label
kept: `--max_labeled_samples 0`), and the MLP student (784-100-10) distilled from its answers alone: labels only vs
top-3 + tail bucket, 3 seeds each, on the full 10,000-image test split.

Each student is a run of `examples/distill_mnist.py --teacher_url ...`; the teacher answers each kind of answer
once (the annotation job is cached by fingerprint: the later seeds reuse it, and the report says so).

    nice -n 19 python studies/black_box.py --output_dir /tmp/black_box_study
    python studies/black_box.py --teacher_dir distill-mnist/teacher --epochs 10 --seeds 0 1 2

Writes `results.json` (rewritten after every run) and `results.md` in the output directory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

from hf_kd.serve import serving

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"
VARIANTS = {  # name -> the example's answer arguments
    "labels only": ["--teacher_answers", "label"],
    "top-3 + tail": ["--teacher_answers", "top_k", "--teacher_top_k", "3", "--top_k_loss", "tail"],
}


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(Path(name).stem, REPO_ROOT / "examples" / name)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO_ROOT / "examples"))
    spec.loader.exec_module(module)
    return module


def train_headline_teacher(teacher_dir: Path, dataset: str, epochs: int, threads: int) -> None:
    """The MNIST example's teacher, trained as its headline run trains it, saved with its image processor."""
    from hf_kd.data import RandomShiftCollator
    from hf_kd.report.metrics import load_metric
    from hf_kd.runs.arguments import parse_image_arguments
    from hf_kd.runs.experiment import compute_metrics_for, train_teacher
    from hf_kd.runs.preparation import prepare_run
    from hf_kd.runs.recipes import (
        build_image_model,
        fill_value,
        image_processor_for,
        load_image_data,
    )

    defaults = load_example("distill_mnist.py").DEFAULTS
    argv = ["--dataset_name", dataset, "--output_dir", str(teacher_dir.parent / "teacher_run"),
            "--teacher_num_train_epochs", str(epochs), "--torch_num_threads", str(threads), "--overwrite_output_dir"]  # fmt: skip
    data_args, experiment_args, config = parse_image_arguments(defaults, argv)
    with prepare_run(config, experiment_args):
        processor = image_processor_for(experiment_args.teacher)
        data, names = load_image_data(data_args, processor)
        model = build_image_model(experiment_args.teacher, names, config.seed)
        shift = RandomShiftCollator(experiment_args.teacher_max_shift, fill=fill_value(processor), seed=config.seed)
        metrics = compute_metrics_for(load_metric(experiment_args.metric_name_or_path))
        trained = train_teacher(model, data, config, experiment_args, metrics, shift)
    trained.model.save_pretrained(teacher_dir)
    processor.save_pretrained(teacher_dir)



def summarise(results: list[dict], teacher: dict) -> str:
    lines = [
        "# Black-box distillation on MNIST",
        "",
        (
            f"Teacher: {teacher['description']} at {teacher['url']}, {100 * teacher['accuracy']:.2f}% from its answers "
            "on the test split. Students: the MNIST MLP student, trained on the 60,000 training images with no label "
            "(alpha = 1), from the teacher's answers alone."
        ),
        "",
        "| answers | test accuracy (mean ± sd) | per seed | agreement with the teacher | queries (first seed) |",
        "|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        rows = [r for r in results if r["variant"] == variant]
        if not rows:
            continue
        accuracies = [100 * r["accuracy"] for r in rows]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        agreement = statistics.mean(100 * r["agreement"] for r in rows)
        lines.append(
            f"| {variant} | {statistics.mean(accuracies):.2f}% ± {spread:.2f} | "
            f"{', '.join(f'{a:.2f}' for a in accuracies)} | {agreement:.2f}% | {rows[0]['queries']:,} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="black_box_study")
    parser.add_argument("--dataset", default=str(MNIST_DIR), help="MNIST: a parquet directory or ylecun/mnist")
    parser.add_argument("--teacher_dir", default=None, help="a trained MNIST teacher (default: trained here)")
    parser.add_argument("--teacher_epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="the students' epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = Path(options.teacher_dir) if options.teacher_dir else out / "teacher"
    description = f"loaded from {teacher_dir}"
    if not (teacher_dir / "config.json").is_file():
        train_headline_teacher(teacher_dir, options.dataset, options.teacher_epochs, options.threads)
        description = f"the MNIST MLP teacher trained here ({options.teacher_epochs} epochs, 1-pixel jitter)"
    with serving(teacher_dir, threads=options.threads) as url:
        example, results, teacher = load_example("distill_mnist.py"), [], {"description": description, "url": url}
        for seed in options.seeds:
            for variant in options.variants:
                run_dir = out / f"{variant.replace(' ', '_').replace('+', 'plus')}-seed{seed}"
                began = time.perf_counter()
                report = example.main([
                    "--dataset_name", options.dataset, "--output_dir", str(run_dir), "--overwrite_output_dir",
                    "--teacher_url", url, *VARIANTS[variant], "--max_labeled_samples", "0", "--alpha", "1.0",
                    "--num_train_epochs", str(options.epochs), "--seed", str(seed), "--plot", "false",
                    "--torch_num_threads", str(options.threads),
                ])  # fmt: skip
                kd = report.model("student_kd")
                teacher["accuracy"] = report.black_box["teacher_test_accuracy"]
                results.append({
                    "variant": variant, "seed": seed, "accuracy": kd.accuracy, "agreement": kd.agreement_with_teacher,
                    "queries": report.black_box["queries"], "reused": report.black_box["answers_reused_from_disk"],
                    "seconds": time.perf_counter() - began, "report": str(run_dir / "distillation_report.json"),
                })  # fmt: skip
                (out / "results.json").write_text(json.dumps({"teacher": teacher, "runs": results}, indent=1))
                (out / "results.md").write_text(summarise(results, teacher))
    print(summarise(results, teacher))


if __name__ == "__main__":
    main()
