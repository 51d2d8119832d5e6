"""The test tree itself: pytest imports test modules by basename (rootdir-less "prepend" mode),
so two modules with one name in different folders fail collection for the whole run."""

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_basenames_are_unique() -> None:
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert names, "no test modules found"
    assert [n for n, c in names.items() if c > 1] == []
