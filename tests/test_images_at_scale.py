"""Images at scale: Hub architectures with their own image processors (built from local configs, random weights),
data decoded per batch (on the fly, streamed) with teacher logits stored on disk, and a pretrained student whose head
is resized. Nothing is downloaded."""

from __future__ import annotations

import json
import os

import pytest
import torch
from datasets import Dataset, IterableDataset
from test_examples_image import LOCAL_ACCURACY, make_image_dataset, run_example
from transformers import (
    AutoModelForImageClassification,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
    MobileNetV2ImageProcessor,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.data import (
    ImageTransform,
    InMemoryDataset,
    OneModelCollator,
    choose_data_path,
    estimate_decoded_bytes,
)
from hf_kd.data.image import preprocess_image_dataset
from hf_kd.runs.arguments import DataArguments
from hf_kd.runs.image_data import OnTheFlyData, with_teacher_outputs
from hf_kd.runs.recipes import build_image_model, load_image_data, teacher_processors
from hf_kd.teacher.stored import store_teacher_logits, with_stored_logits

NUM_CLASSES = 4
LABELS = {f"class_{i}": i for i in range(NUM_CLASSES)}


def vit_teacher(path, seed: int = 0):
    """A tiny ViT (the guide's teacher architecture) with a ViT processor: 32x32, mean 0.5, std 0.5."""
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=NUM_CLASSES, id2label={i: n for n, i in LABELS.items()}, label2id=LABELS,
    )  # fmt: skip
    ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def mobilenet_student(path, num_labels: int = 7, seed: int = 1):
    """A tiny MobileNetV2 (the guide's student) with its own processor: resize to 28, crop 24, ImageNet mean/std;
    saved with `num_labels` classes (another task), so loading it for this one resizes its head."""
    torch.manual_seed(seed)
    config = MobileNetV2Config(image_size=24, depth_multiplier=0.35, num_labels=num_labels)
    MobileNetV2ForImageClassification(config).save_pretrained(path)
    MobileNetV2ImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 24, "width": 24}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub_models")
    return vit_teacher(root / "vit"), mobilenet_student(root / "mobilenet")


@pytest.fixture(scope="module")
def images():
    return make_image_dataset(48, 32, "RGB", num_classes=NUM_CLASSES, seed=3)


def test_each_model_gets_its_own_processors_output(models, images):
    """The student's and the teacher's pixel values are each their own processor's output for the same image, in
    memory and on the fly."""
    teacher_dir, student_dir = models
    student_processor = MobileNetV2ImageProcessor.from_pretrained(student_dir)
    own = teacher_processors([str(teacher_dir)], student_processor)
    assert list(own) == [None]
    rows = images.select(range(5))
    expected_student = student_processor([im.convert("RGB") for im in rows["image"]], return_tensors="pt")
    expected_teacher = own[None](list(rows["image"]), return_tensors="pt")
    assert expected_student["pixel_values"].shape[-2:] == (24, 24)
    assert expected_teacher["pixel_values"].shape[-2:] == (32, 32)

    on_the_fly = rows.with_transform(ImageTransform(student_processor, "image", "label", own))[:]
    in_memory = InMemoryDataset.from_dataset(
        preprocess_image_dataset(rows, student_processor, "image", "label", teacher_processors=own)
    )[range(5)]
    for batch in (on_the_fly, in_memory):
        torch.testing.assert_close(batch["pixel_values"], expected_student["pixel_values"])
        torch.testing.assert_close(batch["teacher_pixel_values"], expected_teacher["pixel_values"])
        assert batch["labels"].tolist() == rows["label"]
    # One model's view: the teacher measured alone reads its own pixel values as `pixel_values`.
    alone = OneModelCollator(lambda rows: rows, member=None)(in_memory)
    torch.testing.assert_close(alone["pixel_values"], expected_teacher["pixel_values"])


def test_the_data_path_is_chosen_by_decoded_size(images, models):
    processor = MobileNetV2ImageProcessor.from_pretrained(models[1])
    size = estimate_decoded_bytes(images, ImageTransform(processor, "image", "label"))
    assert size == len(images) * (3 * 24 * 24 * 4 + 8)  # float32 pixels + an int64 label per image
    assert choose_data_path("auto", size, limit_bytes=size)[0] == "memory"
    assert choose_data_path("auto", size, limit_bytes=size - 1)[0] == "on_the_fly"
    assert choose_data_path("on_the_fly", size, limit_bytes=10 * size)[0] == "on_the_fly"
    with pytest.raises(ValueError, match="data_path"):
        choose_data_path("disk", size)


