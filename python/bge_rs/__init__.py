"""bge_rs: BAAI's BGE embedding models without PyTorch.

FlagEmbedding's classes, with its constructor arguments and methods, on bge's Rust kernels
(SIMD on the CPU, WGSL through wgpu on a GPU): change the import and keep the code.

    from bge_rs import FlagModel

    model = FlagModel("BAAI/bge-small-en-v1.5", query_instruction_for_retrieval="...")
    q = model.encode_queries(["what is a panda?"])
    p = model.encode(["The giant panda is a bear."])
    scores = q @ p.T

Every model is safe to share between threads, and releases the GIL while it computes.
"""

import os

# Mesa's Vulkan device-select layer prints "XDG_RUNTIME_DIR is invalid" on headless machines
# when bge looks for a GPU; it only reorders adapters, which bge does itself (as the `bge`
# binary, it is switched off when that variable is unset).
if "XDG_RUNTIME_DIR" not in os.environ:
    os.environ.setdefault("NODEVICE_SELECT", "1")

from ._bge import BGEM3FlagModel, FlagModel, FlagReranker, LLMEmbedder, __version__  # noqa: E402

__all__ = ["BGEM3FlagModel", "FlagModel", "FlagReranker", "LLMEmbedder", "__version__"]
