"""Small report builder shared by every step: Markdown + self-contained HTML with embedded PNG charts.

The Kubeflow UI shows HTML artifacts in a sandboxed iframe that cannot load sibling files, so images are
embedded as base64 data URIs and the HTML carries its own CSS.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.io import write_text_atomic

_CSS = """
body{font-family:-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1f2328;max-width:1100px}
h1{font-size:22px}h2{font-size:17px;border-bottom:1px solid #d0d7de;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d0d7de;padding:4px 10px;text-align:left}
th{background:#f6f8fa}img{max-width:100%;border:1px solid #eee;margin:6px 0}
.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}.note{color:#57606a}
"""


def figure_png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


@dataclass
class Report:
    """Accumulates sections and writes ``<stem>.md`` and ``<stem>.html`` (plus PNG files) to a directory."""

    title: str
    _md: list[str] = field(default_factory=list)
    _html: list[str] = field(default_factory=list)
    _images: dict[str, bytes] = field(default_factory=dict)

    def heading(self, text: str) -> None:
        """Add a section heading."""
        self._md.append(f"\n## {text}\n")
        self._html.append(f"<h2>{html.escape(text)}</h2>")

    def paragraph(self, text: str, css_class: str | None = None) -> None:
        """Add a paragraph of plain text."""
        self._md.append(f"{text}\n")
        cls = f' class="{css_class}"' if css_class else ""
        self._html.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, headers: list[str], rows: list[list[Any]]) -> None:
        """Add a table; floats are shown with 4 significant decimals."""

        def fmt(value: Any) -> str:
            return f"{value:.4f}" if isinstance(value, float) else str(value)

        self._md.append("| " + " | ".join(headers) + " |")
        self._md.append("|" + "---|" * len(headers))
        for row in rows:
            self._md.append("| " + " | ".join(fmt(v).replace("|", "\\|") for v in row) + " |")
        self._md.append("")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>" for row in rows
        )
        self._html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, name: str, png: bytes, alt: str) -> None:
        """Add a PNG image (saved as ``name``, a path relative to the Markdown, embedded in the HTML)."""
        self._images[name] = png
        self._md.append(f"![{alt}]({name})\n")
        data = base64.b64encode(png).decode("ascii")
        self._html.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>')

    def figure(self, name: str, fig: Any, alt: str) -> None:
        """Add a matplotlib figure."""
        self.image(name, figure_png(fig), alt)

    def to_markdown(self) -> str:
        """Return the Markdown text."""
        return f"# {self.title}\n" + "\n".join(self._md) + "\n"

    def to_html(self) -> str:
        """Return a self-contained HTML page."""
        body = "\n".join(self._html)
        return (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n"
        )

    def write(self, directory: str | Path, stem: str = "report") -> tuple[Path, Path]:
        """Write Markdown, HTML and images into ``directory``; return (markdown_path, html_path)."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name, png in self._images.items():
            (out / name).parent.mkdir(parents=True, exist_ok=True)  # names may hold a sub-folder
            (out / name).write_bytes(png)
        md_path = write_text_atomic(out / f"{stem}.md", self.to_markdown())
        html_path = write_text_atomic(out / f"{stem}.html", self.to_html())
        return md_path, html_path
