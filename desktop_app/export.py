"""Figure export: any view to PNG, SVG or PDF at a chosen size (pixels) and resolution,
painted by the view's own ``paint_figure(painter, rect)`` (vector where it can). Every export
carries its record (``desktop_app.figure``): embedded (a PNG text chunk, the SVG's
``<desc>``, the PDF's XMP metadata and creator) and written beside the image as ``F.json``,
which ``main.py render`` draws again."""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path
from typing import Any

from PySide6.QtCore import QMarginsF, QRectF, QSize, QSizeF, Qt
from PySide6.QtGui import QColor, QImage, QPageLayout, QPageSize, QPainter, QPdfWriter
from PySide6.QtSvg import QSvgGenerator

from desktop_app.figure import TEXT_KEY, figure_record, sidecar
from desktop_app.view import View
from engine.api import latentlab_version, record_json
from engine.errors import LatentLabError

FORMATS = ("png", "svg", "pdf")


def _paint(view: View, painter: QPainter, rect: QRectF) -> None:
    painter.fillRect(rect, QColor("white"))
    view.paint_figure(painter, rect)


def check_target(path: Path, width: int, height: int, dpi: int) -> str:
    """The format ``path``'s suffix names; LatentLabError when it, the size or the folder is
    not one a figure can be written as (checked before anything is drawn)."""
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise LatentLabError(f"{path.name}: cannot export as {fmt or 'no suffix'!r}; "
                             f"use one of {', '.join('.' + f for f in FORMATS)}")
    if width < 16 or height < 16 or not 30 <= dpi <= 2400:
        raise LatentLabError(f"figure size {width}x{height} at {dpi} dpi is out of range "
                             "(at least 16x16 pixels, 30 to 2400 dpi)")
    if not path.parent.is_dir():
        raise LatentLabError(f"cannot write {path}: folder {path.parent} does not exist")
    return fmt


def export_figure(view: View, path: str | os.PathLike, width: int = 1200, height: int = 900,
                  dpi: int = 150, record: dict[str, Any] | None = None) -> Path:
    """Write ``view`` to ``path``; the suffix picks the format (png, svg, pdf).
    ``width`` x ``height`` are pixels at ``dpi`` (the printed size is their ratio). The
    figure's record (``record``, else built from the view and its AppState) is embedded and
    written beside it as ``F.json``."""
    path = Path(path)
    fmt = check_target(path, width, height, dpi)
    if record is None:
        record = figure_record(view, getattr(view, "state", None), width, height, dpi, path.parent)
    text = record_json(record)
    rect = QRectF(0, 0, width, height)
    painter = QPainter()
    if fmt == "png":
        image = QImage(width, height, QImage.Format.Format_ARGB32)
        image.fill(Qt.GlobalColor.white)
        dots_per_metre = round(dpi / 0.0254)
        image.setDotsPerMeterX(dots_per_metre)
        image.setDotsPerMeterY(dots_per_metre)
        painter.begin(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        _paint(view, painter, rect)
        painter.end()
        image.setText(TEXT_KEY, text)
        if not image.save(str(path), "PNG"):
            raise LatentLabError(f"cannot write {path}")
    elif fmt == "svg":
        gen = QSvgGenerator()
        gen.setFileName(str(path))
        gen.setSize(QSize(width, height))
        gen.setViewBox(rect)
        gen.setResolution(dpi)
        gen.setTitle(type(view).__name__)
        gen.setDescription(text)
        painter.begin(gen)
        _paint(view, painter, rect)
        painter.end()
    else:
        writer = QPdfWriter(str(path))
        writer.setResolution(dpi)
        writer.setCreator(f"LatentLab {latentlab_version()}")
        writer.setTitle(type(view).__name__)
        writer.setDocumentXmpMetadata(_xmp(text))
        points = QSizeF(width * 72.0 / dpi, height * 72.0 / dpi)
        writer.setPageLayout(QPageLayout(QPageSize(points, QPageSize.Unit.Point),
                                         QPageLayout.Orientation.Portrait, QMarginsF(0, 0, 0, 0)))
        painter.begin(writer)
        _paint(view, painter, rect)
        painter.end()
    if not path.is_file() or path.stat().st_size == 0:
        raise LatentLabError(f"cannot write {path}")
    try:
        sidecar(path).write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise LatentLabError(f"cannot write {sidecar(path)} ({exc.strerror})") from None
    return path


def _xmp(text: str) -> bytes:
    """An XMP packet holding the record as the document's description."""
    return ('<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">'
            f'<dc:description><rdf:Alt><rdf:li xml:lang="x-default">{escape(text)}</rdf:li></rdf:Alt>'
            '</dc:description></rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>').encode()