def test_load_image_data_follows_data_path(tmp_path, images, models):
    path = tmp_path / "images"
    images.train_test_split(test_size=8, seed=0).save_to_disk(str(path))
    processor = MobileNetV2ImageProcessor.from_pretrained(models[1])
    args = {"dataset_name": str(path), "eval_split": "test"}
    memory, names = load_image_data(DataArguments(**args, in_memory_limit_gb=1.0), processor)
    on_the_fly, _ = load_image_data(DataArguments(**args, in_memory_limit_gb=0.0), processor)
    assert isinstance(memory.train_dataset, InMemoryDataset) and isinstance(on_the_fly, OnTheFlyData)
    assert names == list(LABELS)
    first = on_the_fly.data_collator([on_the_fly.train_dataset[i] for i in range(3)])
    torch.testing.assert_close(first["pixel_values"], memory.train_dataset[[0, 1, 2]]["pixel_values"])


def _distil(train_dataset, teacher, student_dir, output_dir, max_steps=18):
    student = build_image_model(str(student_dir), list(LABELS), seed=0, pretrained=True)
    config = DistillationConfig(
        output_dir=str(output_dir), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=3e-3,
        report_to="none", save_strategy="no", seed=0, temperature=2.0, alpha=0.5, remove_unused_columns=False,
        train_sampling_strategy="sequential", precompute_teacher_logits=False, use_cpu=True, logging_steps=1,
        dataloader_num_workers=0,
    )  # fmt: skip
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config, train_dataset=train_dataset)
    trainer.train()
    return trainer.model, trainer.state.log_history


