#!/usr/bin/env python
"""Distil an image classifier into a smaller one, train the same student on the labels alone, and report.

    accelerate launch examples/distill_image_classification.py --dataset_name ylecun/mnist \
        --teacher mnist-mlp-teacher --student mnist-mlp-student --output_dir distill-mnist

The run, top to bottom: arguments -> data (decoded once and served from memory, or decoded per batch for data that does
not fit: --data_path, --streaming) -> teacher (trained here, or loaded with --teacher_model_name_or_path; a teacher
with another image processor reads its own pixel values) -> the student (an architecture, --student, or a pretrained
classifier, --student_model_name_or_path) distilled by a `DistillationTrainer` -> the CE-only baseline -> the report
(`distillation_report.{md,json,png}`) and the distilled student's model card (pushed with --push_to_hub).
`distill_mnist.py` and `distill_cifar10.py` run this script with their datasets' tuned defaults.

The transformers guide's recipe (a ViT teacher fine-tuned on beans -> a pretrained MobileNetV2 student):

    python examples/distill_image_classification.py --dataset_name AI-Lab-Makerere/beans --eval_split validation \
        --teacher_model_name_or_path merve/vit-mobilenet-beans-224 \
        --student_model_name_or_path google/mobilenet_v2_1.0_224 --output_dir distill-beans

Many teachers: `--teacher_model_name_or_path a b c` distils an ensemble of trained teachers (`--ensemble_method`,
`--teacher_weights`); `--assistants ARCH ...` distils through teacher assistants (and the student directly from the
teacher too, for comparison). The report lists every teacher, assistant and student; the card records the lineage.

Black box: `--teacher_url http://127.0.0.1:8000` distils from a teacher known only by its answers (served e.g. by
`python -m hf_kd.serve DIR`): `--teacher_answers probs|top_k|label`, `--teacher_top_k K`, `--max_labeled_samples N`
(labels on the first N training images only), `--transfer_dataset` (unlabeled images the teacher answers). See
docs/black-box.md.
Data-free: `--distillation_mode data_free --data_free_method {noise,dafl,dfad,statistics} --teacher_model_name_or_path
DIR` distils the student from the teacher alone (docs/data-free.md); the dataset may hold the evaluation split only.
"""

from hf_kd import DistillationTrainer
from hf_kd.data import RandomShiftCollator
from hf_kd.report.metrics import load_metric
from hf_kd.runs.arguments import parse_image_arguments
from hf_kd.runs.black_box import black_box_data, distil_black_box, image_column_of, image_transfer_inputs
from hf_kd.runs.data_free import run_data_free
from hf_kd.runs.experiment import (
    STUDENT_KD_DIR,
    STUDENT_KD_DIRECT_DIR,
    TEACHER_DIR,
    Trained,
    compute_metrics_for,
    distil,
    distil_assistants,
    report_run,
    run_stage,
    stage_args,
    train_baseline,
    train_teacher,
)
from hf_kd.runs.image_data import check_on_the_fly_run, model_view, with_teacher_outputs
from hf_kd.runs.input_checks import check_feature_outputs
from hf_kd.runs.online import born_again, distil_from_ema, train_mutual
from hf_kd.runs.preparation import as_script, prepare_run
from hf_kd.runs.recipes import (
    build_image_model,
    fill_value,
    image_processor_for,
    load_image_data,
    load_image_teacher,
    teacher_processors,
)
from hf_kd.teacher.ensemble import ensemble_for


def main(defaults=None, argv=None):
    # 1. Arguments: data, models and run (DataArguments, ExperimentArguments) + the DistillationConfig.
    data_args, experiment_args, config = parse_image_arguments(defaults, argv)
    with prepare_run(config, experiment_args):  # the output directory locked; SIGTERM -> a checkpoint, then stop
        return distil_images(data_args, experiment_args, config)


