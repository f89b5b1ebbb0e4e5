"""The project-* commands: argument parsing, printing and plots over the library. Nothing in project/ imports this package (tests/test_layering.py)."""
