"""The self-hosted, OpenAI-compatible fine-tuning and chat server (python -m trainer)."""

import importlib
import threading
from types import ModuleType

# Chat (torch, transformers) and moderation (scikit-learn, which imports torch when it is installed) import their
# libraries in worker threads. Two threads importing them at once can each wait on a module the other is importing,
# and Python then hands one of them the half-imported module ("partially initialized module 'torch' has no attribute
# 'Tensor'"): a moderation check failed so while the chat models loaded. One such import at a time.
IMPORT_LOCK = threading.Lock()


def import_heavy(name: str) -> ModuleType:
    """Import a module that pulls in the big libraries, one such import at a time (call it from a worker thread)."""
    with IMPORT_LOCK:
        return importlib.import_module(name)
