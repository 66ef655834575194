"""Shared test setup: everything offline, temporary homes, small helpers."""
import os
import tempfile

# Set before any library import: no hub downloads, no update checks.
for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(key, value)
# What LAIT keeps between processes (the language filter's word table): one folder for the suite's processes, the
# xdist workers and the commands they start, and not the user's own cache.
os.environ.setdefault("LAIT_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"lait-test-cache-{os.getuid()}"))

from tests.objectstore import object_store  # noqa: E402,F401  (the laitobj:// stand-in for gs://, for every test)
from tests.relevance.shared_model import model_dir, train_rows  # noqa: E402,F401  (the default relevance model)
