"""F1 score as an `evaluate` metric module, for offline tests (`evaluate.load("f1")` fetches its script from the Hub).

Same name, inputs and output as the Hub's `f1` metric: `{"f1": float}` for `average="binary"` (the default).
"""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import f1_score


class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="F1 = 2 * precision * recall / (precision + recall).",
            citation="",
            inputs_description="predictions and references: lists of class ids.",
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
        )

    def _compute(self, predictions, references, labels=None, pos_label=1, average="binary", sample_weight=None):
        score = f1_score(
            references, predictions, labels=labels, pos_label=pos_label, average=average, sample_weight=sample_weight
        )
        return {"f1": float(score) if np.ndim(score) == 0 else score}
