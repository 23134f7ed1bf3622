"""The statistics of studies/harness.py: the paired standard error against its formula, the gain/direction verdict,
the validation split carved from the training split, and the written table."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))

from harness import (  # noqa: E402
    Study,
    carve_validation,
    choose_on_validation,
    mean_std,
    paired_difference,
    seeded,
    verdict,
    weights_fingerprint,
)


def test_paired_difference_matches_its_formula():
    method = {0: 0.90, 1: 0.92, 2: 0.91}
    baseline = {0: 0.88, 1: 0.91, 2: 0.88}
    d = [0.02, 0.01, 0.03]  # per-seed differences
    mean = sum(d) / 3
    sample_std = math.sqrt(sum((x - mean) ** 2 for x in d) / (3 - 1))
    result = paired_difference(method, baseline)
    assert result["mean"] == pytest.approx(mean)
    assert result["se"] == pytest.approx(sample_std / math.sqrt(3))
    assert result["seeds"] == [0, 1, 2]


def test_paired_difference_uses_shared_seeds_only():
    result = paired_difference({0: 1.0, 1: 2.0, 5: 9.0}, {0: 0.5, 1: 1.0, 7: 0.0})
    assert result["seeds"] == [0, 1]
    assert result["mean"] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="share no seed"):
        paired_difference({0: 1.0}, {1: 1.0})
    assert math.isnan(paired_difference({0: 1.0}, {0: 0.5})["se"])


def test_pairing_removes_the_seed_effect():
    # Seeds move both methods together: the unpaired spread is large, the paired difference exact.
    baseline = {0: 0.80, 1: 0.85, 2: 0.90}
    method = {seed: value + 0.01 for seed, value in baseline.items()}
    result = paired_difference(method, baseline)
    assert result["mean"] == pytest.approx(0.01)
    assert result["se"] == pytest.approx(0.0, abs=1e-12)
    assert mean_std(baseline.values())[1] == pytest.approx(0.05)


def test_verdict_is_a_gain_only_beyond_two_standard_errors():
    assert verdict(0.021, 0.01) == "gain"
    assert verdict(-0.021, 0.01) == "loss"
    assert verdict(0.02, 0.01) == "a direction"  # exactly 2 SE is not beyond
    assert verdict(0.019, 0.01) == "a direction"
    assert verdict(-0.005, 0.01) == "a direction"
    assert verdict(0.5, math.nan) == "a direction"  # one seed: no standard error, no claim


def test_mean_std_is_the_sample_standard_deviation():
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3))
    assert mean_std([0.7]) == (0.7, 0.0)


def test_validation_is_carved_from_training_disjoint_and_reproducible():
    train, validation = carve_validation(100, 20, seed=3)
    assert len(train) == 80 and len(validation) == 20
    assert set(train.tolist()).isdisjoint(validation.tolist())
    assert set(train.tolist()) | set(validation.tolist()) == set(range(100))
    again = carve_validation(100, 20, seed=3)
    assert torch.equal(again[1], validation)
    with pytest.raises(ValueError, match="validation size"):
        carve_validation(10, 10)


def test_seeded_students_start_from_the_same_weights():
    def build():
        return torch.nn.Linear(4, 3)

    assert weights_fingerprint(seeded(0, build)) == weights_fingerprint(seeded(0, build))
    assert weights_fingerprint(seeded(0, build)) != weights_fingerprint(seeded(1, build))


def test_choose_on_validation_takes_the_best_and_keeps_every_score():
    best, tried = choose_on_validation([{"t": 1}, {"t": 2}, {"t": 3}], lambda s: {1: 0.5, 2: 0.7, 3: 0.7}[s["t"]])
    assert best == {"t": 2}  # the first of a tie
    assert [score for _, score in tried] == [0.5, 0.7, 0.7]


def test_study_writes_its_table_with_command_seeds_sizes_and_machine(tmp_path):
    study = Study("toy", "CE only", [0, 1, 2], {"train": 10, "test": 5}, tmp_path, stem="toy")
    for seed, (ce, kd) in enumerate([(0.80, 0.83), (0.82, 0.84), (0.81, 0.85)]):
        study.record("CE only", seed, ce)
        study.record("logit KD", seed, kd)
    text = (tmp_path / "toy.md").read_text()
    assert text.count("Command: `python ") == 1
    assert "| logit KD | 84.00 ± 1.00 | +3.00 ± 0.58 | gain | 83.00, 84.00, 85.00 |" in text
    assert "| CE only | 81.00 ± 1.00 | (baseline) |" in text
    data = json.loads((tmp_path / "toy.json").read_text())
    assert data["seeds"] == [0, 1, 2] and data["sizes"] == {"train": 10, "test": 5}
    assert data["machine"]["nproc"] >= 1 and data["machine"]["cpu"]
    assert data["wall_seconds"] >= 0 and data["command"].startswith("python ")
    kd = next(row for row in data["rows"] if row["method"] == "logit KD")
    assert kd["verdict"] == "gain" and kd["se"] == pytest.approx(math.sqrt(1 / 3) / 100)
