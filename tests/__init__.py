"""geproxy's tests; a package so that test modules can import each other and tests.helpers."""
