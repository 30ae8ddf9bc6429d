"""Global tags: `.hgtags` lines `<hex node> <name>` on every head, merged as hg does.

Later lines override earlier ones in a file; a tag set to the null node is deleted. Between
heads, the entry from the newer head wins unless the other head's history for that tag already
superseded it (its history contains the node and is longer).
"""

from __future__ import annotations

from .node import NULLID

__all__ = ["live_tags", "merge_tags", "parse_tags"]

TagHist = dict[bytes, tuple[bytes, list[bytes]]]


def parse_tags(data: bytes) -> TagHist:
    """{name: (node, [older nodes of that tag in this file])}."""
    out: TagHist = {}
    for line in data.splitlines():
        if not line.strip():
            continue
        hexnode, sep, name = line.partition(b" ")
        name = name.strip()
        if not sep or not name:
            continue
        try:
            node = bytes.fromhex(hexnode.decode("ascii"))
        except ValueError:
            continue
        if len(node) != 20:
            continue
        hist: list[bytes] = []
        if name in out:
            old, hist = out[name]
            hist = [*hist, old]
        out[name] = (node, hist)
    return out


def merge_tags(into: TagHist, newer: TagHist) -> None:
    """Merge the tags of a newer head's .hgtags into `into` (in place)."""
    for name, (new_node, new_hist) in newer.items():
        if name not in into:
            into[name] = (new_node, list(new_hist))
            continue
        old_node, old_hist = into[name]
        node = new_node
        # the older entry wins only when it superseded the newer one
        if old_node != new_node and new_node in old_hist and (
                old_node not in new_hist or len(old_hist) > len(new_hist)):
            node = old_node
        hist = list(new_hist)
        hist += [n for n in old_hist if n not in hist]
        into[name] = (node, hist)


def live_tags(hist: TagHist) -> dict[bytes, bytes]:
    return {name: node for name, (node, _) in hist.items() if node != NULLID}
