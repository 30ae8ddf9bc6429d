"""Diffs on pages: the engine's FileDiffs (lfsserve.hg.diff) as hgweb's JSON blocks and as HTML,
unified or side by side, within a size budget ("diff too large" placeholders past it).

Blocking (the FileDiffs are computed in the executor); rendering is pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from markupsafe import Markup, escape

from ..hg.diff import DiffLimits, FileDiff

__all__ = ["MAX_PAGE_DIFF", "PAGE_LIMITS", "Block", "PageDiff", "page_diff"]

# One file's two sides above this are not diffed on a page (the patch is still at raw-rev).
PAGE_LIMITS = DiffLimits(max_file_bytes=4 << 20, max_output_bytes=8 << 20)
# What a page shows of a diff in all: past it, the remaining files get a placeholder.
MAX_PAGE_DIFF = 1 << 20


def _t(line: bytes) -> str:
    return line.decode("utf-8", "replace")


@dataclass
class Block:
    """One file's part of a diff."""

    fd: FileDiff
    lines: list[bytes]          # hgweb's diff lines: the header without its `diff ...` line, then hunks
    placeholder: str = ""       # set instead of lines when the file is not shown


@dataclass
class PageDiff:
    blocks: list[Block] = field(default_factory=list)
    notice: str = ""

    def json_blocks(self) -> list[dict]:
        """hgweb's `diff` field: [{"blockno", "lines": [{"t", "n", "l"}]}]."""
        out = []
        for i, block in enumerate(self.blocks, 1):
            lines = []
            for n, line in enumerate(block.lines, 1):
                t = line[:1].decode("latin-1") if line[:1] in (b"+", b"-", b"@") else ""
                lines.append({"t": t, "n": n, "l": _t(line)})
            out.append({"blockno": i, "lines": lines})
        return out

    def html(self, sidebyside: bool, file_link) -> Markup:
        """The blocks as HTML tables (`file_link(path)` links a file's name)."""
        parts = []
        for i, block in enumerate(self.blocks, 1):
            fd = block.fd
            name = _t(fd.path2)
            title = Markup('<a href="{}">{}</a>').format(file_link(name), name) if fd.op != "removed" else escape(name)
            if fd.op in ("renamed", "copied"):
                title += Markup(' <span class="muted">({} from {})</span>').format(fd.op, _t(fd.path1))
            elif fd.op in ("added", "removed"):
                title += Markup(' <span class="muted">({})</span>').format(fd.op)
            parts.append(Markup('<section class="box diff" id="d{}" aria-label="diff of {}">'
                                '<div class="head"><span>{}</span></div>').format(i, name, title))
            if block.placeholder:
                parts.append(Markup('<p class="notice">{}</p>').format(block.placeholder))
            elif sidebyside:
                parts.append(_sidebyside(block))
            else:
                parts.append(_unified(block))
            parts.append(Markup("</section>"))
        return Markup("").join(parts)


_ROW = Markup('<tr class="{}"><td class="ln">{}</td><td class="ln">{}</td><td class="code">{}</td></tr>')


def _unified(block: Block) -> Markup:
    rows = []
    old = new = 0
    for line in block.lines:
        c = line[:1]
        text = _t(line.rstrip(b"\n"))
        if line.startswith((b"--- ", b"+++ ")) and old == new == 0:
            rows.append(_ROW.format("fhead", "", "", text))
        elif c == b"@":
            old, new = _hunk_start(line)
            rows.append(_ROW.format("hunk", "", "", text))
        elif c == b"-":
            rows.append(_ROW.format("del", old, "", text))
            old += 1
        elif c == b"+":
            rows.append(_ROW.format("add", "", new, text))
            new += 1
        elif c == b" ":
            rows.append(_ROW.format("ctx", old, new, text))
            old += 1
            new += 1
        else:
            rows.append(_ROW.format("fhead", "", "", text))
    return Markup('<div class="source"><table>{}</table></div>').format(Markup("").join(rows))


def _hunk_start(line: bytes) -> tuple[int, int]:
    try:
        a, b = line.split(b" ")[1:3]
        return int(a[1:].split(b",")[0]) or 1, int(b[1:].split(b",")[0]) or 1
    except (ValueError, IndexError):
        return 1, 1


def _sidebyside(block: Block) -> Markup:
    rows = []
    old = new = 0
    dels: list[tuple[int, str]] = []
    adds: list[tuple[int, str]] = []

    def flush() -> None:
        for k in range(max(len(dels), len(adds))):
            d = dels[k] if k < len(dels) else None
            a = adds[k] if k < len(adds) else None
            rows.append(Markup('<tr><td class="ln">{}</td><td class="code{}">{}</td><td class="ln">{}</td>'
                               '<td class="code{}">{}</td></tr>').format(
                d[0] if d else "", " del" if d else "", d[1] if d else "",
                a[0] if a else "", " add" if a else "", a[1] if a else ""))
        dels.clear()
        adds.clear()

    for line in block.lines:
        c = line[:1]
        text = _t(line.rstrip(b"\n"))[1:]
        if line.startswith((b"--- ", b"+++ ")) and old == new == 0:
            continue
        if c == b"@":
            flush()
            old, new = _hunk_start(line)
            rows.append(Markup('<tr class="hunk"><td class="ln"></td><td colspan="3" class="code">{}</td></tr>')
                        .format(_t(line.rstrip(b"\n"))))
        elif c == b"-":
            dels.append((old, text))
            old += 1
        elif c == b"+":
            adds.append((new, text))
            new += 1
        elif c == b" ":
            flush()
            rows.append(Markup('<tr><td class="ln">{}</td><td class="code">{}</td><td class="ln">{}</td>'
                               '<td class="code">{}</td></tr>').format(old, text, new, text))
            old += 1
            new += 1
        else:
            flush()
            rows.append(Markup('<tr class="fhead"><td colspan="4" class="code">{}</td></tr>')
                        .format(_t(line.rstrip(b"\n"))))
    flush()
    return Markup('<div class="source sbs"><table>{}</table></div>').format(Markup("").join(rows))


def page_diff(fds: list[FileDiff], budget: int = MAX_PAGE_DIFF) -> PageDiff:
    """The blocks a page shows for `fds`, hgweb's way: one block per file whose diff hg prints;
    files past `budget` bytes of diff text (or too large to diff) get placeholders."""
    out = PageDiff()
    used = 0
    skipped = 0
    for fd in fds:
        if fd.too_large:
            out.blocks.append(Block(fd, [], "diff too large: this file's two versions are too big to compare "
                                            "here; the patch has it"))
            continue
        text = fd.text()
        if not text:
            continue
        used += len(text)
        if used > budget:
            skipped += 1
            out.blocks.append(Block(fd, [], "diff too large to show on this page; the patch has it"))
            continue
        lines = text.splitlines(True)
        # hgweb leaves out the `diff -r A -r B path` line: the block's title names the file
        out.blocks.append(Block(fd, lines[1:] if fd.header else lines))
    if skipped:
        out.notice = f"This diff is too large to show whole: {skipped} file(s) are left out; the patch has them all."
    return out
