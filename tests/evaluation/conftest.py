import sys
from pathlib import Path

# The tiny offline fixtures of the model layer (tests/embedder/btok_tiny.py) are shared.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "embedder"))
