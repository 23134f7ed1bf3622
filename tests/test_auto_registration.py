"""`import hf_kd` registers the reference models with transformers' Auto classes (README: a saved student loads with
`AutoModelForImageClassification.from_pretrained` and no `trust_remote_code`), and a bare `import hf_kd` stays cheap:
the registration waits for transformers' Auto machinery. Each check runs in a fresh interpreter, where nothing has
been imported or registered yet."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from hf_kd.models import image_processor_for_preset, model_from_preset

# Loads the saved student and prints what it got: the classes' modules tell hf_kd's own classes from the copies of
# the remote code (`transformers_modules.*`), which `trust_remote_code=True` would have loaded.
_LOAD = """
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained(directory).eval()
processor = AutoImageProcessor.from_pretrained(directory)
with torch.no_grad():
    logits = model(torch.load(f"{directory}/pixels.pt")).logits
assert torch.equal(logits, torch.load(f"{directory}/logits.pt")), "the loaded student computes other logits"
print(type(model).__module__, type(processor).__module__)
"""


@pytest.fixture(scope="module")
def saved_student(tmp_path_factory):
    directory = tmp_path_factory.mktemp("student")
    torch.manual_seed(0)
    model = model_from_preset("mnist-mlp-student").eval()
    model.save_pretrained(directory)
    image_processor_for_preset("mnist-mlp-student").save_pretrained(directory)
    pixels = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.save(model(pixels).logits, directory / "logits.pt")
    torch.save(pixels, directory / "pixels.pt")
    return directory


def _run(code: str, directory) -> str:
    """Run `code` in a fresh interpreter with `directory` set; return the last line it printed."""
    script = f"directory = {str(directory)!r}\n{code}"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=_env())
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def _env() -> dict:
    # The subprocess imports this checkout's hf_kd, as the tests do, and stays off the network.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return os.environ | {"PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def test_bare_import_registers_without_loading_torch(saved_student):
    # The saved config carries `auto_map` (the copied modeling files): without hf_kd's registration, transformers
    # would ask for `trust_remote_code=True` and refuse.
    bare_import = textwrap.dedent(
        """
        import sys
        import hf_kd
        assert "torch" not in sys.modules and "transformers" not in sys.modules, "a bare `import hf_kd` loaded them"
        """
    )
    output = _run(bare_import + _LOAD, saved_student)
    assert output == "hf_kd.models.mlp.modeling_mlp hf_kd.models.image_processing_hf_kd"


@pytest.mark.slow
@pytest.mark.parametrize(
    "imports",
    [
        # transformers' Auto classes first: `import hf_kd` registers at once.
        "from transformers import AutoModelForImageClassification\nimport hf_kd",
        # `modeling_layers` imports the Auto classes half way through its own import: the registration, which needs
        # `modeling_layers`, waits until that import is over.
        "import hf_kd\nimport transformers.modeling_layers",
        # A transformers model class first (its module imports `modeling_layers`).
        "import hf_kd\nfrom transformers import BertModel",
    ],
)
def test_registration_whatever_the_import_order(saved_student, imports):
    output = _run(imports + "\n" + _LOAD, saved_student)
    assert output == "hf_kd.models.mlp.modeling_mlp hf_kd.models.image_processing_hf_kd"
