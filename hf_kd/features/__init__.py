"""Intermediate features of a model (white-box distillation): names, hooks, `auto` pairs and connectors."""
