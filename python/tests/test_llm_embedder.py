"""bge_rs.LLMEmbedder against FlagEmbedding 1.2.11's LLMEmbedder (the fixtures, on tiny-bge)."""

import numpy as np
import pytest

from bge_rs import LLMEmbedder
from conftest import NORMALIZED, assert_close, load, model, read_json, reference, texts

TASKS = ["qa", "convsearch", "chat", "lrlm", "icl", "tool"]


def test_queries_keys_and_scores_per_task():
    table = read_json(reference("llm_embedder/instructions.json"))
    assert sorted(table["instructions"]) == sorted(TASKS)
    m = LLMEmbedder(model("tiny-bge"), use_fp16=False, devices="cpu")
    for task in TASKS:
        q = m.encode_queries(texts("queries"), task=task)
        k = m.encode_keys(texts("passages"), task=task)
        path = "llm_embedder/embeddings.safetensors"
        assert_close(q, load(path, f"{task}.queries"), NORMALIZED, f"{task} queries")
        assert_close(k, load(path, f"{task}.keys"), NORMALIZED, f"{task} keys")
        assert_close(q @ k.T, load(path, f"{task}.scores"), NORMALIZED, f"{task} scores")


def test_the_readme_example_runs_with_only_the_import_changed():
    queries = ["test query 1", "test query 2"]
    keys = ["test key 1", "test key 2"]
    model_ = LLMEmbedder(model("tiny-bge"), use_fp16=False)
    task = "qa"
    query_embeddings = model_.encode_queries(queries, task=task)
    key_embeddings = model_.encode_keys(keys, task=task)
    similarity = query_embeddings @ key_embeddings.T
    assert similarity.shape == (2, 2)
    assert model_.encode_queries("one").shape == (32,)
    assert query_embeddings.dtype == np.float32


def test_errors():
    m = LLMEmbedder(model("tiny-bge"), devices="cpu")
    with pytest.raises(ValueError, match="task"):
        m.encode_queries(["q"], task="poetry")
    with pytest.raises(ValueError, match="pooling_method"):
        LLMEmbedder(model("tiny-bge"), pooling_method="max")