def distil_images(data_args, experiment_args, config):
    """The run itself, inside `prepare_run`'s guards."""
    metric = load_metric(experiment_args.metric_name_or_path)
    compute_metrics = compute_metrics_for(metric)

    # 2. Data: decoded and normalised once and held in memory, or per batch (on the fly) when it would not fit
    #    (--data_path auto, logged). A loaded teacher with another image processor gets its own pixel values.
    student_source, pretrained = experiment_args.student_source, bool(experiment_args.student_model_name_or_path)
    image_processor = image_processor_for(student_source)
    if experiment_args.distillation_mode == "data_free":  # the teacher alone: the training split is never read
        return run_data_free(data_args, experiment_args, config, metric, image_processor)
    paths = config.teacher_model_name_or_path
    paths = [paths] if isinstance(paths, str) else paths or []
    own_processors = teacher_processors(paths, image_processor)
    data, label_names = load_image_data(data_args, image_processor, own_processors, config.seed)
    check_on_the_fly_run(data, data_args, config, experiment_args)
    if experiment_args.teacher_url:  # black box: the teacher's answers over HTTP, few labels, transfer sets
        column = image_column_of(data_args)
        bb = black_box_data(data, label_names, data_args, experiment_args, column, image_transfer_inputs(image_processor, column))  # fmt: skip
        build = lambda: build_image_model(student_source, label_names, config.seed, pretrained)  # noqa: E731
        return distil_black_box(bb, build, "image-classification", metric, compute_metrics, data_args, experiment_args, config)  # fmt: skip
    if experiment_args.distillation_mode != "offline":  # online / self distillation: no teacher trained first
        return online_or_self_distillation(data, label_names, data_args, experiment_args, config, metric)

    def build_student():
        return build_image_model(student_source, label_names, config.seed, pretrained)

    # 3. Teacher: a trained one loaded, or one trained here on the labels (with random shifts: Hinton et al.'s jitter).
    #    Several loaded (--teacher_model_name_or_path a b c) are distilled as one ensemble (--ensemble_method); each is
    #    measured on its own pixel values. The features --feature_pairs names are checked on every model first.
    probe = build_student()
    assistants = [build_image_model(name, label_names, config.seed) for name in experiment_args.assistants or []]
    if paths:
        names = [TEACHER_DIR] if len(paths) == 1 else [f"{TEACHER_DIR}_{k}" for k in range(len(paths))]
        members = [None] if len(paths) == 1 else range(len(paths))
        teachers = [
            Trained(name, load_image_teacher(path, probe, config.teacher_model_init_kwargs),
                    model_view(data, member, own_processors.get(member, image_processor)))
            for name, path, member in zip(names, paths, members)
        ]  # fmt: skip
        check_feature_outputs(config.feature_pairs, [probe, *assistants], [t.model for t in teachers] + assistants)
    else:
        model = build_image_model(experiment_args.teacher, label_names, config.seed)
        check_feature_outputs(config.feature_pairs, [probe, *assistants], [model, *assistants])
        shift = experiment_args.teacher_max_shift
        augmentation = RandomShiftCollator(shift, fill=fill_value(image_processor), seed=config.seed) if shift else None
        teachers = [train_teacher(model, data, config, experiment_args, compute_metrics, augmentation)]
    teacher = teachers[0].model if len(teachers) == 1 else ensemble_for([t.model for t in teachers], probe, config)

    # 4. Teacher assistants (--assistants, Mirzadeh et al. 2020): teacher -> assistant 1 -> ..., each link an
    #    ordinary distillation from the previous one; the student then learns from the last link.
    assistants = distil_assistants(teacher, assistants, data, config, compute_metrics)

    # 5. The student, distilled: the teacher's logits computed once up front (--precompute_teacher_logits; data on the
    #    fly: stored on disk once, or the teacher live when the images are augmented per batch).
    #    An assistant reads the student's pixel values, not a teacher's own.
    distilled_data = model_view(data) if assistants else with_teacher_outputs(data, teacher, config)
    trainer = DistillationTrainer(
        model=build_student(),
        teacher_model=assistants[-1].model if assistants else teacher,
        args=stage_args(config, STUDENT_KD_DIR, distilled_data.train_dataset),
        train_dataset=distilled_data.train_dataset,
        eval_dataset=distilled_data.eval_dataset,
        data_collator=distilled_data.data_collator,
        processing_class=image_processor,
        compute_metrics=compute_metrics,
    )
    distilled = run_stage(STUDENT_KD_DIR, trainer, data)

    # 6. The baseline: the same student (same seed, so the same initial weights and data order), labels only, on the
    #    student's own inputs; with assistants, the same student distilled directly from the teacher too. The
    #    ensemble, when it can predict without the labels, is measured first: the others' agreement is with it.
    ensemble = [Trained("ensemble", teacher, data, role="teacher")] if len(teachers) > 1 and not teacher.needs_labels else []
    runs = [*ensemble, *teachers, *assistants]
    if not experiment_args.skip_baseline:
        runs.append(train_baseline(build_student(), model_view(data), config, compute_metrics))
    if assistants:
        runs.append(distil(build_student(), teacher, data, config, compute_metrics, name=STUDENT_KD_DIRECT_DIR))
    runs.append(distilled)

    # 7. Report and model card, on the main process: every model saved and measured (size, accuracy, latency).
    teacher_name = ", ".join(paths) or "trained here"
    return report_run(runs, "image-classification", teacher_name, metric, data_args, experiment_args, config)


def online_or_self_distillation(data, label_names, data_args, experiment_args, config, metric):
    """--distillation_mode mutual | born_again | ema: the CE-only baseline (the student on the labels, same epochs),
    then the peers trained together, the born-again generations, or the student distilled from its own moving
    average; the report lists each beside the baseline."""
    mode, compute_metrics = experiment_args.distillation_mode, compute_metrics_for(metric)
    architectures = {"teacher": experiment_args.teacher, "student": experiment_args.student_source}

    def build(architecture: str, seed_offset: int = 0):
        pretrained = architecture == "student" and bool(experiment_args.student_model_name_or_path)
        name = architectures.get(architecture, architecture)
        return build_image_model(name, label_names, config.seed + seed_offset, pretrained)

    baseline = None  # born-again needs it: it is generation 0
    if mode == "born_again" or not experiment_args.skip_baseline:
        baseline = train_baseline(build("student"), data, config, compute_metrics)
    runs = [baseline] if baseline else []
    if mode == "mutual":  # peer k from seed + k: identical peers would stay identical
        peers = [build(name.strip(), k) for k, name in enumerate(experiment_args.peers.split(","))]
        runs += train_mutual(peers, data, config, compute_metrics)
    elif mode == "born_again":
        runs += born_again(baseline, lambda: build("student"), data, config, compute_metrics, experiment_args.generations)
    else:
        runs.append(distil_from_ema(build("student"), data, config, compute_metrics, experiment_args.ema_decay))
    return report_run(runs, "image-classification", f"none ({mode})", metric, data_args, experiment_args, config)


if __name__ == "__main__":
    with as_script():
        main()
