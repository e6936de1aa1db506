"""sparrow_jax: Sparrow-style dialogue agents (RL from preference and rule reward models) in JAX."""
__version__ = "0.1.0"
