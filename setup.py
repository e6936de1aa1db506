"""sparrow_jax: Sparrow (Glaese et al. 2022) in JAX/Flax for TPU pods.

Every dependency is pinned exactly so a clean checkout installs the stack that
was tested. BUILD_NOTES.md says why each one is here.
"""
from setuptools import find_packages, setup

JAX_VERSION = "0.10.2"

INSTALL_REQUIRES = [
    f"jax=={JAX_VERSION}",
    f"jaxlib=={JAX_VERSION}",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "ml_collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "sentencepiece==0.2.3",
    "tensorflow-datasets==4.9.10",
    "array_record==0.8.6",
    "grain==0.2.18",
    "bm25s==0.3.16",
    "scipy==1.17.1",
    "tensorboardX==2.6.5",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    # `sparrow rate`: the rating web app (WSGI framework + a pure-Python server).
    "flask==3.1.3",
    "waitress==3.0.2",
    # `sparrow import` reads Hugging Face checkpoints tensor by tensor.
    "safetensors==0.8.0",
]

EXTRAS_REQUIRE = {
    # On a TPU VM: pip install -e '.[tpu]' (pulls the libtpu wheel matching jax, and what
    # gs:// workdirs need: gcsfs for etils.epath, google-cloud-storage for orbax).
    "tpu": [f"jax[tpu]=={JAX_VERSION}", "gcsfs==2026.10.1", "google-cloud-storage==3.17.1"],
    # TensorBoard to read a run's event files: pip install -e '.[viz]', then
    # tensorboard --logdir WORKDIR/logs (README, "The recipe, stage by stage").
    "viz": ["tensorboard==2.21.0"],
    # tests/fixtures/hf/make_fixtures.py (tiny Llama / Gemma models and their reference
    # outputs) and its reproduction test. torch 2.13.0 is the CPU build on this disk.
    "hf": ["torch==2.13.0", "transformers==5.23.0"],
    "dev": [
        "pytest==9.2.0",
        "pytest-xdist==3.8.0",
        "hypothesis==6.170.17",
        "selenium==4.51.0",  # the rating app's browser test (4.52.0 needs a certifi newer than the index has)
    ],
}

setup(
    name="sparrow_jax",
    version="0.1.0",
    description="Sparrow-style RLHF with rule reward models, search and reranking, in JAX/Flax",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["sparrow_jax", "sparrow_jax.*"]),
    package_data={"sparrow_jax.resources": ["*.jsonl", "prompts/*.json"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["sparrow=sparrow_jax.cli:main"]},
)
