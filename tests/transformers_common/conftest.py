"""tests/transformers_common holds transformers' common test mixins (vendored, see README.md): libraries, not tests.

pytest must not collect them on their own: the mixins only run through the project's test classes that inherit
them (tests/test_conformance_*.py)."""

collect_ignore_glob = ["*.py", "*/*.py"]