def test_streamed_data_with_stored_logits_trains_the_same_student(tmp_path, images, models):
    """The same examples in the same order: in memory with logits computed by the trainer, and streamed (an
    IterableDataset decoded per batch) with the teacher's logits stored on disk and read alongside: the same student,
    to float rounding."""
    teacher_dir, student_dir = models
    teacher = AutoModelForImageClassification.from_pretrained(teacher_dir).eval()
    student_processor = MobileNetV2ImageProcessor.from_pretrained(student_dir)
    own = teacher_processors([str(teacher_dir)], student_processor)
    transform = ImageTransform(student_processor, "image", "label", own)

    in_memory = InMemoryDataset.from_dataset(
        preprocess_image_dataset(images, student_processor, "image", "label", teacher_processors=own)
    )
    logits_memory = torch.stack([teacher(pixel_values=in_memory.columns["teacher_pixel_values"]).logits.detach()])[0]
    reference, _ = _distil(in_memory.with_column("teacher_logits", logits_memory), teacher, student_dir,
                           tmp_path / "memory")  # fmt: skip

    stream = images.to_iterable_dataset(num_shards=1)
    stored = store_teacher_logits(stream, teacher, transform, batch_size=16, cache_dir=tmp_path / "cache",
                                  source_key=["generated", 48])  # fmt: skip
    assert len(stored) == len(images) and any((tmp_path / "cache").rglob("shard-00000.arrow"))
    torch.testing.assert_close(torch.tensor(stored["teacher_logits"]), logits_memory, rtol=1e-4, atol=1e-5)
    streamed = with_stored_logits(stream, stored, transform)
    assert isinstance(streamed, IterableDataset)
    student, history = _distil(streamed, None, student_dir, tmp_path / "streamed")

    for (name, a), b in zip(reference.state_dict().items(), student.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert sum(losses[-6:]) < sum(losses[:6])  # it trained: the same 6 batches, in the first and the last epoch


def test_stored_logits_are_reused_and_refused_under_augmentation(tmp_path, images, models, caplog):
    teacher_dir, student_dir = models
    teacher = AutoModelForImageClassification.from_pretrained(teacher_dir).eval()
    processor = MobileNetV2ImageProcessor.from_pretrained(student_dir)
    transform = ImageTransform(processor, "image", "label", teacher_processors([str(teacher_dir)], processor))
    first = store_teacher_logits(images, teacher, transform, batch_size=16, cache_dir=tmp_path)
    again = store_teacher_logits(images, teacher, transform, batch_size=16, cache_dir=tmp_path)
    assert len(list((tmp_path / "hf_kd_teacher_logits").iterdir())) == 1  # the second call read the first's shards
    assert first["teacher_logits"] == again["teacher_logits"]
    joined = with_stored_logits(images, first, transform)
    assert joined[0]["teacher_logits"].shape == (NUM_CLASSES,)

    flipping = ImageTransform(processor, "image", "label", random_flip=True, seed=0)
    with pytest.raises(ValueError, match="augmented on the fly"):
        store_teacher_logits(images, teacher, flipping, cache_dir=tmp_path)
    data = OnTheFlyData(images.with_transform(flipping), None, None, processor, raw_train=images, transform=flipping)
    config = DistillationConfig(output_dir=str(tmp_path / "out"), report_to="none", precompute_teacher_logits=True)
    assert with_teacher_outputs(data, teacher, config) is data
    assert config.precompute_teacher_logits is False  # the teacher runs live


def test_pretrained_student_is_loaded_with_its_head_resized(models):
    _, student_dir = models
    saved = MobileNetV2ForImageClassification.from_pretrained(student_dir)
    assert saved.config.num_labels == 7
    student = build_image_model(str(student_dir), list(LABELS), seed=0, pretrained=True)
    assert student.config.num_labels == NUM_CLASSES and student.config.id2label[1] == "class_1"
    assert student.classifier.out_features == NUM_CLASSES
    loaded, original = student.state_dict(), saved.state_dict()
    body = [name for name in original if not name.startswith("classifier.")]
    assert body and all(torch.equal(loaded[name], original[name]) for name in body)


@pytest.mark.slow
def test_the_guides_recipe_vit_to_mobilenet_through_the_example(tmp_path, images, models):
    """ViT teacher -> pretrained MobileNetV2 student, each with its own processor, through the example script with
    --teacher_model_name_or_path / --student_model_name_or_path, on the fly (forced) with stored teacher logits."""
    teacher_dir, student_dir = models
    data = tmp_path / "data"
    images.train_test_split(test_size=16, seed=0).save_to_disk(str(data))
    output = tmp_path / "run"
    result = run_example(
        "distill_image_classification.py",
        "--dataset_name", str(data), "--teacher_model_name_or_path", str(teacher_dir),
        "--student_model_name_or_path", str(student_dir), "--data_path", "on_the_fly", "--output_dir", str(output),
        "--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--learning_rate", "1e-2",
        "--metric_name_or_path", LOCAL_ACCURACY, "--report_to", "none", "--save_strategy", "no",
        "--latency_examples", "4", "--plot", "false", "--dataloader_num_workers", "0", "--use_cpu",
        "--precompute_teacher_logits", "true",
        env={"OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert "[hf_kd] Image data: on the fly (--data_path on_the_fly" in result.stdout
    report = json.loads((output / "distillation_report.json").read_text())
    assert [m["name"] for m in report["models"]] == ["teacher", "student_ce", "student_kd"]
    assert report["settings"]["teacher_logits"] == "precomputed"
    assert any((tmp_path / "cache" / "hf_kd_teacher_logits").iterdir())
    kd = AutoModelForImageClassification.from_pretrained(output / "student_kd")
    assert type(kd).__name__ == "MobileNetV2ForImageClassification" and kd.config.num_labels == NUM_CLASSES
    assert os.path.isfile(output / "teacher" / "preprocessor_config.json")
    assert json.loads((output / "teacher" / "preprocessor_config.json").read_text())["image_mean"] == [0.5] * 3


def test_streaming_reads_a_local_parquet_dataset_as_a_stream(tmp_path, images, models):
    """--streaming: the training split a stream decoded per batch, the test split downloaded (its first N)."""
    root = tmp_path / "parquet"
    (root / "data").mkdir(parents=True)
    images.select(range(32)).to_parquet(str(root / "data" / "train-00000-of-00001.parquet"))
    images.select(range(32, 48)).to_parquet(str(root / "data" / "test-00000-of-00001.parquet"))
    processor = MobileNetV2ImageProcessor.from_pretrained(models[1])
    args = DataArguments(dataset_name=str(root), streaming=True, max_train_samples=20, max_eval_samples=8)
    data, names = load_image_data(args, processor, teacher_processors([str(models[0])], processor))
    assert isinstance(data.train_dataset, IterableDataset) and isinstance(data.eval_dataset, Dataset)
    assert names == list(LABELS) and len(data.eval_dataset) == 8
    rows = list(data.train_dataset)
    assert len(rows) == 20
    assert rows[0]["pixel_values"].shape == (3, 24, 24) and rows[0]["teacher_pixel_values"].shape == (3, 32, 32)
    assert [int(row["labels"]) for row in rows] == images["label"][:20]
    with pytest.raises(ValueError, match="streaming"):
        DataArguments(dataset_name=str(root), streaming=True, data_path="memory")


def test_ensemble_members_read_their_own_pixel_values_and_logits_meet_only_fixed_transforms(tmp_path, images, models):
    from hf_kd.teacher.precompute import check_fixed_inputs

    teacher_dir, student_dir = models
    processor = MobileNetV2ImageProcessor.from_pretrained(student_dir)
    own = teacher_processors([str(teacher_dir), str(student_dir)], processor)
    assert list(own) == [0]  # member 1 shares the student's processor: it reads the student's pixel values
    batch = ImageTransform(processor, "image", "label", own)(images[:3])
    assert sorted(batch) == ["labels", "pixel_values", "teacher_0_pixel_values"]
    member_0, member_1 = (OneModelCollator(lambda rows: rows, member=k)(batch) for k in (0, 1))
    torch.testing.assert_close(member_0["pixel_values"], batch["teacher_0_pixel_values"])
    torch.testing.assert_close(member_1["pixel_values"], batch["pixel_values"])

    logits = Dataset.from_dict({"teacher_logits": [[0.0] * NUM_CLASSES] * len(images)})
    fixed = with_stored_logits(images, logits, ImageTransform(processor, "image", "label"))
    check_fixed_inputs(fixed, None, carries_logits=True)  # a deterministic decode: the logits match its inputs
    flipping = with_stored_logits(images, logits, ImageTransform(processor, "image", "label", random_flip=True))
    with pytest.raises(ValueError, match="on-the-fly transform"):
        check_fixed_inputs(flipping, None, carries_logits=True)
