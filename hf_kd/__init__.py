"""hf_kd: knowledge distillation for the Hugging Face stack."""

__version__ = "0.1.0"
