"""Cantor pairing (docs/graph-json.md §6): the documented example, inversion, and that it numbers
the (layer, feature) pairs diagonal by diagonal without gaps or collisions."""

from __future__ import annotations

from circuit_atlas.io.cantor import cantor_pair, cantor_unpair


def test_documented_example_and_inverse() -> None:
    assert cantor_pair(1, 3) == 13
    for layer in range(0, 40, 3):
        for feature in (0, 1, 7, 16383, 2**20 - 1, 2**40 + 5):
            assert cantor_unpair(cantor_pair(layer, feature)) == (layer, feature)


def test_pairs_on_the_first_diagonals_fill_a_range() -> None:
    n = 60
    values = [cantor_pair(layer, feature) for layer in range(n) for feature in range(n - layer)]
    assert sorted(values) == list(range(n * (n + 1) // 2))
    # within a diagonal (layer + feature fixed) the value grows with the feature index
    assert [cantor_pair(5 - f, f) for f in range(6)] == list(range(15, 21))
