"""Measuring models, the distillation report (its one reader and writer), metrics, and the model card."""
