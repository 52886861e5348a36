"""Installs the preference-optimization codebase (see README.md)."""

import setuptools

setuptools.setup(
    name="jax-prefopt",
    version="0.1.0",
    description="Preference optimization of language models in JAX: DPO and its variants, "
    "LD-DPO, DNO, INPO, GPO, T-REG, implicit PRMs, on one sharded training loop.",
    python_requires=">=3.10",
    packages=setuptools.find_packages(
        include=["algorithms*", "models*", "training*", "data*", "experiments*", "configs*",
                 "verification*"]),
    install_requires=[
        "jax>=0.5.0,<0.13",
        "flax>=0.10.4,<0.14",
        "optax>=0.2.4,<0.4",
        "orbax-checkpoint>=0.11.0,<0.14",
        "ml-collections>=0.1.1,<2",
        "absl-py>=2.0,<3",
        "tensorflow-datasets>=4.9.7,<5",  # without TensorFlow: array_record data sources
        "array-record>=0.5.1",
        "tokenizers>=0.19,<1",
        "jinja2>=3.1.6",  # chat templates (sandboxed; older releases have sandbox escapes)
        "safetensors>=0.4.3,<1",
        "tensorboardX>=2.6,<3",
        "matplotlib>=3.7,<4",
        "tqdm>=4.60",
        "pyarrow>=14",
        "numpy>=1.26",
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100", "torch==2.13.0", "transformers>=4.50,<6",
                 # Executing notebooks/ headless (tests/test_notebooks.py -m notebooks).
                 "nbformat>=5.9", "nbclient>=0.10", "ipykernel>=6"],
        "hf": ["torch==2.13.0", "transformers>=4.50,<6"],
    },
)
