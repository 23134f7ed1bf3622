"""The one way hf_kd's studies compare methods.

Every study built on this module follows the same rules, so that a table in docs/ means the same thing everywhere:

- settings (a loss weight, a temperature) are chosen on a validation split carved from the *training* split
  ([`carve_validation`]); the test split is read only to report;
- the students of one comparison start from the same initial weights and see the same data order: for a seed, every
  method builds its student after `torch.manual_seed(seed)` and trains with the Trainer's `seed=seed`
  ([`seeded`]; [`weights_fingerprint`] records the start so the JSON shows it was the same);
- 3+ seeds; each method is reported as mean ± sample standard deviation over seeds, and against the baseline as the
  mean paired difference (same seed, same start) with its standard error ([`paired_difference`]);
- a difference is a *gain* (or a *loss*) only beyond two standard errors of the paired difference, otherwise it is
  *a direction* ([`verdict`]);
- each study writes its table as markdown and JSON with the exact command, the seeds, the data sizes, the machine and
  the wall time ([`Study.write`]).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""Where the studies read real data (the project's shared directory next to the worktrees)."""

GAIN_STANDARD_ERRORS = 2.0
"""A paired difference is a gain (or a loss) only beyond this many standard errors."""


def carve_validation(num_examples: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices `(train, validation)` of a training split of `num_examples` rows: `size` rows drawn at random (a
    generator seeded with `seed`, so every study run carves the same ones) are held out for choosing settings."""
    if not 0 < size < num_examples:
        raise ValueError(f"validation size must be between 1 and {num_examples - 1}, got {size}.")
    order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))
    return order[size:].sort().values, order[:size].sort().values


def seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`build()` after `torch.manual_seed(seed)`: every method of a comparison gets the same student for a seed."""
    torch.manual_seed(seed)
    return build()


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's parameters, recorded per run: equal fingerprints are equal starting weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def command() -> str:
    """The command line that is running, the script named from the repository's root (where a study is run from)."""
    script = Path(sys.argv[0]).resolve()
    root = Path(__file__).resolve().parents[1]
    name = script.relative_to(root) if script.is_relative_to(root) else Path(sys.argv[0])
    return shlex.join(["python", str(name), *sys.argv[1:]])


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of a single value is 0."""
    values = list(values)
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_difference(method: dict[int, float], baseline: dict[int, float]) -> dict:
    """The mean over seeds of `method[seed] - baseline[seed]` and its standard error (sample standard deviation of the
    differences over sqrt(n)), on the seeds both have. Fewer than two shared seeds give no standard error (`nan`)."""
    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        raise ValueError("the method and its baseline share no seed: a paired difference needs the same seeds.")
    differences = [method[seed] - baseline[seed] for seed in seeds]
    mean = statistics.mean(differences)
    error = statistics.stdev(differences) / math.sqrt(len(differences)) if len(differences) > 1 else math.nan
    return {"mean": mean, "se": error, "seeds": seeds, "differences": differences}


def verdict(mean: float, se: float) -> str:
    """`"gain"` / `"loss"` when the paired difference is beyond [`GAIN_STANDARD_ERRORS`] standard errors of itself,
    `"a direction"` otherwise (also when there is no standard error, e.g. a single seed)."""
    if math.isnan(se) or abs(mean) <= GAIN_STANDARD_ERRORS * se:
        return "a direction"
    return "gain" if mean > 0 else "loss"


def machine() -> dict:
    """The machine a study ran on: CPU count and model, Python and torch versions, the torch threads used."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}  # fmt: skip


class Study:
    """The results of one study: per method, per seed, one test score (and whatever else a run records), written as a
    markdown table and JSON after every run, so a stopped study keeps what it measured.

    Args:
        name: the study's title (the table's caption).
        baseline: the method every other one is paired against.
        seeds: the seeds every method runs with.
        sizes: the data sizes (`{"train": ..., "validation": ..., "test": ...}`), written with the table.
        output_dir: where `<stem>.md` and `<stem>.json` go.
        metric: what the score is, for the table's header.
    """

    def __init__(self, name: str, baseline: str, seeds: Sequence[int], sizes: dict, output_dir: str | Path,
                 metric: str = "test accuracy", stem: str = "results"):  # fmt: skip
        self.name, self.baseline, self.seeds, self.sizes, self.metric = name, baseline, list(seeds), sizes, metric
        self.output_dir, self.stem = Path(output_dir), stem
        self.command = command()
        self.started = time.time()
        self.runs: dict[str, dict[int, dict]] = {}
        self.notes: dict[str, object] = {}

    def record(self, method: str, seed: int, score: float, **details) -> None:
        """One run's score (and details: its seconds, its starting weights' fingerprint, its validation curve...)."""
        self.runs.setdefault(method, {})[seed] = {"score": score, **details}
        self.write()

    def scores(self, method: str) -> dict[int, float]:
        return {seed: run["score"] for seed, run in self.runs.get(method, {}).items()}

    def rows(self) -> list[dict]:
        """One row per method: mean, std, per-seed scores, and (but for the baseline) the paired difference."""
        rows, baseline = [], self.scores(self.baseline)
        for method in self.runs:
            scores = self.scores(method)
            mean, std = mean_std(scores.values())
            row = {"method": method, "mean": mean, "std": std, "scores": scores}
            if method != self.baseline and set(scores) & set(baseline):
                pair = paired_difference(scores, baseline)
                row.update(difference=pair["mean"], se=pair["se"], verdict=verdict(pair["mean"], pair["se"]))
            rows.append(row)
        return rows

    def markdown(self) -> str:
        """The table: method, mean ± std (in points), the paired difference against the baseline ± its standard
        error, the verdict, the per-seed scores."""
        lines = [f"| method | {self.metric} (mean ± std) | vs {self.baseline} (paired, ± SE) | verdict | per seed |",
                 "|---|---|---|---|---|"]  # fmt: skip
        for row in self.rows():
            if "difference" in row:
                se = "n/a" if math.isnan(row["se"]) else f"{100 * row['se']:.2f}"
                versus, called = f"{100 * row['difference']:+.2f} ± {se}", row["verdict"]
            else:
                versus, called = "(baseline)", ""
            seeds = ", ".join(f"{100 * score:.2f}" for _, score in sorted(row["scores"].items()))
            lines.append(f"| {row['method']} | {100 * row['mean']:.2f} ± {100 * row['std']:.2f} | {versus} | "
                         f"{called} | {seeds} |")  # fmt: skip
        return "\n".join(lines)

    def header(self) -> str:
        info = machine()
        sizes = ", ".join(f"{name} {count:,}" for name, count in self.sizes.items())
        return (f"Command: `{self.command}`\n\nSeeds {self.seeds}; data: {sizes}; machine: {info['nproc']} CPUs "
                f"({info['cpu']}), torch {info['torch']} on {info['torch_threads']} thread(s); wall time "
                f"{(time.time() - self.started) / 60:.1f} min.")  # fmt: skip

    def to_json(self) -> dict:
        return {"name": self.name, "command": self.command, "seeds": self.seeds, "sizes": self.sizes,
                "machine": machine(), "wall_seconds": time.time() - self.started, "baseline": self.baseline,
                "metric": self.metric, "gain_rule": f"|paired difference| > {GAIN_STANDARD_ERRORS} x its SE",
                "notes": self.notes, "rows": self.rows(),
                "runs": {m: {str(s): r for s, r in runs.items()} for m, runs in self.runs.items()}}  # fmt: skip

    def write(self) -> None:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        notes = "".join(f"\n- {key}: {value}" for key, value in self.notes.items() if isinstance(value, str))
        text = f"### {self.name}\n\n{self.header()}\n{notes}\n\n{self.markdown()}\n"
        (self.output_dir / f"{self.stem}.md").write_text(text)
        (self.output_dir / f"{self.stem}.json").write_text(json.dumps(self.to_json(), indent=1, default=str))


def choose_on_validation(candidates: Sequence[dict], validation_score: Callable[[dict], float]) -> tuple[dict, list]:
    """The candidate setting with the best `validation_score` (the first one on a tie), and every (setting, score)
    tried, to be recorded with the study. `validation_score` must score on a validation split, never the test one."""
    tried = [(candidate, validation_score(candidate)) for candidate in candidates]
    best = max(range(len(tried)), key=lambda index: (tried[index][1], -index))
    return tried[best][0], tried


def main() -> None:
    """`python studies/harness.py --method 79.27 79.77 79.41 --baseline 77.14 79.50 79.23`: the paired difference of
    per-seed scores (same seed order) already published, with its standard error and verdict."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--method", type=float, nargs="+", required=True, help="per-seed scores of the method")
    parser.add_argument("--baseline", type=float, nargs="+", required=True, help="the baseline's, same seed order")
    options = parser.parse_args()
    if len(options.method) != len(options.baseline):
        parser.error("--method and --baseline need one score per seed each, in the same seed order.")
    pair = paired_difference(dict(enumerate(options.method)), dict(enumerate(options.baseline)))
    print(f"paired difference {pair['mean']:+.2f} ± {pair['se']:.2f} (SE, {len(pair['seeds'])} seeds): "
          f"{verdict(pair['mean'], pair['se'])}")  # fmt: skip


if __name__ == "__main__":
    main()
