"""Mercurial wire protocol front ends: v1 (`?cmd=`) and v2 (framed CBOR)."""
