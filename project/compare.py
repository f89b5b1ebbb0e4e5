"""Moved to project/results/compare.py; this name keeps `python -m project.compare` and `import project.compare` working."""
import sys

from project.results import compare as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
