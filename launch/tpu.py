#!/usr/bin/env python3
"""Cloud TPU VM launcher: `python launch/tpu.py <create|setup|run|logs|delete|babysit> ...`.

Needs the Python standard library, `gcloud`, and ml_collections for `run` / `babysit`,
which validate the config here first (the repo itself is not installed locally);
the logic lives in sparrow_jax/launch/. See launch/README.md and `--help`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sparrow_jax.launch.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
