"""Losses as pure functions of tensors, split by level (as torchdistill's `losses/`): `logit` (the objective of a run,
soft targets, mutual learning), `feature` (hints, overhaul, attention transfer, hidden states, PKD), `relation` (RKD,
triplet). Each is tested against its formula written out in the tests."""
