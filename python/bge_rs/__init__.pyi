"""Type stubs of bge_rs: FlagEmbedding 1.4.2's classes (LLMEmbedder: 1.2.11's) on bge's engine."""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

Devices = Union[str, int, List[Union[str, int]], None]
Sentences = Union[str, Sequence[str]]
Pair = Union[Tuple[str, str], Sequence[str]]
LexicalWeights = Dict[str, float]

class FlagModel:
    """An embedder with FlagEmbedding's FlagModel API (bge v1 / v1.5, any BERT or XLM-R embedder).

    `devices`: "cpu", "cuda", "cuda:N" (GPU N through wgpu), or None (a hardware GPU if any,
    else the CPU). `use_fp16`: f16 weights on a GPU; the CPU stays f32. `use_bf16`: bf16 on a
    CPU with AVX-512 BF16. Arguments that mean nothing without PyTorch raise ValueError.
    """

    def __init__(
        self,
        model_name_or_path: str,
        normalize_embeddings: bool = True,
        use_fp16: bool = True,
        use_bf16: bool = False,
        query_instruction_for_retrieval: Optional[str] = None,
        query_instruction_format: str = "{}{}",
        devices: Devices = None,
        pooling_method: str = "cls",
        trust_remote_code: bool = False,
        cache_dir: Optional[str] = None,
        batch_size: int = 256,
        query_max_length: int = 512,
        passage_max_length: int = 512,
        convert_to_numpy: bool = True,
        truncate_dim: Optional[int] = None,
        **kwargs: Any,
    ) -> None: ...
    def encode(
        self,
        sentences: Sentences,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        convert_to_numpy: Optional[bool] = None,
    ) -> npt.NDArray[np.float32]:
        """No instruction; a str gives shape (dim,), a list (n, dim)."""
    def encode_queries(
        self,
        queries: Sentences,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        convert_to_numpy: Optional[bool] = None,
    ) -> npt.NDArray[np.float32]:
        """The query instruction before each query; query_max_length by default."""
    def encode_corpus(
        self,
        corpus: Sentences,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        convert_to_numpy: Optional[bool] = None,
    ) -> npt.NDArray[np.float32]:
        """The passage instruction (if given) before each passage."""
    @property
    def device(self) -> str:
        """The device and precision the model runs on, in words."""

class BGEM3FlagModel:
    """BGE-M3 with FlagEmbedding's BGEM3FlagModel API: dense, sparse and ColBERT outputs."""

    def __init__(
        self,
        model_name_or_path: str,
        normalize_embeddings: bool = True,
        use_fp16: bool = True,
        use_bf16: bool = False,
        query_instruction_for_retrieval: Optional[str] = None,
        query_instruction_format: str = "{}{}",
        devices: Devices = None,
        pooling_method: str = "cls",
        trust_remote_code: bool = False,
        cache_dir: Optional[str] = None,
        colbert_dim: int = -1,
        batch_size: int = 256,
        query_max_length: int = 512,
        passage_max_length: int = 512,
        return_dense: bool = True,
        return_sparse: bool = False,
        return_colbert_vecs: bool = False,
        truncate_dim: Optional[int] = None,
        **kwargs: Any,
    ) -> None: ...
    def encode(
        self,
        sentences: Sentences,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        return_dense: Optional[bool] = None,
        return_sparse: Optional[bool] = None,
        return_colbert_vecs: Optional[bool] = None,
        convert_to_numpy: Optional[bool] = None,
    ) -> Dict[str, Any]:
        """{"dense_vecs", "lexical_weights", "colbert_vecs"}; None for what was not asked."""
    def encode_queries(
        self,
        queries: Sentences,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        return_dense: Optional[bool] = None,
        return_sparse: Optional[bool] = None,
        return_colbert_vecs: Optional[bool] = None,
        convert_to_numpy: Optional[bool] = None,
    ) -> Dict[str, Any]: ...
    def encode_corpus(
        self,
        corpus: Sentences,
        batch_size: Optional[int] = None,
        max_length: Optional[int] = None,
        return_dense: Optional[bool] = None,
        return_sparse: Optional[bool] = None,
        return_colbert_vecs: Optional[bool] = None,
        convert_to_numpy: Optional[bool] = None,
    ) -> Dict[str, Any]: ...
    def compute_lexical_matching_score(
        self,
        lexical_weights_1: Union[LexicalWeights, List[LexicalWeights]],
        lexical_weights_2: Union[LexicalWeights, List[LexicalWeights]],
    ) -> Union[float, npt.NDArray[np.float32]]:
        """Sum over shared token ids of the weights' products (a matrix for two lists)."""
    def colbert_score(self, q_reps: npt.ArrayLike, p_reps: npt.ArrayLike) -> float:
        """Mean over query vectors of the best dot product with a passage vector."""
    def convert_id_to_token(
        self, lexical_weights: Union[LexicalWeights, List[LexicalWeights]]
    ) -> Union[Dict[str, float], List[Dict[str, float]]]:
        """Lexical weights keyed by token text."""
    def compute_score(
        self,
        sentence_pairs: Union[Pair, Sequence[Pair]],
        batch_size: Optional[int] = None,
        max_query_length: Optional[int] = None,
        max_passage_length: Optional[int] = None,
        weights_for_different_modes: Optional[Sequence[float]] = None,
    ) -> Union[Dict[str, List[float]], Dict[str, float], List[Any]]:
        """{"colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"}."""
    @property
    def device(self) -> str: ...

class FlagReranker:
    """A cross-encoder with FlagEmbedding's FlagReranker API."""

    def __init__(
        self,
        model_name_or_path: str,
        use_fp16: bool = False,
        query_instruction_for_rerank: Optional[str] = None,
        query_instruction_format: str = "{}{}",
        passage_instruction_for_rerank: Optional[str] = None,
        passage_instruction_format: str = "{}{}",
        trust_remote_code: bool = False,
        cache_dir: Optional[str] = None,
        devices: Devices = None,
        batch_size: int = 128,
        query_max_length: Optional[int] = None,
        max_length: int = 512,
        normalize: bool = False,
        **kwargs: Any,
    ) -> None: ...
    def compute_score(
        self,
        sentence_pairs: Union[Pair, Sequence[Pair]],
        batch_size: Optional[int] = None,
        query_max_length: Optional[int] = None,
        max_length: Optional[int] = None,
        normalize: Optional[bool] = None,
    ) -> List[float]:
        """One score per pair (a list also for one pair); the sigmoid with normalize."""
    @property
    def device(self) -> str: ...

class LLMEmbedder:
    """LLM-Embedder with FlagEmbedding 1.2.11's API (tasks: qa, convsearch, chat, lrlm, icl, tool)."""

    def __init__(
        self,
        model_name_or_path: str,
        pooling_method: str = "cls",
        normalize_embeddings: bool = True,
        use_fp16: bool = True,
        devices: Devices = None,
    ) -> None: ...
    def encode_queries(
        self, queries: Sentences, batch_size: int = 256, max_length: int = 256, task: str = "qa"
    ) -> npt.NDArray[np.float32]: ...
    def encode_keys(
        self, keys: Sentences, batch_size: int = 256, max_length: int = 512, task: str = "qa"
    ) -> npt.NDArray[np.float32]: ...
    @property
    def device(self) -> str: ...
