"""Issue 14: what a user can get wrong on the command line, as a table. Each bad input must raise the named exception
with a message that names the argument (or column, or model) and what was expected, and leave the output directory
as it was. The examples run in-process through their `main(argv)`, on small generated datasets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset, DatasetDict, Value
from test_examples_image import LOCAL_ACCURACY, load_example, make_image_dataset
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

WORDS = ["good", "great", "bad", "awful", "the", "movie", "was"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Small datasets saved to disk, each with one thing wrong (or right, for `good` / `strings`)."""
    root = tmp_path_factory.mktemp("bad_inputs")
    train, test = make_image_dataset(40, 28, "L", seed=0), make_image_dataset(16, 28, "L", seed=1)  # every class
    ints = [split.cast_column("label", Value("int64")) for split in (train, test)]
    unseen = ints[1].map(lambda row, i: {"label": 12 if i == 3 else row["label"]}, with_indices=True)
    strings = [split.cast_column("label", Value("string")) for split in ints]
    sets = {
        "good": {"train": train, "test": test},
        "unseen_label": {"train": ints[0], "test": unseen},
        "empty_train": {"train": train.select([]), "test": test},
        "strings": {"train": strings[0], "test": strings[1]},
    }
    for name, splits in sets.items():
        DatasetDict(splits).save_to_disk(root / name)
    texts = Dataset.from_dict({"text": ["good movie", "bad movie", "great", "awful"] * 4, "label": ["pos", "neg"] * 8})
    DatasetDict({"train": texts, "test": texts.map(lambda r, i: {"label": "meh" if i == 0 else r["label"]},
                                                    with_indices=True)}).save_to_disk(root / "text_unseen")  # fmt: skip
    DatasetDict({"train": texts.select([]), "test": texts}).save_to_disk(root / "text_empty")
    paths = {name: root / name for name in [*sets, "text_unseen", "text_empty"]}
    paths["bert"] = _save_bert(root / "bert")
    return paths


def _save_bert(folder: Path) -> Path:
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    BertTokenizer(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=12, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=10)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


IMAGE = "distill_mnist.py"
TEXT = "distill_text_classification.py"

