"""The trainers (`DistillationTrainer`, `MutualLearningTrainer`) on one base, their configs, and training callbacks."""
