#!/usr/bin/env python
"""Data-free distillation on real MNIST: noise / DAFL / DFAD / statistics, accuracy against wall time.

    . ../shared/offline-hf.sh
    python examples/distill_mnist.py --output_dir /tmp/df-teacher --skip_baseline   # the headline teacher, once
    nice -n 19 python studies/data_free.py --teacher_dir /tmp/df-teacher/teacher --seeds 0 1 2 \
        --output docs/data-free-study

Each (method, seed) distils the MNIST MLP student (784-100-10) from the teacher with [`DataFreeDistillationTrainer`]
for `--max_steps` steps or `--time_budget_s` seconds of training, whichever comes first; the student is scored on a
validation split carved from the training split (every `--eval_every` steps, off the clock: the accuracy-vs-time
curve, and what any tuning looked at) and, once at the end, on the test split. `statistics` first records the
teacher's activation statistics from the training split (what the teacher's owner ships), unless they are there.
Writes `<output>.json` (every curve) and `<output>.md` (the table), with the command, seeds and wall times.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from harness import mean_std, paired_difference, verdict
from transformers import AutoModelForImageClassification, TrainerCallback

from hf_kd.data import InMemoryDataset, load_image_classification_dataset
from hf_kd.models import image_processor_for_preset, model_from_preset
from hf_kd.teacher.statistics import STATISTICS_FILE, record_activation_statistics
from hf_kd.training.configuration_data_free import DataFreeConfig
from hf_kd.training.data_free import DataFreeDistillationTrainer
from hf_kd.training.ema import ema_update_

VALIDATION_SIZE = 5000


@torch.no_grad()
def accuracy(model, dataset: InMemoryDataset, batch_size: int = 2000) -> float:
    was_training = model.training
    model.eval()
    x, y = dataset.columns["pixel_values"], dataset.columns["labels"]
    correct = sum(
        (model(pixel_values=x[i : i + batch_size]).logits.argmax(-1) == y[i : i + batch_size]).sum().item()
        for i in range(0, len(y), batch_size)
    )
    model.train(was_training)
    return correct / len(y)


class Curve(TrainerCallback):
    """Validation accuracy every `every` steps against training wall time (evaluation off the clock); stops the run
    when the training time passes `budget_s`. With `ema_decay`, also keeps an exponential moving average of the
    student's weights (updated after every step, on the clock) and scores it beside the student: a fourth value of
    each point."""

    def __init__(self, validation: InMemoryDataset, every: int, budget_s: float, ema_decay: float = 0.0):
        self.validation, self.every, self.budget_s, self.ema_decay = validation, every, budget_s, ema_decay
        self.points, self.train_s, self._since = [], 0.0, None
        self.best = (-1.0, None, None)  # validation accuracy, step, student state: model selection on validation
        self.ema = None  # the averaged student, a copy made at the first step

    def on_step_begin(self, args, state, control, **kwargs):
        self._since = time.perf_counter()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.ema_decay:
            if self.ema is None:
                self.ema = copy.deepcopy(model).eval()
            ema_update_(self.ema, model, self.ema_decay)
        self.train_s += time.perf_counter() - self._since
        if state.global_step % self.every == 0 or self.train_s >= self.budget_s:
            score = accuracy(model, self.validation)
            self.points.append([state.global_step, round(self.train_s, 1), score])
            if self.ema is not None:
                self.points[-1].append(accuracy(self.ema, self.validation))
            if score > self.best[0]:
                self.best = (score, state.global_step, {k: v.detach().clone() for k, v in model.state_dict().items()})
        if self.train_s >= self.budget_s:
            control.should_training_stop = True


def load_data(dataset: str):
    processor = image_processor_for_preset("mnist-mlp-student")
    splits, _ = load_image_classification_dataset(dataset, processor)
    train = InMemoryDataset.from_dataset(splits["train"])
    n = len(train)
    validation = InMemoryDataset({k: v[n - VALIDATION_SIZE :] for k, v in train.columns.items()})
    return train, validation, InMemoryDataset.from_dataset(splits["eval"])


def run_one(method: str, seed: int, teacher, validation, test, cli, options: dict) -> dict:
    torch.manual_seed(seed)
    # The student knows only the teacher: it takes the teacher's class names (Fashion-MNIST's are not digits).
    labels = teacher.config.id2label
    student = model_from_preset("mnist-mlp-student", id2label=labels, label2id={v: k for k, v in labels.items()})
    args = DataFreeConfig(
        output_dir=f"/tmp/data-free-study/{method}-{seed}", data_free_method=method, seed=seed,
        max_steps=cli.max_steps, per_device_train_batch_size=cli.batch_size, learning_rate=cli.learning_rate,
        temperature=cli.temperature, lr_scheduler_type=cli.lr_scheduler_type, save_strategy="no", logging_steps=100,
        report_to="none", use_cpu=True, disable_tqdm=True, **options,
    )  # fmt: skip
    curve = Curve(validation, cli.eval_every, cli.time_budget_s, cli.student_ema)
    trainer = DataFreeDistillationTrainer(model=student, teacher_model=teacher, args=args, callbacks=[curve])
    start = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - start
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    final_test = accuracy(student, test)
    best_validation, best_step, best_state = curve.best
    student.load_state_dict(best_state)
    return {
        "method": method, "seed": seed, "steps": trainer.state.global_step, "train_time_s": round(curve.train_s, 1),
        "wall_time_s": round(wall, 1), "validation_accuracy": curve.points[-1][2] if curve.points else None,
        "test_accuracy": final_test, "best_validation_step": best_step, "best_validation_accuracy": best_validation,
        "best_validation_test_accuracy": accuracy(student, test), "curve": curve.points,
        "collapses": trainer.guard["collapses"], "last_log": logs[-1] if logs else None,
        **({"ema_decay": cli.student_ema, "ema_validation_accuracy": accuracy(curve.ema, validation),
            "ema_test_accuracy": accuracy(curve.ema, test)} if curve.ema is not None else {}),
    }  # fmt: skip


def selected(result: dict) -> str:
    if result.get("best_validation_test_accuracy") is None:
        return "not recorded"
    return f"{100 * result['best_validation_test_accuracy']:.2f} ({result['best_validation_step']})"


def markdown(
    results: list[dict], teacher_test: float, command: str, total_s: float, dataset_title="MNIST", runs: str = ""
) -> str:
    """The study's tables; `runs` (the commands of the runs a merge read) goes between the command and the tables."""
    lines = [
        f"# Data-free distillation on {dataset_title} (study)", "", f"Command: `{command}`", "",
        *([runs] if runs else []),
        (f"Teacher (MLP 784-400-100-10, trained on {dataset_title}) test accuracy: {100 * teacher_test:.2f}%. "
         "Student: MLP 784-100-10, "
         "never shown a training image. Test accuracy of the final student; time = training wall time on this "
         "machine's CPU (evaluation off the clock)."), "",
        ("| method | seed | steps | train time (s) | validation acc. | test acc. | test acc. of the best-on-validation "
         "student (step) | collapses |"), "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['steps']} | {r['train_time_s']} "
            f"| {100 * r['validation_accuracy']:.2f} | {100 * r['test_accuracy']:.2f} | {selected(r)} "
            f"| {r['collapses']} |"
        )
    lines += ["", *summary_table(results)]
    lines += ["", f"Total wall time of the study: {total_s / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def summary_table(results: list[dict]) -> list[str]:
    """Each method over its seeds (mean ± sample standard deviation) and against the noise baseline, paired by seed."""
    lines = [("| method | seeds | test acc. (mean ± sd) | best-on-validation student | vs noise (paired, ± SE) | "
              "verdict | mean train time (s) |"), "|---|---|---|---|---|---|---|"]  # fmt: skip
    noise = {r["seed"]: 100 * r["test_accuracy"] for r in results if r["method"] == "noise"}
    for method in dict.fromkeys(r["method"] for r in results):
        runs = [r for r in results if r["method"] == method]
        test = {r["seed"]: 100 * r["test_accuracy"] for r in runs}
        best = [100 * r["best_validation_test_accuracy"] for r in runs if r.get("best_validation_test_accuracy")]
        mean, sd = mean_std(test.values())
        paired, call = "", ""
        if method != "noise" and set(test) & set(noise):
            difference = paired_difference(test, noise)
            paired = f"{difference['mean']:+.2f} ± {difference['se']:.2f}"
            call = verdict(difference["mean"], difference["se"])
        best_text = f"{mean_std(best)[0]:.2f} ({len(best)} seeds)" if best else "not recorded"
        time_s = sum(r["train_time_s"] for r in runs) / len(runs)
        cells = [method, len(runs), f"{mean:.2f} ± {sd:.2f}", best_text, paired, call, f"{time_s:.0f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def merge(paths: list[str], output: Path) -> None:
    parts = [json.loads(Path(path).read_text()) for path in paths]
    results = [result for part in parts for result in part["results"]]
    command = "\n".join(part["command"] for part in parts)
    wall = max(part["wall_time_s"] for part in parts)
    summary = {"commands": [part["command"] for part in parts], "dataset": parts[0].get("dataset", "ylecun/mnist"),
               "teacher_test_accuracy": parts[0]["teacher_test_accuracy"],
               "results": results, "wall_time_s": wall, "note": "the commands ran in parallel"}  # fmt: skip
    output.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    merged = shlex.join(["python", "studies/data_free.py", *sys.argv[1:]])  # the tables come from this merge
    runs = "Runs merged (in parallel):\n\n" + "\n".join(f"    {line}" for line in command.splitlines()) + "\n"
    text = markdown(results, summary["teacher_test_accuracy"], merged, wall, summary["dataset"], runs)
    output.with_suffix(".md").write_text(text)
    plot_curves(results, output.with_suffix(".png"), summary["dataset"])


def plot_curves(results: list[dict], path: Path, dataset: str = "MNIST") -> None:
    """Validation accuracy against training time, one line per (method, seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"noise": "tab:gray", "dafl": "tab:orange", "dfad": "tab:blue", "statistics": "tab:green"}
    figure, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        times, scores = [p[1] / 60 for p in r["curve"]], [100 * p[2] for p in r["curve"]]
        ax.plot(times, scores, color=colors.get(r["method"]), alpha=0.8, label=f"{r['method']} (seed {r['seed']})")
    ax.axhline(93, color="red", linestyle=":", label="target 93%")
    ax.set(xlabel="training time (min, this CPU)", ylabel="validation accuracy (%)", ylim=(40, 100),
           title=f"Data-free student ({Path(dataset).name}): accuracy vs time")  # fmt: skip
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher_dir", required=True)
    parser.add_argument("--dataset", default="ylecun/mnist", help="a 28x28 grey-scale dataset: a Hub id or a "
                        "directory (e.g. ../shared/data/fashion_mnist); the teacher must have been trained on it")  # fmt: skip
    parser.add_argument("--methods", nargs="+", default=["noise", "dafl", "dfad", "statistics"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--max_steps", type=int, default=3000)
    parser.add_argument("--time_budget_s", type=float, default=900.0)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lr_scheduler_type", default="constant", help="the student's schedule over --max_steps "
                        "(e.g. cosine: then choose --max_steps to fit the time budget)")  # fmt: skip
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--options", default="{}", help="JSON: DataFreeConfig fields by method, e.g. "
                        "'{\"dafl\": {\"generator_learning_rate\": 0.01}}'.")  # fmt: skip
    parser.add_argument("--student_ema", type=float, default=0.0, help="also keep (and score) an exponential moving "
                        "average of the student's weights with this decay, e.g. 0.999 (0: none)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default="docs/data-free-study")
    parser.add_argument("--merge", nargs="+", help="Instead of running: merge these JSON outputs (runs made in "
                        "parallel, one process per method) into --output.")  # fmt: skip
    cli = parser.parse_args(argv)
    if cli.merge:
        return merge(cli.merge, Path(cli.output))
    torch.set_num_threads(cli.threads)
    started = time.perf_counter()
    command = "python studies/data_free.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    train, validation, test = load_data(cli.dataset)
    teacher = AutoModelForImageClassification.from_pretrained(cli.teacher_dir).eval()
    if "statistics" in cli.methods and not (Path(cli.teacher_dir) / STATISTICS_FILE).is_file():
        record_activation_statistics(teacher, train).save_pretrained(cli.teacher_dir)
    options = json.loads(cli.options)
    results = []
    for seed in cli.seeds:
        for method in cli.methods:
            # `statistics` reads the file beside the teacher (teacher.name_or_path is its directory).
            results.append(run_one(method, seed, teacher, validation, test, cli, dict(options.get(method, {}))))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "curve"}), flush=True)
            output = Path(cli.output)
            output.parent.mkdir(parents=True, exist_ok=True)
            summary = {"command": command, "dataset": cli.dataset, "teacher_test_accuracy": accuracy(teacher, test),
                       "results": results, "wall_time_s": round(time.perf_counter() - started, 1)}  # fmt: skip
            output.with_suffix(".json").write_text(json.dumps(summary, indent=1))
            output.with_suffix(".md").write_text(
                markdown(results, summary["teacher_test_accuracy"], command, summary["wall_time_s"], cli.dataset)
            )


if __name__ == "__main__":
    main()