# (id, example, dataset, extra arguments, exception, message: names the argument / column / model and what is expected)
CASES = [
    ("temperature-inf", IMAGE, "good", ["--temperature", "inf"], ValueError,
     r"temperature must be a number > 0, got inf \(a finite number"),
    ("temperature-zero", IMAGE, "good", ["--temperature", "0"], ValueError, r"temperature must be a number > 0, got 0"),
    ("alpha-nan", IMAGE, "good", ["--alpha", "nan"], ValueError, r"alpha must be a number in \[0, 1\].*got nan"),
    ("alpha-above-one", IMAGE, "good", ["--alpha", "1.5"], ValueError, r"alpha must be a number in \[0, 1\]"),
    ("zero-epochs", IMAGE, "good", ["--num_train_epochs", "0"], ValueError, r"num_train_epochs must be > 0"),
    ("zero-steps", IMAGE, "good", ["--max_steps", "0"], ValueError, r"max_steps must be > 0"),
    ("loss-type", IMAGE, "good", ["--loss_type", "js"], SystemExit,
     r"--loss_type.*: invalid choice: 'js' \(choose from 'kl', 'reverse_kl', 'mse'\)"),
    ("resume-missing", IMAGE, "good", ["--resume_from_checkpoint", "{out}/student_kd/checkpoint-99"], ValueError,
     r"--resume_from_checkpoint '.*checkpoint-99' does not exist"),
    ("resume-and-overwrite", IMAGE, "good", ["--resume_from_checkpoint", "{out}", "--overwrite_output_dir"],
     ValueError, r"--resume_from_checkpoint and --overwrite_output_dir contradict"),
    ("train-split", IMAGE, "good", ["--train_split", "training"], ValueError,
     r"train_split='training' is not a split of the dataset; its splits are \['test', 'train'\]"),
    ("label-column", IMAGE, "good", ["--label_column", "class"], ValueError, r"label_column='class' is not a column"),
    ("max-train-samples", IMAGE, "good", ["--max_train_samples", "0"], ValueError,
     r"max_train_samples must be a positive integer"),
    ("empty-train", IMAGE, "empty_train", [], ValueError,
     r"train_split='train' of the dataset .*empty_train has no rows"),
    ("unseen-test-label", IMAGE, "unseen_label", [], ValueError,
     r"eval_split='test': its 'label' column holds class id 12 .*outside \[0, 10\)"),
    ("text-teacher-for-images", IMAGE, "good", ["--teacher_model_name_or_path", "{bert}"], ValueError,
     r"The teacher .*bert \(model_type 'bert'\) and the student \(MLPForImageClassification\) take different inputs"),
    ("text-unseen-test-label", TEXT, "text_unseen", ["--teacher_model_name_or_path", "{bert}"], ValueError,
     r"eval_split='test': its 'label' column holds \['meh'\], which are not classes of the training split "
     r"\['neg', 'pos'\]"),
    ("text-empty-train", TEXT, "text_empty", ["--teacher_model_name_or_path", "{bert}"], ValueError,
     r"train_split='train' of the dataset .*text_empty has no rows"),
    # Issue 25, item 4: the second floor's inputs.
    ("teacher-path-missing", IMAGE, "good", ["--teacher_model_name_or_path", "/path/that/does/not/exist"], ValueError,
     r"--teacher_model_name_or_path '/path/that/does/not/exist': the directory /path/that/does/not/exist does not "
     r"exist, and it is not a Hub id .*neither a local model nor one on the Hub"),
    ("text-teacher-path-missing", TEXT, "text_unseen", ["--teacher_model_name_or_path", "./no/such/bert"],
     ValueError, r"--teacher_model_name_or_path './no/such/bert': the directory .*no/such/bert does not exist"),
    ("text-student-path-missing", TEXT, "text_unseen", ["--teacher_model_name_or_path", "{bert}",
     "--student_model_name_or_path", "/no/such/student"], ValueError,
     r"--student_model_name_or_path '/no/such/student': the directory .* does not exist"),
    ("assistant-not-a-preset", IMAGE, "good", ["--assistants", "no-such-preset"], ValueError,
     r"--assistants 'no-such-preset' is not a preset \(mnist-mlp-teacher, mnist-mlp-student, cifar10-cnn-teacher, "
     r"cifar10-cnn-student\), nor an existing directory holding a model config"),
    ("student-not-a-preset", IMAGE, "good", ["--student", "mnist-mlp"], ValueError,
     r"--student 'mnist-mlp' is not a preset \(mnist-mlp-teacher"),
    ("attention-pairs-on-mlp", IMAGE, "good", ["--feature_pairs", "attentions.0:attentions.0", "--feature_loss",
     "attention_mse"], ValueError,
     r"--feature_pairs attentions.0:attentions.0: the student \(MLPForImageClassification\) returns no attention "
     r"maps \(its forward takes no output_attentions\).*Its features: hidden_states.<i>; module outputs: "
     r"hidden_layers"),
    ("ema-decay", IMAGE, "good", ["--distillation_mode", "ema", "--ema_decay", "1.5"], ValueError,
     r"--ema_decay must be a number in \[0, 1\), got 1.5"),
    ("generations-zero", IMAGE, "good", ["--distillation_mode", "born_again", "--generations", "0"], ValueError,
     r"--generations must be >= 1"),
    ("one-peer", IMAGE, "good", ["--distillation_mode", "mutual", "--peers", "student"], ValueError,
     r"--peers must name at least two comma-separated architectures.*got 'student'"),
    ("peer-not-a-preset", IMAGE, "good", ["--distillation_mode", "mutual", "--peers", "student,nosuch"], ValueError,
     r"--peers 'nosuch' is not a preset"),
    ("weights-for-one-teacher", IMAGE, "good", ["--teacher_weights", "1", "2"], ValueError,
     r"--teacher_weights 1.0 2.0 weighs the teachers of an ensemble, but this run has one teacher"),
    ("latency-examples-zero", IMAGE, "good", ["--latency_examples", "0"], ValueError,
     r"--latency_examples must be >= 1, got 0"),
]


