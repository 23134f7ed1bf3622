"""A saved classifier answering raw inputs in the Hugging Face classification protocol, in process.

What `python -m hf_kd.serve` runs behind its URL, and what a [`RemoteTeacher`] can call directly
(`teacher_from_model`): raw inputs (PIL images, or texts) -> preprocessing -> the model -> softmax -> one list of
`{"label": name, "score": probability}` per input, best first, `top_k` long.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from .remote import RemoteTeacher


class ClassifierAnswers:
    """
    A classifier and its preprocessing, answering a batch of raw inputs.

    Args:
        model (`PreTrainedModel`): an image- or sequence-classification model (run in `eval()` without gradients).
        processor: its image processor (images) or tokenizer (texts).
        kind (`str`): `"image"` or `"text"`.
        max_length (`int`, *optional*, defaults to 512): texts are truncated to this many tokens.
    """

    def __init__(self, model, processor, kind: str, max_length: int = 512):
        if kind not in ("image", "text"):
            raise ValueError(f"kind must be 'image' or 'text', got {kind!r}.")
        self.model, self.processor, self.kind, self.max_length = model.eval(), processor, kind, max_length
        id2label = model.config.id2label
        self.label_names = [str(id2label[i]) for i in range(len(id2label))]

    @classmethod
    def from_pretrained(cls, model_dir: str | os.PathLike, max_length: int = 512) -> ClassifierAnswers:
        """Load a saved classifier: a text one when the directory has a tokenizer, an image one otherwise."""
        from transformers import (
            AutoImageProcessor,
            AutoModelForImageClassification,
            AutoModelForSequenceClassification,
            AutoTokenizer,
        )

        import hf_kd.models  # noqa: F401  (registers the reference models with the Auto classes)

        model_dir = str(model_dir)
        if not os.path.isdir(model_dir):
            raise ValueError(f"{model_dir!r} is not a directory: give the directory of a saved classifier.")
        if os.path.exists(os.path.join(model_dir, "tokenizer_config.json")):
            model = AutoModelForSequenceClassification.from_pretrained(model_dir)
            return cls(model, AutoTokenizer.from_pretrained(model_dir), "text", max_length)
        if not os.path.exists(os.path.join(model_dir, "preprocessor_config.json")):
            raise ValueError(
                f"{model_dir} has neither a tokenizer nor an image processor: save the classifier with its "
                "processing_class (Trainer.save_model does) to serve it."
            )
        model = AutoModelForImageClassification.from_pretrained(model_dir)
        return cls(model, AutoImageProcessor.from_pretrained(model_dir), "image")

    @torch.inference_mode()
    def probabilities(self, inputs: Sequence) -> torch.Tensor:
        """`(N, C)` softmax probabilities of the model on raw inputs."""
        if self.kind == "text":
            encoded = self.processor(
                list(inputs), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
        else:
            encoded = self.processor(list(inputs), return_tensors="pt")
        return self.model(**encoded).logits.float().softmax(-1)

    def __call__(self, inputs: Sequence, top_k: int | None = None) -> list[list[dict]]:
        """The protocol's answer: per input, the `top_k` best `{"label", "score"}` (all classes when `None`)."""
        probs = self.probabilities(inputs)
        k = min(top_k or probs.shape[-1], probs.shape[-1])
        scores, indices = probs.topk(k, dim=-1)
        names = self.label_names
        return [
            [{"label": names[i], "score": s} for i, s in zip(row_indices, row_scores)]
            for row_indices, row_scores in zip(indices.tolist(), scores.tolist())
        ]


def teacher_from_model(model_dir, answers: str = "top_k", top_k: int = 3, label_names=None) -> RemoteTeacher:
    """A saved classifier called in process as a [`RemoteTeacher`] (the same answers as serving it over HTTP)."""
    classifier = ClassifierAnswers.from_pretrained(model_dir)
    names = label_names if label_names is not None else classifier.label_names
    return RemoteTeacher(classifier, names, answers, top_k, description=f"model:{os.path.abspath(model_dir)}")
