"""The examples' run harness: command-line arguments, stages of an experiment, modality recipes, resume, sharding.

Nothing in the library imports this package; the examples and studies do."""
