from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).parent

setup(
    name="hf_kd",
    version="0.1.0",
    description="Knowledge distillation for the Hugging Face stack: a Trainer, losses and reference models.",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["hf_kd", "hf_kd.*"]),
    package_data={"hf_kd": ["report/templates/*.md"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4,<3",
        "transformers>=5.0,<6",
        "datasets>=4.0,<6",
        "accelerate>=1.4,<2",
        "evaluate>=0.4.3,<0.5",
        "safetensors>=0.4.3",
        "huggingface_hub>=1.0,<3",
        # One run per output directory (hf_kd.runs.lock); already installed with huggingface_hub / datasets.
        "filelock>=3.12",
        "pillow>=10",
        "numpy>=1.26",
    ],
    extras_require={
        "plot": ["matplotlib>=3.7"],
        # Sharded training (ZeRO-2/3) through Accelerate; DS_BUILD_OPS=0 builds no CUDA op at install time, so it
        # installs on a CPU-only machine too (its CPU accelerator compiles one small op with g++ on first use).
        "deepspeed": ["deepspeed>=0.16"],
        "test": ["pytest>=8", "scikit-learn>=1.3", "matplotlib>=3.7"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
