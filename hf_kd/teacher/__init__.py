"""The frozen teacher: `loading` (load, check against the student, run it), `ensemble` (several teachers as one) and
`precompute` (its outputs computed once, cached by fingerprint). Placing it on devices is `hf_kd.placement`'s."""
