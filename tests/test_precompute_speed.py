"""The precompute at hardware speed (`hf_kd.teacher.precompute`): length-sorted, batch-padded inference that gives every
example the live teacher's logits in the original order, a measured batch size that is logged, and a cache key
that separates precisions but not batch sizes. A tiny random BERT made here; no network."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from conftest import tiny_bert
from datasets import Dataset, load_from_disk
from transformers import BertForSequenceClassification, BertForTokenClassification, HfArgumentParser

from hf_kd import DistillationConfig
from hf_kd.data import InMemoryDataset
from hf_kd.teacher.precompute import BATCH_SIZE_CANDIDATES, PROBE_BATCHES, add_teacher_logits, trim_padding
from hf_kd.teacher.precompute import add_teacher_logits as add_teacher_logits_from_teacher

VOCAB, MAX_LEN = 50, 40


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: a second thread only waits (12x slower when the machine is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bert(cls=BertForSequenceClassification, num_labels: int = 3):
    return tiny_bert(cls, vocab_size=VOCAB, num_layers=2, num_labels=num_labels, max_position_embeddings=MAX_LEN,
                     pad_token_id=0).eval()  # fmt: skip


def token_rows(n: int = 200, seed: int = 0) -> Dataset:
    """Token sequences of random lengths 2..MAX_LEN in random order (ragged, not padded)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, MAX_LEN + 1, (n,), generator=g).tolist()
    ids = [torch.randint(1, VOCAB, (length,), generator=g).tolist() for length in lengths]
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": [0] * n})


def pad_collator(rows):
    """Right padding to the batch's longest row, as DataCollatorWithPadding does."""
    length = max(len(r["input_ids"]) for r in rows)
    pad = lambda key: torch.stack([torch.nn.functional.pad(torch.as_tensor(r[key]), (0, length - len(r[key]))) for r in rows])
    return {"input_ids": pad("input_ids"), "attention_mask": pad("attention_mask")}


def live_logits(teacher, dataset: Dataset) -> torch.Tensor:
    """What the live teacher gives each example on its own: no padding at all."""
    with torch.no_grad():
        return torch.cat([teacher(input_ids=torch.tensor([ids])).logits for ids in dataset["input_ids"]])


class SeenShapes:
    """The input shapes the real teacher ran on (a forward pre-hook, not a stand-in)."""

    def __init__(self, teacher):
        self.shapes = []
        teacher.register_forward_pre_hook(lambda _, args, kwargs: self.shapes.append(tuple(kwargs["input_ids"].shape)),
                                          with_kwargs=True)

    @property
    def tokens(self) -> int:
        return sum(b * length for b, length in self.shapes)


def test_length_sorted_precompute_equals_the_live_teacher_for_every_example():
    teacher, data = bert(), token_rows()
    seen = SeenShapes(teacher)
    result = add_teacher_logits(data, teacher, batch_size=16, data_collator=pad_collator)
    tokens, lengths = seen.tokens, [length for _, length in seen.shapes]
    torch.testing.assert_close(result.with_format("torch")["teacher_logits"][:], live_logits(teacher, data))
    # Sorted: each batch is padded to about its own length, far fewer tokens than batches in the data's order.
    in_order = sum(len(b) * max(map(len, b)) for b in (data["input_ids"][i : i + 16] for i in range(0, len(data), 16)))
    assert tokens < 0.7 * in_order
    assert lengths == sorted(lengths, reverse=True)  # longest first


def test_pre_padded_tensors_run_at_their_own_length_and_keep_their_order():
    teacher, data = bert(), token_rows(seed=1)
    padded = InMemoryDataset({k: v for k, v in pad_collator(list(data)).items()})  # every row padded to MAX_LEN
    seen = SeenShapes(teacher)
    result = add_teacher_logits(padded, teacher, batch_size=16)
    lengths = [length for _, length in seen.shapes]
    logits = result.columns["teacher_logits"]
    torch.testing.assert_close(logits, live_logits(teacher, data))
    assert not logits.is_inference()  # an ordinary tensor: usable as a training target
    assert sum(length < MAX_LEN for length in lengths) >= len(lengths) - 1  # padding trimmed per batch


def test_token_level_logits_keep_each_rows_length_and_order():
    teacher, data = bert(BertForTokenClassification, num_labels=4), token_rows(60, seed=2)
    result = add_teacher_logits(data, teacher, batch_size=8, data_collator=pad_collator)
    with torch.no_grad():
        for ids, row in zip(data["input_ids"], result.with_format("torch")["teacher_logits"]):
            torch.testing.assert_close(row, teacher(input_ids=torch.tensor([ids])).logits[0])


def test_trim_padding_keeps_left_padding_and_cuts_shared_right_padding():
    right = {"input_ids": torch.tensor([[5, 6, 0, 0], [5, 0, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])}
    assert trim_padding(right)["input_ids"].tolist() == [[5, 6], [5, 0]]
    left = {"input_ids": torch.tensor([[0, 0, 5, 6]]), "attention_mask": torch.tensor([[0, 0, 1, 1]])}
    assert trim_padding(left)["input_ids"].shape == (1, 4)
    # An ensemble member with its own tokenizer, padded to the same length: cut by its own mask only.
    ensemble = {**right, "1_input_ids": torch.tensor([[7, 8, 9, 0], [7, 0, 0, 0]]),
                "1_attention_mask": torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])}  # fmt: skip
    cut = trim_padding(ensemble)
    assert cut["input_ids"].shape == (2, 2) and cut["1_input_ids"].tolist() == [[7, 8, 9], [7, 0, 0]]
    assert cut["1_attention_mask"].shape == (2, 3)


