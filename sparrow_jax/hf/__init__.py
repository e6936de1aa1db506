"""Hugging Face checkpoints: the open-weight families (`families`), reading safetensors
directories tensor by tensor (`safetensors_dir`) and `sparrow import` (`importer`)."""
