"""The search interface: results, the engine protocol, evidence text and the engine registry.

Every engine returns `SearchResult`s; `format_evidence` turns one into the text of a
`Search Result` turn. Engines plug in by name through `register_engine`, so the rest
of the code asks for `make_engine(cfg_name, **kwargs)` and never imports an engine.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, runtime_checkable


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """One retrieved document, reduced to the fragment shown as evidence."""

    doc_id: str
    title: str
    url: str
    fragment: str
    score: float


@runtime_checkable
class SearchEngine(Protocol):
    def search(self, query: str, k: int = 1) -> list[SearchResult]:
        """The k best results, best first; [] when nothing matches."""
        ...


def format_evidence(result: SearchResult) -> str:
    """The text of a `Search Result` turn: a title line, a source line, then the fragment."""
    return f"{result.title}\nSource: {result.url}\n{result.fragment}"


EngineFactory = Callable[..., SearchEngine]
_REGISTRY: dict[str, EngineFactory] = {}


def register_engine(name: str) -> Callable[[EngineFactory], EngineFactory]:
    """Decorator: make `factory(**kwargs)` available as `make_engine(name, **kwargs)`."""

    def decorate(factory: EngineFactory) -> EngineFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"search engine {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def available_engines() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def make_engine(name: str, **kwargs) -> SearchEngine:
    """Build the engine registered under `name`; unknown names list the known ones."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown search engine {name!r}; known: {', '.join(available_engines()) or 'none'}"
        ) from None
    return factory(**kwargs)