def test_auto_batch_size_of_images_is_timed_per_example(caplog):
    from hf_kd.models import model_from_preset

    torch.manual_seed(0)
    teacher = model_from_preset("mnist-mlp-teacher")
    images = InMemoryDataset({"pixel_values": torch.randn(600, 1, 28, 28), "labels": torch.zeros(600, dtype=torch.long)})
    with caplog.at_level(logging.INFO, logger="hf_kd.teacher.precompute"):
        result = add_teacher_logits(images, teacher, batch_size="auto")
    message = next(r.getMessage() for r in caplog.records if "teacher_batch_size='auto'" in r.getMessage())
    assert re.search(r"\d+: [\d.]+ us/example", message) and "us/token" not in message
    with torch.no_grad():
        expected = teacher(pixel_values=images.columns["pixel_values"]).logits
    torch.testing.assert_close(result.columns["teacher_logits"], expected, rtol=1e-5, atol=1e-5)


def test_auto_batch_size_is_measured_and_logged(caplog):
    teacher, data = bert(), token_rows(1200, seed=3)
    seen = SeenShapes(teacher)
    with caplog.at_level(logging.INFO, logger="hf_kd.teacher.precompute"):
        result = add_teacher_logits(data, teacher, batch_size="auto", data_collator=pad_collator)
    sizes = [b for b, _ in seen.shapes]
    message = next(r.getMessage() for r in caplog.records if "teacher_batch_size='auto'" in r.getMessage())
    chosen = int(message.rsplit("teacher_batch_size=", 1)[1].rstrip("."))
    timed = [int(size) for size in re.findall(r"(\d+): [\d.]+ us/token", message)]
    assert chosen in timed and timed == list(BATCH_SIZE_CANDIDATES["cpu"][: len(timed)]) and len(timed) >= 2
    # One untimed warm-up batch, PROBE_BATCHES timed batches per size, then the chosen size to the end: the probe's
    # batches are part of the pass, nothing is computed twice.
    # (fewer when the data runs out).
    assert sizes[0] == timed[0]
    position = 1
    for size in timed:
        runs = 0
        while runs < PROBE_BATCHES and position < len(sizes) and sizes[position] == size:
            position, runs = position + 1, runs + 1
        assert runs >= 1
    rest = sizes[position:]
    assert all(size == chosen for size in rest[:-1]) and (not rest or 0 < rest[-1] <= chosen)
    assert sum(sizes) == len(data)
    torch.testing.assert_close(result.with_format("torch")["teacher_logits"][:], live_logits(teacher, data))


def test_cache_separates_precisions_but_not_batch_sizes(tmp_path):
    teacher = bert()
    token_rows(seed=4).save_to_disk(tmp_path / "data")
    data = load_from_disk(str(tmp_path / "data"))
    seen = SeenShapes(teacher)
    full = add_teacher_logits(data, teacher, batch_size=16, data_collator=pad_collator)
    calls = len(seen.shapes)
    again = add_teacher_logits(data, teacher, batch_size="auto", data_collator=pad_collator)
    assert len(seen.shapes) == calls and again._fingerprint == full._fingerprint  # the batch size is not in the key
    half = add_teacher_logits(data, teacher, batch_size=16, data_collator=pad_collator, precision="bfloat16")
    assert len(seen.shapes) > calls and half._fingerprint != full._fingerprint  # bf16 never stands in for float32
    # bf16 autocast's tolerance (README, "Speed"): logits within 0.05 + 2% of float32's.
    torch.testing.assert_close(half.with_format("torch")["teacher_logits"][:],
                               full.with_format("torch")["teacher_logits"][:], atol=0.05, rtol=0.02)
    with pytest.raises(ValueError, match="precision must be one of"):
        add_teacher_logits(data, teacher, precision="int8")
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, 'auto' or None"):
        add_teacher_logits(data, teacher, batch_size=0)
    assert add_teacher_logits_from_teacher is add_teacher_logits  # still importable from hf_kd.teacher.loading


def test_teacher_batch_size_setting(tmp_path):
    assert DistillationConfig(output_dir=str(tmp_path)).teacher_batch_size == "auto"
    assert DistillationConfig(output_dir=str(tmp_path), teacher_batch_size=None).teacher_batch_size == "auto"
    parser = HfArgumentParser(DistillationConfig)
    for given, expected in (("auto", "auto"), ("64", 64)):
        (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--teacher_batch_size", given])
        assert args.teacher_batch_size == expected
    for wrong in (0, "big", 2.5, True):
        with pytest.raises(ValueError, match="teacher_batch_size must be an integer >= 1 or 'auto'"):
            DistillationConfig(output_dir=str(tmp_path), teacher_batch_size=wrong)