def snapshot(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*")} if folder.exists() else {}


@pytest.mark.parametrize("case", CASES, ids=[case[0] for case in CASES])
@pytest.mark.parametrize("previous", ["none", "unfinished"])
def test_bad_command_line_input(tmp_path, data, case, previous, capsys):
    _, script, dataset, extra, exception, message = case
    out = tmp_path / "run"
    if previous == "unfinished":  # a directory that already holds something: it must be left alone
        (out / "teacher").mkdir(parents=True)
        (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    argv = ["--dataset_name", str(data[dataset]), "--output_dir", str(out), "--metric_name_or_path", LOCAL_ACCURACY,
            "--num_train_epochs", "1", "--latency_examples", "2", "--no_plot", "--report_to", "none",
            *[arg.format(out=out, bert=data["bert"]) for arg in extra]]  # fmt: skip
    if script == TEXT:
        argv += ["--f1_metric_name_or_path", "none", "--max_length", "16"]
    with pytest.raises(exception) as error:
        load_example(script).main(argv)
    shown = capsys.readouterr().err if exception is SystemExit else str(error.value)
    assert re.search(message, shown), shown
    assert snapshot(out) == before


@pytest.mark.slow
def test_string_labels_of_images_are_encoded_for_a_cli_user(tmp_path, data):
    """A label column of strings needs no `class_encode_column`: the classes are its sorted distinct values."""
    out = tmp_path / "run"
    load_example(IMAGE).main([
        "--dataset_name", str(data["strings"]), "--output_dir", str(out), "--metric_name_or_path", LOCAL_ACCURACY,
        "--num_train_epochs", "1", "--latency_examples", "2", "--no_plot", "--skip_baseline", "--report_to", "none",
    ])  # fmt: skip
    config = json.loads((out / "student_kd" / "config.json").read_text())
    assert config["id2label"] == {str(i): str(i) for i in range(10)}
    settings = json.loads((out / "distillation_report.json").read_text())["settings"]
    assert settings["mixed_precision"] == "no" and settings["teacher_dtype"] == "float32"  # issue 14, item 9


@pytest.mark.slow
def test_overwrite_moves_the_previous_run_aside(tmp_path, data, caplog):
    """--overwrite_output_dir: the new run's directory holds the new run alone (issue 14, item 3)."""
    out = tmp_path / "run"
    for stage in ("teacher", "student_kd", "student_ce"):  # a finished run, with its baseline and card
        (out / stage).mkdir(parents=True)
        (out / stage / "README.md").write_text("the previous run's card " * 100)
    (out / "distillation_report.json").write_text(json.dumps({"models": [{"name": "student_ce"}]}))
    load_example(IMAGE).main([
        "--dataset_name", str(data["good"]), "--output_dir", str(out), "--metric_name_or_path", LOCAL_ACCURACY,
        "--num_train_epochs", "1", "--latency_examples", "2", "--no_plot", "--skip_baseline", "--report_to", "none",
        "--overwrite_output_dir",
    ])  # fmt: skip
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("run.previous-")]
    assert len(aside) == 1 and (aside[0] / "student_ce" / "README.md").is_file()
    assert f"moved to {aside[0]}" in caplog.text
    assert not (out / "student_ce").exists() and "previous run" not in (out / "student_kd" / "README.md").read_text()
    assert not (out / "student_kd" / "training_args.bin").exists()  # the stage dir holds the model that ships
    report = json.loads((out / "distillation_report.json").read_text())
    assert [model["name"] for model in report["models"]] == ["teacher", "student_kd"]

