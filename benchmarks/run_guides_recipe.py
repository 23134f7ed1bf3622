#!/usr/bin/env python
"""The transformers guide's image distillation recipe (a ViT teacher, a MobileNetV2 student, each with its own image
processor) run end to end through `examples/distill_image_classification.py` at the real architectures' size.

Where the Hub answers, the guide's models and data are one command (docs/images-at-scale.md). Here (no Hub) the same
architectures are built from their configs with random weights: ViT-Small (patch 16, 384 wide, 12 layers, the ViT
processor: mean/std 0.5, 224) and MobileNetV2 1.0 (its processor: ImageNet mean/std, resize 256, crop 224), on
generated 224x224 JPEGs (`bench_data_path`'s), so what this shows is that the whole run works at this size (both
processors, stored teacher logits, the data on the fly) and what it costs, not accuracy.

    python benchmarks/run_guides_recipe.py --workdir /tmp/guides_recipe --train_images 256 --test_images 64
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_data_path import build_models, image_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "distill_image_classification.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/guides_recipe"))
    parser.add_argument("--train_images", type=int, default=256)
    parser.add_argument("--test_images", type=int, default=64)
    parser.add_argument("extra", nargs="*", help="more flags for the example, after --, e.g. -- --bf16 true")
    cli = parser.parse_args()
    from datasets import DatasetDict

    cli.workdir.mkdir(parents=True, exist_ok=True)
    total = cli.train_images + cli.test_images
    (cli.workdir / "images_total").write_text(str(total))
    teacher_dir, student_dir = build_models(cli.workdir)
    images = image_dataset(total, cli.workdir)
    data_dir = cli.workdir / "data"
    splits = {"train": images.select(range(cli.train_images)), "test": images.select(range(cli.train_images, total))}
    DatasetDict(splits).save_to_disk(str(data_dir))
    command = [
        sys.executable, str(EXAMPLE), "--dataset_name", str(data_dir), "--teacher_model_name_or_path",
        str(teacher_dir), "--student_model_name_or_path", str(student_dir), "--data_path", "on_the_fly",
        "--precompute_teacher_logits", "true", "--num_train_epochs", "1", "--per_device_train_batch_size", "16",
        "--output_dir", str(cli.workdir / "run"), "--overwrite_output_dir", "--latency_examples", "8",
        "--report_to", "none", "--save_strategy", "no", *cli.extra,
    ]  # fmt: skip
    print(" ".join(command[1:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    report = json.loads((cli.workdir / "run" / "distillation_report.json").read_text())
    print(f"wall time {time.perf_counter() - start:.0f} s; models: " + ", ".join(
        f"{m['name']} ({m['parameters']:,} parameters, {m['train_time_s'] or 0:.0f} s training)"
        for m in report["models"]))  # fmt: skip


if __name__ == "__main__":
    main()
