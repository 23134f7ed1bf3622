"""TEST-ONLY: run an example script under FSDP on CPU processes, launched by `accelerate launch` with an FSDP config.

accelerate turns on FSDP only for GPU-like process types, so on a CPU an FSDP launch silently trains with DDP. This
runner declares the gloo processes MULTI_GPU (the CPU as their device) before the script builds its arguments, then
runs the script, which must get `--accelerator_config '{"use_configured_state": true}'` so that its Trainers use this
state. The shim lives here, in the tests, never in the library or the examples.

    accelerate launch --config_file fsdp2.yaml tests/fsdp_cpu_launch.py examples/distill_mnist.py --use_cpu ...
"""

import runpy
import sys

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType


def fsdp_on_cpu() -> None:
    """Declare this process group's gloo processes GPU-like, the CPU their device: accelerate then builds FSDP."""
    state = PartialState(cpu=True, backend="gloo")
    state.distributed_type = DistributedType.MULTI_GPU
    state.device = torch.device("cpu")


if __name__ == "__main__":
    fsdp_on_cpu()
    script, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_path(script, run_name="__main__")
