"""CNN image classifiers (the CIFAR-10 reference teacher and student)."""

from .configuration_cnn import CNNConfig
from .modeling_cnn import CNNForImageClassification, CNNModel, CNNPreTrainedModel

__all__ = ["CNNConfig", "CNNForImageClassification", "CNNModel", "CNNPreTrainedModel"]
