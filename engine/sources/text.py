"""Text corpora: .txt files (one document per blank-line separated block), .jsonl files
(one JSON object per line with a text field), folders of them, and the bundled demo corpus."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from engine.errors import SourceError
from engine.sources.base import Example, Source, content_id

TEXT_SUFFIXES = (".txt", ".jsonl")


def _txt_documents(path: Path) -> list[str]:
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    blocks = [b.strip() for b in raw.replace("\r\n", "\n").split("\n\n")]
    return [b for b in blocks if b]


def _jsonl_rows(path: Path, field: str) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get(field), str):
                raise SourceError(f"{path}:{n}: no string field {field!r}")
            rows.append(row)
    return rows


class TextSource(Source):
    """Documents from a .txt or .jsonl file or a folder of them (sorted by path).

    ``labels`` names jsonl fields copied into the store: integers as they are, strings
    numbered by first appearance (the names are kept in ``label_classes``). A folder adds
    the label ``file`` (the file's index)."""

    kind = "text"

    def __init__(self, path: str | Path, field: str = "text", labels: Sequence[str] = ()) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SourceError(f"source {self.path}: no such file or folder")
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
            if not self.files:
                raise SourceError(f"source folder {self.path} holds no .txt or .jsonl files")
        elif self.path.suffix in TEXT_SUFFIXES:
            self.files = [self.path]
        else:
            raise SourceError(f"source {self.path}: expected a .txt or .jsonl file or a folder")
        self.field = field
        self.label_names = (*labels, *(("file",) if self.path.is_dir() else ()))
        self._labels = tuple(labels)
        self.label_classes: dict[str, list[str]] = {name: [] for name in labels}
        self._docs = self._read()
        if not self._docs:
            what = "its .txt and .jsonl files hold" if self.path.is_dir() else "it holds"
            raise SourceError(f"source {self.path}: no documents to read ({what} no text, only "
                              "blank lines or nothing)")
        self.source_id = content_id(f"text:{self.path.name}", *(d.text for d in self._docs))

    def _read(self) -> list[Example]:
        docs = []
        for i, path in enumerate(self.files):
            if path.suffix == ".txt":
                items = [({}, t) for t in _txt_documents(path)]
            else:
                items = [(row, row[self.field]) for row in _jsonl_rows(path, self.field)]
            for row, text in items:
                labels = {name: self._label(path, name, row) for name in self._labels}
                if self.path.is_dir():
                    labels["file"] = i
                docs.append(Example(text=text, labels=labels))
        return docs

    def _label(self, path: Path, name: str, row: dict) -> int:
        value = row.get(name)
        if isinstance(value, bool) or value is None or not isinstance(value, (int, str)):
            raise SourceError(f"{path}: label field {name!r} must be an integer or a string in every row")
        if isinstance(value, int):
            return value
        classes = self.label_classes[name]
        if value not in classes:
            classes.append(value)
        return classes.index(value)

    def __iter__(self) -> Iterator[Example]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)


class DemoCorpus(Source):
    """The bundled demo corpus: Python's own documentation topics (``pydoc_data.topics``),
    about 465k characters (110k SmolLM2 tokens) of real English, one document per topic."""

    kind = "text"
    label_names = ("topic",)

    def __init__(self) -> None:
        from pydoc_data.topics import topics
        self.topics = sorted(topics)
        self._texts = [topics[t].strip() for t in self.topics]
        self.label_classes = {"topic": list(self.topics)}
        self.source_id = content_id("demo:pydoc-topics", *self._texts)

    def __iter__(self) -> Iterator[Example]:
        for i, text in enumerate(self._texts):
            yield Example(text=text, labels={"topic": i})

    def __len__(self) -> int:
        return len(self._texts)
