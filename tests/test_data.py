"""hf_kd.data: loading from any source, column detection, one-time preprocessing, in-memory serving, shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, Image
from test_examples_image import make_image_dataset

from hf_kd.data import (
    InMemoryDataset,
    RandomShiftCollator,
    collate_batches,
    detect_image_columns,
    label_names,
    load_image_classification_dataset,
    load_raw_dataset,
)
from hf_kd.models import image_processor_for_preset


def test_detect_columns_by_feature_type_then_name():
    dataset = make_image_dataset(4, 28, "L").rename_columns({"image": "picture_data", "label": "digit"})
    assert detect_image_columns(dataset) == ("picture_data", "digit")  # Image and ClassLabel features
    plain = Dataset.from_dict({"img": ["a", "b"], "label": [0, 1], "other": [1, 2]})
    assert detect_image_columns(plain) == ("img", "label")  # the names Hub datasets use
    assert detect_image_columns(plain, image_column="other") == ("other", "label")


def test_detect_columns_errors_list_the_columns():
    dataset = Dataset.from_dict({"photo": ["a"], "y": [0]})
    with pytest.raises(ValueError, match=r"pass image_column.*Columns: photo \(string\), y \(int64\)"):
        detect_image_columns(dataset)
    with pytest.raises(ValueError, match=r"label_column='nope' is not a column.*photo \(string\)"):
        detect_image_columns(dataset, image_column="photo", label_column="nope")


def test_label_names_from_classlabel_or_integers():
    assert label_names(make_image_dataset(4, 28, "L"), "label")[:2] == ["class_0", "class_1"]
    assert label_names(Dataset.from_dict({"label": [1, 0, 2]}), "label") == ["0", "1", "2"]
    # One reading of class names for every modality: strings are names (sorted), encoded by the preprocessing.
    assert label_names(Dataset.from_dict({"label": ["dog", "cat", "dog"]}), "label") == ["cat", "dog"]
    with pytest.raises(ValueError, match="class_encode_column"):
        label_names(Dataset.from_dict({"label": [1, 5]}), "label")


def test_load_raw_dataset_sources(tmp_path):
    dataset = make_image_dataset(8, 28, "L")
    assert list(load_raw_dataset(dataset)) == ["train"]
    DatasetDict({"train": dataset, "test": dataset}).save_to_disk(tmp_path / "saved")
    assert sorted(load_raw_dataset(str(tmp_path / "saved"))) == ["test", "train"]
    (tmp_path / "parquet").mkdir()
    dataset.to_parquet(str(tmp_path / "parquet" / "train.parquet"))
    loaded = load_raw_dataset(str(tmp_path / "parquet"), cache_dir=str(tmp_path / "cache"))
    assert len(loaded["train"]) == 8 and isinstance(loaded["train"].features["image"], Image)
    with pytest.raises(ValueError, match="dataset_name must be"):
        load_raw_dataset(3)


def test_preprocess_once_to_fixed_shape_tensors(tmp_path):
    raw = DatasetDict(
        {"train": make_image_dataset(32, 28, "L", seed=0), "test": make_image_dataset(8, 28, "L", seed=1)}
    )
    raw.save_to_disk(tmp_path / "saved")
    processor = image_processor_for_preset("mnist-mlp-student")
    data, names = load_image_classification_dataset(str(tmp_path / "saved"), processor, max_train_samples=16)
    assert names[0] == "class_0" and len(names) == 10
    assert len(data["train"]) == 16 and len(data["eval"]) == 8
    example = data["train"][0]
    assert example["pixel_values"].shape == (1, 28, 28) and example["pixel_values"].dtype == torch.float32
    assert example["labels"].dtype == torch.int64
    # Normalised with the processor's statistics: the same numbers as calling it directly.
    direct = processor(raw["train"][0]["image"], return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(example["pixel_values"], direct)
    # Cached by fingerprint: a second load reads the same cache file instead of decoding again.
    again, _ = load_image_classification_dataset(str(tmp_path / "saved"), processor, max_train_samples=16)
    assert again["train"].cache_files == data["train"].cache_files and data["train"].cache_files

    with pytest.raises(ValueError, match=r"eval_split='validation' is not a split.*\['test', 'train'\]"):
        load_image_classification_dataset(str(tmp_path / "saved"), processor, eval_split="validation")


def test_in_memory_dataset_serves_batches():
    data = Dataset.from_dict(
        {"pixel_values": np.arange(24, dtype=np.float32).reshape(6, 1, 2, 2), "labels": list(range(6))}
    )
    memory = InMemoryDataset.from_dataset(data)
    assert len(memory) == 6 and memory.column_names == ["pixel_values", "labels"]
    # A whole batch in one index per column, passed through by collate_batches.
    batch = memory.__getitems__([4, 1])
    assert batch["labels"].tolist() == [4, 1]
    torch.testing.assert_close(batch["pixel_values"][0], torch.arange(16, 20, dtype=torch.float32).reshape(1, 2, 2))
    loader = torch.utils.data.DataLoader(memory, batch_size=4, shuffle=True, collate_fn=collate_batches)
    first = next(iter(loader))
    assert first["pixel_values"].shape == (4, 1, 2, 2) and first["labels"].shape == (4,)
    # Row by row (no __getitems__), the fallback collator stacks the same values.
    rows = collate_batches([memory[4], memory[1]])
    torch.testing.assert_close(rows["pixel_values"], batch["pixel_values"])
    with pytest.raises(ValueError, match="same length"):
        InMemoryDataset({"a": torch.zeros(2), "b": torch.zeros(3)})


def test_random_shift_translates_with_fill():
    image = torch.arange(1, 26, dtype=torch.float32).reshape(1, 1, 5, 5)
    collator = RandomShiftCollator(max_shift=1, fill=-1.0, seed=0)
    shifted = collator.shift(image.repeat(64, 1, 1, 1))
    seen = set()
    for out in shifted:
        # Every output is the image moved by (dy, dx) in {-1, 0, 1}^2, the uncovered border filled with -1.
        matches = [
            (dy, dx)
            for dy in (-1, 0, 1)
            for dx in (-1, 0, 1)
            if torch.equal(out, _translate(image[0], dy, dx, fill=-1.0))
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 5  # the shifts vary
    batch = collator([{"pixel_values": image[0], "labels": torch.tensor(3)}] * 2)
    assert batch["pixel_values"].shape == (2, 1, 5, 5) and batch["labels"].tolist() == [3, 3]
    assert torch.equal(RandomShiftCollator(0).shift(image), image)
    with pytest.raises(ValueError, match="max_shift"):
        RandomShiftCollator(-1)


def _translate(image, dy, dx, fill):
    out = torch.full_like(image, fill)
    h, w = image.shape[-2:]
    # out[y, x] = image[y + dy, x + dx] where inside
    ys, xs = slice(max(0, -dy), min(h, h - dy)), slice(max(0, -dx), min(w, w - dx))
    ys_in, xs_in = slice(max(0, dy), min(h, h + dy)), slice(max(0, dx), min(w, w + dx))
    out[..., ys, xs] = image[..., ys_in, xs_in]
    return out
