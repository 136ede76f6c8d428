"""Data sources and ``load_source`` to resolve a source spec.

Specs: ``demo`` (Python's documentation topics); ``digits`` or ``digits:train|test|all``
(scikit-learn's digits); a .txt/.jsonl file or a folder, with options after ``?``:
``corpus.jsonl?field=body&labels=lang,split``."""

from __future__ import annotations

from urllib.parse import parse_qsl

from engine.sources.base import Example, Source


def load_source(spec: str) -> Source:
    """Resolve a source spec (see the module docstring); raises SourceError."""
    body, _, query = spec.strip().partition("?")
    opts = dict(parse_qsl(query))
    if body == "demo":
        from engine.sources.text import DemoCorpus
        return DemoCorpus()
    if body == "digits" or body.startswith("digits:"):
        from engine.sources.digits import DigitsSource
        split = body.split(":", 1)[1] if ":" in body else "all"
        return DigitsSource(split=split, seed=int(opts.get("seed", 0)))
    from engine.sources.text import TextSource
    labels = [x for x in opts.get("labels", "").split(",") if x]
    return TextSource(body, field=opts.get("field", "text"), labels=labels)


__all__ = ["Example", "Source", "load_source"]
