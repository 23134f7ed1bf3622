#!/usr/bin/env python
"""Distil the MNIST MLP teacher (784-400-100-10) into the MNIST MLP student (784-100-10), and report.

    accelerate launch examples/distill_mnist.py            # or: python examples/distill_mnist.py

With no arguments: trains the teacher on ylecun/mnist (with 1-pixel random shifts), distils the student, trains the
same student on the labels alone as the baseline, and writes the models and distillation_report.{md,json,png} to
./distill-mnist. Every default below can be changed on the command line (`--help` lists them all), e.g.
`--teacher_model_name_or_path distill-mnist/teacher` to distil a teacher trained before.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # the generic script beside this one
from distill_image_classification import main as distill_image_classification  # noqa: E402

from hf_kd.runs.preparation import as_script

# Tuned on MNIST: see README.md, "The MNIST study", for how each choice moves the three accuracies.
DEFAULTS = {
    "dataset_name": "ylecun/mnist",
    "teacher": "mnist-mlp-teacher",
    "student": "mnist-mlp-student",
    "teacher_max_shift": 1,
    "output_dir": "distill-mnist",
    "num_train_epochs": 10,
    "learning_rate": 1e-3,
    "per_device_train_batch_size": 128,
    "per_device_eval_batch_size": 1024,
    "temperature": 4.0,
    "alpha": 0.5,
    "save_strategy": "no",
    "logging_steps": 100,
    "dataloader_pin_memory": False,
    "report_to": "none",
    # The student trains on un-augmented images: its teacher's logits are computed once, not at every step.
    "precompute_teacher_logits": True,
    # The MLPs are too small to gain from several CPU threads, and lose up to 15x on a busy machine: one thread.
    "torch_num_threads": 1,
}


def main(argv=None):
    return distill_image_classification(DEFAULTS, argv)


if __name__ == "__main__":
    with as_script():
        main()
