"""The toy world: a seeded fictional world where the truth is known, so the whole Sparrow
recipe can be run and judged on a CPU.

    from sparrow_jax.data.toyworld import ToyWorldConfig, generate, Oracle
    paths = generate("/tmp/world", ToyWorldConfig(seed=0))
    oracle = Oracle.load("/tmp/world")   # evaluation only, never a training reward

Modules: config (knobs), templates (all text), entities (names, facts, corpus documents),
dialogues (behaviour generator), labels (preferences, rule ratings, prompts), oracle, writer.
"""
from sparrow_jax.data.toyworld.config import ToyWorldConfig
from sparrow_jax.data.toyworld.oracle import CHECKABLE_RULES, Oracle, UncheckableRule
from sparrow_jax.data.toyworld.writer import World, build_world, generate, render_transcript

__all__ = ["CHECKABLE_RULES", "Oracle", "ToyWorldConfig", "UncheckableRule", "World", "build_world",
           "generate", "render_transcript"]
