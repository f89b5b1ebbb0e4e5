"""Moved to project/results/inspect.py; this name keeps `python -m project.inspect` and `import project.inspect` working."""
import sys

from project.results import inspect as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
