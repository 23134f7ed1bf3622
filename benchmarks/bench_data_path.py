"""The two image data paths against dataset size: peak RSS and distillation examples/s, in memory and on the fly.

Generated 224x224 RGB JPEGs (a smooth gradient and a coloured square, ~5 KB each: `Dataset.from_generator`, written
once to --workdir), a real Hub architecture pair built from configs with random weights (architecture and speed,
not accuracy): a ViT-Small teacher (patch 16, 384 wide, 12 layers: the transformers KD guide's ViT family) with
its ViT processor (mean 0.5) and a MobileNetV2 1.0 student with its own processor (ImageNet mean/std, resize 256 and
crop 224): each model gets its own pixel values.

Each configuration runs in a fresh subprocess, through the examples' data path (`hf_kd.runs.recipes.load_image_data`
with `--data_path memory` or `on_the_fly`), then a `DistillationTrainer` for --steps steps (after --warmup steps):

  memory       every image decoded and normalised once (both models' pixel values, `Dataset.map`), held as tensors
  on_the_fly   decoded per batch in --workers DataLoader workers (`with_transform`), teacher live
  stored       on the fly, the teacher's logits stored once on disk (teacher/stored.py) and read alongside: the
               student trains without the teacher, decoding its own pixel values only (the store's time per example
               is reported separately)
  memory_stored  in memory, the teacher's logits precomputed by the trainer (`precompute_teacher_logits`): the
               in-memory counterpart of `stored`, for the student-only throughput

The images are generated once at the largest size and each configuration takes its first N (`select`: an index
mapping over the same memory-mapped Arrow file).

Peak RSS is `resource.getrusage` of the process (main) and the largest of its DataLoader workers (children, which
are counted separately by the kernel). At sizes the steps do not cover, the dataset is built at that size (the
Arrow file memory-mapped, the sampler over all of it) and only --steps batches are trained: what grows with the size
in memory is what a size costs before training starts.

    nice -n 19 python benchmarks/bench_data_path.py --workdir /tmp/bench_data_path > bench_data_path.md
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE = 224


def jpeg(index: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(index)
    ramp = np.linspace(0, 1, SIZE, dtype=np.float32)
    base = rng.uniform(40, 200, 3).astype(np.float32)
    pixels = (base[None, None, :] * (0.5 + 0.5 * ramp[:, None, None] * ramp[None, :, None])).astype(np.uint8)
    top, left = rng.integers(0, SIZE - 48, 2)
    pixels[top : top + 48, left : left + 48] = rng.integers(0, 255, 3, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _rows(num_examples: int):
    for index in range(num_examples):
        yield {"image": {"bytes": jpeg(index), "path": None}, "label": index % 10}


def image_dataset(num_examples: int, workdir: Path):
    """The first `num_examples` generated images (written once, as JPEG bytes, under `workdir`, at the size
    recorded there by the parent)."""
    total = int((workdir / "images_total").read_text()) if (workdir / "images_total").is_file() else num_examples
    return _generated(total, workdir).select(range(num_examples))


def _generated(num_examples: int, workdir: Path):
    from datasets import ClassLabel, Dataset, Features, Image

    features = Features({"image": Image(), "label": ClassLabel(names=[f"class_{i}" for i in range(10)])})
    return Dataset.from_generator(
        _rows, gen_kwargs={"num_examples": num_examples}, features=features, cache_dir=str(workdir / "images")
    )


def build_models(workdir: Path):
    """A ViT-Small teacher and a MobileNetV2 student, random weights, saved with their processors."""
    import torch
    from transformers import (
        MobileNetV2Config,
        MobileNetV2ForImageClassification,
        MobileNetV2ImageProcessor,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    labels = {f"class_{i}": i for i in range(10)}
    teacher_dir, student_dir = workdir / "vit-small", workdir / "mobilenet-v2"
    if not teacher_dir.is_dir():
        torch.manual_seed(0)
        config = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                           id2label={i: n for n, i in labels.items()}, label2id=labels)  # fmt: skip
        ViTForImageClassification(config).save_pretrained(teacher_dir)
        ViTImageProcessor().save_pretrained(teacher_dir)
    if not student_dir.is_dir():
        MobileNetV2ForImageClassification(MobileNetV2Config(num_labels=10)).save_pretrained(student_dir)
        MobileNetV2ImageProcessor().save_pretrained(student_dir)
    return teacher_dir, student_dir


def child(path: str, num_examples: int, workdir: Path, steps: int, warmup: int, workers: int, batch: int) -> dict:
    """One configuration, in this (fresh) process."""
    import datasets
    import torch
    from datasets import DatasetDict

    from hf_kd import DistillationConfig, DistillationTrainer
    from hf_kd.runs.arguments import DataArguments
    from hf_kd.runs.image_data import with_teacher_outputs
    from hf_kd.runs.recipes import (
        build_image_model,
        image_processor_for,
        load_image_data,
        load_image_teacher,
        teacher_processors,
    )

    datasets.disable_caching()  # a first run: the in-memory path decodes (no cache from an earlier configuration)
    torch.set_num_threads(1)
    teacher_dir, student_dir = build_models(workdir)
    images = image_dataset(num_examples, workdir)
    raw = DatasetDict({"train": images, "test": images.select(range(min(64, num_examples)))})
    processor = image_processor_for(str(student_dir))
    own = teacher_processors([str(teacher_dir)], processor)
    start = time.perf_counter()
    data, names = load_image_data(
        DataArguments(dataset_name=raw, data_path="memory" if path.startswith("memory") else "on_the_fly"), processor,
        own,
    )
    prepare_s = time.perf_counter() - start
    student = build_image_model(str(student_dir), names, 0, pretrained=True)
    teacher = load_image_teacher(str(teacher_dir), student).eval()
    config = DistillationConfig(
        output_dir=tempfile.mkdtemp(), max_steps=warmup + steps, per_device_train_batch_size=batch,
        dataloader_num_workers=0 if path.startswith("memory") else workers, report_to="none", save_strategy="no",
        remove_unused_columns=False, precompute_teacher_logits=path.endswith("stored"), use_cpu=True,
        logging_strategy="no", disable_tqdm=True, dataloader_persistent_workers=False,
    )  # fmt: skip
    store_s = 0.0
    if path == "stored":
        start = time.perf_counter()
        data = with_teacher_outputs(data, teacher, config)
        store_s = time.perf_counter() - start
    step_times = []

    class Clock(__import__("transformers").TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            step_times.append(time.perf_counter())

        def on_train_end(self, *args, **kwargs):
            step_times.append(time.perf_counter())

    start_trainer = time.perf_counter()
    trainer = DistillationTrainer(
        model=student, teacher_model=None if path == "stored" else teacher, args=config,
        train_dataset=data.train_dataset, data_collator=data.data_collator, callbacks=[Clock()],
    )  # fmt: skip
    if path == "memory_stored":  # the trainer precomputed the logits in its constructor: part of preparing
        prepare_s += time.perf_counter() - start_trainer
    trainer.train()
    timed = step_times[-1] - step_times[warmup]  # from the first timed step's start to the end
    main = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    workers_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    return {
        "path": path, "examples": num_examples, "workers": 0 if path.startswith("memory") else workers,
        "peak_rss_gb": round(main, 2), "worker_peak_rss_gb": round(workers_peak, 2),
        "examples_per_s": round(steps * batch / timed, 2), "prepare_s": round(prepare_s, 1),
        "store_s_per_example": round(store_s / num_examples, 4) if store_s else None,
    }  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench_data_path")
    parser.add_argument("--memory_sizes", type=int, nargs="*", default=[250, 500, 1000])
    parser.add_argument("--on_the_fly_sizes", type=int, nargs="*", default=[1000, 10000, 100000])
    parser.add_argument("--stored_sizes", type=int, nargs="*", default=[256])
    parser.add_argument("--memory_stored_sizes", type=int, nargs="*", default=[256])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--child", nargs=2, metavar=("PATH", "N"), help=argparse.SUPPRESS)
    cli = parser.parse_args()
    cli.workdir.mkdir(parents=True, exist_ok=True)
    if cli.child:
        result = child(cli.child[0], int(cli.child[1]), cli.workdir, cli.steps, cli.warmup, cli.workers, cli.batch)
        print("RESULT " + json.dumps(result))
        return
    runs = [("memory", n) for n in cli.memory_sizes] + [("on_the_fly", n) for n in cli.on_the_fly_sizes]
    runs += [("stored", n) for n in cli.stored_sizes] + [("memory_stored", n) for n in cli.memory_stored_sizes]
    total = max(n for _, n in runs)
    _generated(total, cli.workdir)  # the images, once, before any configuration is measured
    (cli.workdir / "images_total").write_text(str(total))
    print("| path | images | workers | peak RSS main (GB) | peak RSS worker (GB) | examples/s | prepare (s) | store (s/image) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for path, n in runs:
        command = [sys.executable, __file__, "--child", path, str(n), "--workdir", str(cli.workdir),
                   "--steps", str(cli.steps), "--warmup", str(cli.warmup), "--workers", str(cli.workers),
                   "--batch", str(cli.batch)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        line = next((line for line in done.stdout.splitlines() if line.startswith("RESULT ")), None)
        if line is None:
            print(f"| {path} | {n} | failed: {done.stderr.strip().splitlines()[-1:]} |", flush=True)
            continue
        r = json.loads(line[len("RESULT ") :])
        store = r["store_s_per_example"] if r["store_s_per_example"] is not None else ""
        print(f"| {path} | {n} | {r['workers']} | {r['peak_rss_gb']} | {r['worker_peak_rss_gb']} | "
              f"{r['examples_per_s']} | {r['prepare_s']} | {store} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
