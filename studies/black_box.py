#!/usr/bin/env python
"""Black-box distillation on MNIST: the headline MLP teacher (784-400-100-10, 10 epochs with 1-pixel jitter) served
over loopback HTTP by `python -m hf_kd.serve`, no label kept (`--max_labeled_samples 0`, alpha = 1), and the MLP
student (784-100-10) distilled from the teacher's answers alone, 3 seeds, on the full 10,000-image test split.
`--study` picks what is compared:

- `answers` (default): labels only vs top-3 + tail bucket, the 60,000 training images as the transfer set, 10 epochs;
- `budget`: the query budget, the first 1k / 5k / 10k / 60k training images answered, every budget trained for the
  same `--max_steps` (4,690: 60,000 images x 10 epochs at batch 128), so that the curve measures the queries and
  not the length of training; paired against 60k;
- `ood`: Fashion-MNIST's 60,000 training images as the only transfer set (`--max_train_samples 0`: the student never
  sees an MNIST training image) against the 60,000 MNIST training images, the same steps (the budget's 60k point).

Each student is a run of `examples/distill_mnist.py --teacher_url ...`; the teacher answers each set once per
process (the annotation job is cached by fingerprint and teacher URL: the later seeds reuse it, and the report
says so). A run already made with the same flags is read back from its directory (`study_run.json`).

    nice -n 19 python studies/black_box.py --output_dir /tmp/black_box_study
    nice -n 10 python studies/black_box.py --study budget ood --output_dir /tmp/bb_study --teacher_dir T

Writes `results.json` and `results.md` (answers), `budget/results-<answers>.{md,json}` and `ood/results.{md,json}`
(through studies/harness.py) in the output directory, rewritten after every run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

from harness import Study, command, paired_difference, verdict

from hf_kd.serve import serving

REPO_ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = REPO_ROOT.parent / "shared" / "data" / "mnist"
FASHION_DIR = REPO_ROOT.parent / "shared" / "data" / "fashion_mnist"
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


def student_run(example, url: str, options, run_dir: Path, flags: list[str], seed: int) -> dict:
    """One student: `examples/distill_mnist.py --teacher_url URL` with no label kept (alpha = 1) and `flags`. A run
    already made with the same flags and seed in `run_dir` is read back (the budget and OOD studies share their 60k
    point, and a stopped study resumes)."""
    done = run_dir / "study_run.json"
    if done.is_file() and json.loads(done.read_text())["key"] == [*flags, seed]:
        return json.loads(done.read_text())["run"]
    began = time.perf_counter()
    report = example.main([
        "--dataset_name", options.dataset, "--output_dir", str(run_dir), "--overwrite_output_dir", "--teacher_url", url,
        "--max_labeled_samples", "0", "--alpha", "1.0", *flags, "--seed", str(seed), "--plot", "false",
        "--torch_num_threads", str(options.threads),
    ])  # fmt: skip
    kd, bb = report.model("student_kd"), report.black_box
    run = {
        "accuracy": kd.accuracy, "agreement": kd.agreement_with_teacher, "queries": bb["queries"],
        "queries_by_split": bb["queries_by_split"], "reused": bb["answers_reused_from_disk"],
        "answered_examples": bb["teacher_answered_examples"], "teacher_accuracy": bb["teacher_test_accuracy"],
        "max_steps": report.settings.get("max_steps"), "seconds": time.perf_counter() - began,
        "report": str(run_dir / "distillation_report.json"),
    }  # fmt: skip
    done.write_text(json.dumps({"key": [*flags, seed], "run": run}, indent=1))
    return run


def answers_study(example, url: str, options, out: Path, teacher: dict) -> None:
    """Labels only vs top-3 + tail, every training image a transfer example, `--epochs` epochs."""
    results = []
    for seed in options.seeds:
        for variant in options.variants:
            run_dir = out / f"{slug(variant)}-seed{seed}"
            flags = [*VARIANTS[variant], "--num_train_epochs", str(options.epochs)]
            run = student_run(example, url, options, run_dir, flags, seed)
            teacher["accuracy"] = run["teacher_accuracy"]
            results.append({"variant": variant, "seed": seed, **run})
            (out / "results.json").write_text(json.dumps({"teacher": teacher, "runs": results}, indent=1))
            (out / "results.md").write_text(summarise(results, teacher))
    print(summarise(results, teacher))


def slug(name: str) -> str:
    return name.replace(" ", "_").replace("+", "plus").replace(",", "")


def record(study: Study, method: str, seed: int, run: dict) -> None:
    details = {key: value for key, value in run.items() if key != "accuracy"}
    study.record(method, seed, run["accuracy"], **details)
    study.notes[f"queries, {method}"] = ", ".join(
        f"seed {s}: train {r['queries_by_split'].get('train', 0):,} + transfer {r['queries_by_split'].get('transfer', 0):,}"
        f" + test {r['queries_by_split'].get('test', 0):,} ({r['reused']:,} answers reused), {r['seconds']:.0f} s"
        for s, r in sorted(study.runs[method].items())
    )
    study.write()


def budget_study(example, url: str, options, out: Path, teacher: dict) -> None:
    """The query budget: the first N training images answered (and no other input), every budget trained for the
    same `--max_steps` (the 60,000-image run's 10 epochs at batch 128), so that the curve measures the queries."""
    studies = {}
    for variant in options.variants:
        sizes = {"transfer (queries)": max(options.budgets), "test": 10_000}
        study = Study(f"Query budget, MNIST, {variant}, {options.max_steps} steps", f"{max(options.budgets):,} queries",
                      options.seeds, sizes, out / "budget", stem=f"results-{slug(variant)}")  # fmt: skip
        study.notes["teacher"] = teacher["description"]
        for seed in options.seeds:
            for budget in options.budgets:
                flags = [*VARIANTS[variant], "--max_train_samples", str(budget), "--max_steps", str(options.max_steps)]
                run_dir = out / "budget" / f"{slug(variant)}-{budget}-seed{seed}"
                record(study, f"{budget:,} queries", seed, student_run(example, url, options, run_dir, flags, seed))
        print(f"\n{(study.output_dir / f'{study.stem}.md').read_text()}")
        studies[variant] = study
    if len(studies) == 2:
        compare_answers(studies, out / "budget", options.budgets)


def compare_answers(studies: dict[str, Study], out: Path, budgets: list[int]) -> None:
    """The second kind of answer against the first at each budget: paired by seed (same start, same data order)."""
    (first, base), (second, other) = studies.items()
    lines = [f"Command: `{command()}`", "", f"| training queries | {second} vs {first} (paired, ± SE) | verdict |",
             "|---|---|---|"]  # fmt: skip
    for budget in budgets:
        pair = paired_difference(other.scores(f"{budget:,} queries"), base.scores(f"{budget:,} queries"))
        lines.append(f"| {budget:,} | {100 * pair['mean']:+.2f} ± {100 * pair['se']:.2f} | {verdict(pair['mean'], pair['se'])} |")  # fmt: skip
    (out / "answers-compared.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def ood_study(example, url: str, options, out: Path, teacher: dict) -> None:
    """Fashion-MNIST's 60,000 training images as the only transfer set (`--max_train_samples 0`: no MNIST training
    image), against the 60,000 MNIST training images, the same steps; both scored on the MNIST test split."""
    variant = options.variants[-1]
    top_k, steps = VARIANTS[variant], ["--max_steps", str(options.max_steps)]
    arms = {  # name -> (run directory, flags); the first is the budget study's 60k point (made once, read back)
        "MNIST training images (in distribution)": (
            out / "budget" / f"{slug(variant)}-60000", [*top_k, "--max_train_samples", "60000", *steps]),
        "Fashion-MNIST training images (out of distribution)": (
            out / "ood" / f"fashion-{slug(variant)}",
            [*top_k, "--max_train_samples", "0", "--transfer_dataset", options.transfer_dataset, *steps]),
    }  # fmt: skip
    study = Study(f"Transfer set in and out of distribution, MNIST teacher, {variant}, {options.max_steps} steps",
                  next(iter(arms)), options.seeds, {"transfer": 60_000, "test (MNIST)": 10_000}, out / "ood")  # fmt: skip
    study.notes["teacher"] = teacher["description"]
    for seed in options.seeds:
        for arm, (run_dir, flags) in arms.items():
            run_dir = run_dir.with_name(f"{run_dir.name}-seed{seed}")
            record(study, arm, seed, student_run(example, url, options, run_dir, flags, seed))
    why_ood(options, out, study, Path(teacher["dir"]), variant)
    print(f"\n{(study.output_dir / 'results.md').read_text()}")


def images_of(dataset: str, split: str):
    from hf_kd.data.loading import load_raw_dataset, select_split

    return select_split(load_raw_dataset(dataset, None), split, "split", dataset)


def class_profile(model_dir: Path, images, labels=None) -> dict:
    """What a saved classifier answers about `images`, in process (the classifier the server runs): the share of
    each class among its top-1 answers and the mean top-1 score; with `labels`, its recall per class."""
    import torch

    from hf_kd.teacher.classifier import ClassifierAnswers

    classifier = ClassifierAnswers.from_pretrained(model_dir)
    probs = torch.cat([classifier.probabilities(images[i : i + 2048]) for i in range(0, len(images), 2048)])
    score, top = probs.max(-1)
    profile = {"top1_share_by_class": [round(v, 4) for v in (torch.bincount(top, minlength=probs.shape[1]) / len(top)).tolist()],
               "mean_top1_score": round(score.mean().item(), 4)}  # fmt: skip
    if labels is not None:
        labels = torch.as_tensor(labels)
        profile["recall_by_class"] = [round((top[labels == c] == c).float().mean().item(), 4) for c in range(probs.shape[1])]  # fmt: skip
    return profile


def why_ood(options, out: Path, study: Study, teacher_dir: Path, variant: str) -> None:
    """Why the out-of-distribution transfer set teaches less, measured: which classes the teacher answers about
    Fashion-MNIST (against MNIST), and each seed-0 student's recall per class on the MNIST test split."""
    mnist_train, mnist_test = images_of(options.dataset, "train"), images_of(options.dataset, "test")
    fashion = images_of(options.transfer_dataset, "train")
    profiles = {
        "teacher's top-1 answers about the MNIST training images": class_profile(teacher_dir, mnist_train["image"]),
        "teacher's top-1 answers about the Fashion-MNIST training images": class_profile(teacher_dir, fashion["image"]),
    }
    for name, run_dir in (("in distribution", out / "budget" / f"{slug(variant)}-60000-seed0"),
                          ("out of distribution", out / "ood" / f"fashion-{slug(variant)}-seed0")):  # fmt: skip
        profiles[f"student ({name}, seed 0) on the MNIST test split"] = class_profile(
            run_dir / "student_kd", mnist_test["image"], mnist_test["label"])  # fmt: skip
    study.notes["class profiles"] = profiles  # the JSON's; the markdown's, in words:
    for name, profile in profiles.items():
        shares = ", ".join(f"{c}: {100 * v:.1f}%" for c, v in enumerate(profile["top1_share_by_class"]))
        recall = profile.get("recall_by_class")
        recall = "; recall by class " + ", ".join(f"{c}: {100 * v:.1f}%" for c, v in enumerate(recall)) if recall else ""
        study.notes[name] = f"top-1 shares {shares}; mean top-1 score {profile['mean_top1_score']:.3f}{recall}"
    study.write()


STUDIES = {"answers": answers_study, "budget": budget_study, "ood": ood_study}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", nargs="+", default=["answers"], choices=list(STUDIES))
    parser.add_argument("--output_dir", default="black_box_study")
    parser.add_argument("--dataset", default=str(MNIST_DIR), help="MNIST: a parquet directory or ylecun/mnist")
    parser.add_argument("--transfer_dataset", default=str(FASHION_DIR), help="the OOD study's transfer set")
    parser.add_argument("--teacher_dir", default=None, help="a trained MNIST teacher (default: trained here)")
    parser.add_argument("--teacher_epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="the answers study's epochs")
    parser.add_argument("--max_steps", type=int, default=4690, help="budget / ood: 60,000 images x 10 epochs / 128")
    parser.add_argument("--budgets", type=int, nargs="+", default=[1000, 5000, 10000, 60000])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                        help="default: both for answers, top-3 + tail for budget and ood")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    options = parser.parse_args()
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = Path(options.teacher_dir) if options.teacher_dir else out / "teacher"
    description = f"the MNIST MLP teacher loaded from {teacher_dir}"
    if not (teacher_dir / "config.json").is_file():
        train_headline_teacher(teacher_dir, options.dataset, options.teacher_epochs, options.threads)
        description = f"the MNIST MLP teacher trained here ({options.teacher_epochs} epochs, 1-pixel jitter)"
    with serving(teacher_dir, threads=options.threads) as url:
        example = load_example("distill_mnist.py")
        for name in options.study:
            variants = options.variants or (list(VARIANTS) if name == "answers" else ["top-3 + tail"])
            study_options = argparse.Namespace(**{**vars(options), "variants": variants})
            teacher = {"description": f"{description}, served over loopback HTTP", "url": url, "dir": str(teacher_dir)}
            STUDIES[name](example, url, study_options, out, teacher)


if __name__ == "__main__":
    main()
