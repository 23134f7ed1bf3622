"""hf_kd: knowledge distillation for the Hugging Face stack.

The names below are what a user calls; each is imported on first use (PEP 562), so `import hf_kd` does not pay for
transformers' Trainer, datasets and torch until they are needed. Everything else stays importable from its module
(`hf_kd.losses.logit`, `hf_kd.teacher.loading`, `hf_kd.batch`, `hf_kd.data`, ...; ARCHITECTURE.md maps them).

`import hf_kd` also registers the reference models (`hf_kd.models`) with transformers' Auto classes, so that a saved
hf_kd model loads with `AutoModelForImageClassification.from_pretrained` without `trust_remote_code`. Importing them
costs torch and transformers' modeling core, which every Auto class loads anyway: the registration waits for the first
import of transformers' Auto machinery (see `_AutoRegistration`), and costs a bare `import hf_kd` nothing.
"""

import sys
import threading
import warnings
from importlib import import_module
from importlib.abc import MetaPathFinder
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hf_kd")  # declared once, in setup.py
except PackageNotFoundError:  # a source tree that was not installed
    __version__ = "0.0.0"

_EXPORTS = {
    "DistillationConfig": "training.configuration_distillation",
    "DistillationTrainer": "training.trainer",
    "distillation_loss": "losses.logit",
    "add_teacher_logits": "teacher.precompute",
    "load_teacher": "teacher.loading",
    "DistillationReport": "report.report",
    "InMemoryDataset": "data",
    "RandomShiftCollator": "data",
    "DataCollatorWithTeacherPadding": "data",
    "load_image_classification_dataset": "data",
    "tokenize_dataset": "data",
    "derive_student": "models.student",
    "TeacherEnsemble": "teacher.ensemble",
    "MutualLearningTrainer": "training.mutual",
    "MutualLearningConfig": "training.mutual",
    "EMATeacherCallback": "training.ema",
    "model_from_preset": "models",
    "image_processor_for_preset": "models",
    "MLPForImageClassification": "models",
    "CNNForImageClassification": "models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))


# ------------------------------------------------------------------------------------ Auto classes registration

# Every Auto class of transformers imports this module (and with it torch) before it can look a model type up.
_AUTO_CONFIG_MODULE = "transformers.models.auto.configuration_auto"


class _AutoRegistration(MetaPathFinder):
    """Imports `hf_kd.models` (which registers the reference models with the Auto classes) once transformers' Auto
    machinery is loaded, and not earlier: after the outermost import of a `transformers` module that leaves
    `configuration_auto` loaded. Not at the end of `configuration_auto`'s own import, which may be nested in the import
    of a transformers module that `hf_kd.models` needs (`modeling_layers` imports the Auto classes half way through).

    A finder on `sys.meta_path` that finds nothing itself: it wraps the loader of each `transformers` module, counting
    how deep this thread is in their imports, and removes itself once the registration is done."""

    def __init__(self):
        self._depth = threading.local()
        self._done = False

    def find_spec(self, fullname, path, target=None):
        if self._done or fullname.partition(".")[0] != "transformers":
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _CountingLoader(spec.loader, self)
        return spec

    def exec_module(self, loader, module):
        depth = getattr(self._depth, "value", 0)
        self._depth.value = depth + 1
        try:
            loader.exec_module(module)
        finally:
            self._depth.value = depth
        if depth == 0 and _AUTO_CONFIG_MODULE in sys.modules:
            self.register()

    def register(self):
        if self._done:
            return
        self._done = True
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        try:
            import_module(".models", __name__)
        except Exception as error:  # the user's own import must not fail for hf_kd's sake
            warnings.warn(f"hf_kd could not register its reference models with the Auto classes: {error!r}")


class _CountingLoader:
    """A module loader that runs the real one through `_AutoRegistration.exec_module`; anything else (`get_source`
    for tracebacks, resource readers, ...) is the real loader's."""

    def __init__(self, loader, registration: _AutoRegistration):
        self._loader, self._registration = loader, registration

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._registration.exec_module(self._loader, module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


def _register_with_auto_classes() -> None:
    registration = _AutoRegistration()
    if _AUTO_CONFIG_MODULE in sys.modules:  # transformers' Auto classes came first: torch is loaded already
        registration.register()
    else:
        sys.meta_path.insert(0, registration)


_register_with_auto_classes()
