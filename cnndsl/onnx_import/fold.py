from __future__ import annotations


def fold(tree):
    return (), tree
