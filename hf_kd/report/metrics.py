"""Metrics through `evaluate`, loadable on machines that cannot reach the Hub."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence

import datasets
import evaluate
import numpy as np
from huggingface_hub import constants as hub_constants
from transformers.trainer_utils import EvalPrediction
from transformers.utils import logging

logger = logging.get_logger(__name__)


class Accuracy(evaluate.Metric):
    """Accuracy, the proportion of correct predictions: the same computation as the Hub's `accuracy` module, built
    in so that the default metric works offline."""

    def _info(self):
        return evaluate.MetricInfo(
            description="Accuracy: the proportion of correct predictions among the examples.",
            citation="",
            inputs_description="predictions and references: lists of class ids.",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": float(np.mean(np.asarray(predictions) == np.asarray(references)))}


@contextlib.contextmanager
def _evaluate_offline_like_the_hub():
    # `evaluate` has its own offline switch (HF_EVALUATE_OFFLINE) and, without it, retries the Hub for over a minute
    # before failing; a user who set HF_HUB_OFFLINE means the Hub is out of reach for every HF library.
    previous = evaluate.config.HF_EVALUATE_OFFLINE
    if hub_constants.HF_HUB_OFFLINE:
        evaluate.config.HF_EVALUATE_OFFLINE = True
    try:
        yield
    finally:
        evaluate.config.HF_EVALUATE_OFFLINE = previous


def load_metric(name_or_path: str = "accuracy", **kwargs) -> evaluate.EvaluationModule:
    """
    `evaluate.load(name_or_path)`: a Hub metric (`"accuracy"`, `"f1"`, ...) or a local metric module (a directory
    holding `<name>.py`, or the script itself).

    `evaluate.load("accuracy")` fetches the module's script from the Hub on first use. When that fails (offline, an
    air-gapped cluster), `"accuracy"` falls back to the built-in [`Accuracy`], with a warning; any other metric
    raises an error saying how to point at a local copy.
    """
    try:
        with _evaluate_offline_like_the_hub():
            return evaluate.load(name_or_path, **kwargs)
    except (FileNotFoundError, ConnectionError, OSError) as error:
        if name_or_path == "accuracy" and not os.path.exists(name_or_path):
            logger.warning(
                f"Could not load the 'accuracy' metric from the Hub ({error}); using hf_kd's built-in copy "
                "(hf_kd.metrics.Accuracy). Pass --metric_name_or_path /path/to/accuracy to use a local module."
            )
            return Accuracy(**kwargs)
        raise FileNotFoundError(
            f"Could not load the metric {name_or_path!r} with evaluate.load ({error}). Offline, pass "
            "--metric_name_or_path a local directory holding the metric's module script (e.g. a copy of "
            "https://huggingface.co/spaces/evaluate-metric/accuracy)."
        ) from error


def metric_value(metric: evaluate.EvaluationModule, predictions, references) -> float:
    """The metric's headline number: the value named after the metric, else its only value."""
    result = metric.compute(predictions=predictions, references=references)
    if metric.name in result:
        return float(result[metric.name])
    if len(result) == 1:
        return float(next(iter(result.values())))
    raise ValueError(
        f"The metric {metric.name!r} returned several values {sorted(result)} and none named {metric.name!r}: "
        "use a metric with a single headline value."
    )


def compute_metrics_fn(
    metric: evaluate.EvaluationModule, extra_metrics: Sequence[evaluate.EvaluationModule] = ()
) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `Trainer` `compute_metrics` for classification: argmax of the logits against the labels, scored by `metric`
    and, in one `evaluate.combine`, by the `extra_metrics` (e.g. F1 beside accuracy; logged as `eval_<name>`)."""
    combined = evaluate.combine([metric, *extra_metrics]) if extra_metrics else None

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        logits = eval_prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        predictions = np.argmax(logits, axis=-1)
        if combined is not None:
            return combined.compute(predictions=predictions, references=eval_prediction.label_ids)
        return {metric.name: metric_value(metric, predictions, eval_prediction.label_ids)}

    return compute_metrics
