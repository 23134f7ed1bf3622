"""Annotation over loopback HTTP against calling the same teacher in process, at the same batch size.

Both sides run `annotate_with_teacher` on the same images with the same classifier (the MNIST MLP teacher preset,
784-400-100-10; a saved one with --model_dir): in process, `teacher_from_model` runs its preprocessing and forward;
over HTTP, `python -m hf_kd.serve` runs the very same code behind a URL and the job sends base64 PNGs. Rounds are
interleaved (in process, HTTP, in process, ...), each into a fresh job directory; the ratio of medians is printed
(target <= 1.5).

    python benchmarks/bench_annotate.py [--examples 4096] [--batch_size 256] [--rounds 5] [--max_in_flight 2]

Real MNIST test images when /work/shared/data/mnist is there (or --dataset_dir), random 28x28 images otherwise.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def images(n: int, dataset_dir: str | None):
    from datasets import Dataset, Image, load_dataset

    if dataset_dir and Path(dataset_dir).exists():
        files = sorted(str(p) for p in Path(dataset_dir).rglob("test-*.parquet"))
        data = load_dataset("parquet", data_files=files, split="train").select_columns(["image"])
        return data.select(range(min(n, len(data)))), "MNIST test images"
    import PIL.Image

    rng = np.random.RandomState(0)
    pics = [PIL.Image.fromarray(rng.randint(0, 256, (28, 28), dtype=np.uint8)) for _ in range(n)]
    return Dataset.from_dict({"image": pics}).cast_column("image", Image()), "random 28x28 images"


def saved_teacher(directory: Path) -> Path:
    import torch

    from hf_kd.models import image_processor_for_preset, model_from_preset

    torch.manual_seed(0)
    model_from_preset("mnist-mlp-teacher").save_pretrained(directory)
    image_processor_for_preset("mnist-mlp-teacher").save_pretrained(directory)
    return directory



def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max_in_flight", type=int, default=2)
    parser.add_argument("--answers", default="top_k", choices=["probs", "top_k", "label"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, in this process and in the server")
    parser.add_argument("--model_dir", default=None, help="a saved image classifier (default: the MLP teacher preset)")
    parser.add_argument("--dataset_dir", default="/work/shared/data/mnist")
    args = parser.parse_args()
    import torch
    from datasets.utils.logging import disable_progress_bar

    from hf_kd.serve import serving
    from hf_kd.teacher.annotate import annotate_with_teacher
    from hf_kd.teacher.classifier import teacher_from_model
    from hf_kd.teacher.remote import teacher_from_url

    disable_progress_bar()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_annotate_"))
    model_dir = Path(args.model_dir) if args.model_dir else saved_teacher(work / "teacher")
    data, source = images(args.examples, args.dataset_dir)
    data = data.map(lambda row: row)  # decoded once by datasets' cache, alike for both sides
    local = teacher_from_model(model_dir, args.answers, 3)
    times = {"in process": [], "HTTP": []}
    with serving(model_dir, threads=args.threads) as url:
        remote = teacher_from_url(url, local.label_names, args.answers, 3)
        for round_index in range(args.rounds):
            for name, teacher in (("in process", local), ("HTTP", remote)):
                began = time.perf_counter()
                annotate_with_teacher(data, teacher, "image", work / f"{name}-{round_index}",
                                      batch_size=args.batch_size, max_in_flight=args.max_in_flight)  # fmt: skip
                times[name].append(time.perf_counter() - began)
    in_process, http = statistics.median(times["in process"]), statistics.median(times["HTTP"])
    print(f"\n{len(data)} {source}, batch size {args.batch_size}, {args.max_in_flight} requests in flight, "
          f"answers={args.answers}, {args.threads} torch thread(s), {args.rounds} interleaved rounds (medians)")  # fmt: skip
    for name, values in times.items():
        med = statistics.median(values)
        print(f"  {name:10s} {med:7.3f} s  ({len(data) / med:8.0f} examples/s)  rounds: {[round(v, 3) for v in values]}")
    print(f"  HTTP / in process: {http / in_process:.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
