"""Tensors of a Hugging Face directory, read one at a time.

`model.safetensors`, or the shards a `model.safetensors.index.json` names. Nothing is read
until a tensor is asked for; each read maps only that tensor (`safe_open`), so host memory
holds one tensor (plus its converted copy) at a time, whatever the checkpoint's size.
bfloat16 tensors come back as ml_dtypes bfloat16 NumPy arrays.
"""
from __future__ import annotations

import json
import os

import numpy as np

from sparrow_jax.hf.families import HFImportError


class TensorDir:
    """name -> file of every tensor in an HF directory; `get(name)` reads one."""

    def __init__(self, directory: str):
        from safetensors import safe_open
        self.directory = directory
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            self.files = {name: os.path.join(directory, shard)
                          for name, shard in weight_map.items()}
        elif os.path.exists(single):
            with safe_open(single, framework="numpy") as f:
                self.files = {name: single for name in f.keys()}
        else:
            raise HFImportError(f"{directory}: neither model.safetensors nor "
                                f"model.safetensors.index.json")
        self._headers: dict[str, dict] = {}

    def names(self) -> list[str]:
        return sorted(self.files)

    def _header(self, path: str) -> dict:
        """The safetensors JSON header of a file (dtype, shape of each tensor)."""
        if path not in self._headers:
            with open(path, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                self._headers[path] = json.loads(f.read(size))
        return self._headers[path]

    def info(self, name: str) -> tuple[tuple[int, ...], str]:
        """(shape, safetensors dtype string e.g. 'BF16', 'F32') without reading the data."""
        entry = self._header(self._file(name))[name]
        return tuple(entry["shape"]), entry["dtype"]

    def _file(self, name: str) -> str:
        if name not in self.files:
            raise HFImportError(f"tensor {name} is missing from {self.directory}")
        return self.files[name]

    def get(self, name: str) -> np.ndarray:
        """One tensor as a NumPy array (bfloat16 via ml_dtypes)."""
        path = self._file(name)
        shape, dtype = self.info(name)
        if dtype == "BF16":
            # safetensors' numpy framework has no bfloat16: read the tensor's raw bits.
            import ml_dtypes
            start, end = self._header(path)[name]["data_offsets"]
            with open(path, "rb") as f:
                header_len = int.from_bytes(f.read(8), "little")
                f.seek(8 + header_len + start)
                data = np.frombuffer(f.read(end - start), np.uint16)
            return data.view(ml_dtypes.bfloat16).reshape(shape)
        from safetensors import safe_open
        with safe_open(path, framework="numpy") as f:
            return f.get_tensor(name)



