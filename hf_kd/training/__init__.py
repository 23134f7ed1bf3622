"""The trainers (`DistillationTrainer`, `MutualLearningTrainer`, `DataFreeDistillationTrainer`) on one base, their configs, and training callbacks."""
