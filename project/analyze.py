"""Moved to project/results/analyze.py; this name keeps `python -m project.analyze` and `import project.analyze` working."""
import sys

from project.results import analyze as _moved

if __name__ == "__main__":
    sys.exit(_moved.main())
sys.modules[__name__] = _moved
