"""bge_rs.FlagModel against FlagEmbedding's FlagModel (the fixtures), its types and its errors."""

import threading
import time

import numpy as np
import pytest

from bge_rs import FlagModel
from conftest import NORMALIZED, UNNORMALIZED, assert_close, load, minilm, model, same_bits, texts

INSTRUCTION = "Represent this sentence for searching relevant passages: "


def tiny(**kwargs):
    return FlagModel(model("tiny-bge"), devices="cpu", use_fp16=False, **kwargs)


def test_encode_matches_flagembedding_at_512_and_16():
    m = tiny()
    sentences = texts("sentences")
    assert_close(m.encode(sentences), load("tiny_bge/flagmodel.safetensors", "encode_max512"), NORMALIZED, "512")
    assert_close(m.encode(sentences, max_length=16), load("tiny_bge/flagmodel.safetensors", "encode_max16"), NORMALIZED, "16")
    raw = tiny(normalize_embeddings=False).encode(sentences)
    assert_close(raw, load("tiny_bge/flagmodel.safetensors", "encode_max512_unnormalized"), UNNORMALIZED, "raw")


def test_queries_passages_and_scores():
    m = tiny(query_instruction_for_retrieval=INSTRUCTION)
    q = m.encode_queries(texts("queries"))
    p = m.encode_corpus(texts("passages"))
    assert_close(q, load("tiny_bge/flagmodel.safetensors", "queries"), NORMALIZED, "queries")
    assert_close(p, load("tiny_bge/flagmodel.safetensors", "passages"), NORMALIZED, "passages")
    assert_close(q @ p.T, load("tiny_bge/flagmodel.safetensors", "scores"), NORMALIZED, "scores")
    # The instruction goes through query_instruction_format, and only into encode_queries.
    fmt = FlagModel(model("tiny-bge"), devices="cpu", query_instruction_for_retrieval="X",
                    query_instruction_format="<{}>{}")
    assert same_bits(fmt.encode_queries("a"), fmt.encode("<X>a"))
    assert same_bits(m.encode(texts("queries")), tiny().encode_queries(texts("queries")))
    # Passage instructions, with FlagEmbedding's own default format "{}{}".
    plain = tiny(passage_instruction_for_retrieval="P: ")
    assert same_bits(plain.encode_corpus("a"), plain.encode("P: a"))
    both = tiny(query_instruction_format="<{}>{}", passage_instruction_for_retrieval="P",
                passage_instruction_format="<{}>{}")
    assert same_bits(both.encode_corpus("a"), both.encode("<P>a"))
    with pytest.raises(ValueError, match="passage_instruction_format"):
        tiny(query_instruction_format="<{}>{}", passage_instruction_for_retrieval="P")


def test_minilm_with_mean_pooling():
    m = FlagModel(minilm(), pooling_method="mean", devices="cpu", passage_max_length=256)
    want = load("minilm/embeddings.safetensors", "mean_normalized")
    assert_close(m.encode(texts("sentences")), want, NORMALIZED, "MiniLM")


def test_types_and_shapes():
    m = tiny()
    one = m.encode("hello")
    many = m.encode(["hello", "world", ""])
    assert one.dtype == np.float32 and one.shape == (32,)
    assert many.dtype == np.float32 and many.shape == (3, 32)
    assert same_bits(one, many[0])
    assert m.encode(("hello", "world")).shape == (2, 32)
    assert m.encode([]).shape == (0, 32)
    assert m.encode_queries("q").shape == (32,) and m.encode_corpus(["p"]).shape == (1, 32)
    short = tiny(truncate_dim=8).encode(["hello", "world"])
    assert short.shape == (2, 8)
    assert np.allclose(np.linalg.norm(short, axis=1), 1, atol=1e-6)
    assert np.allclose(short[0], one[:8] / np.linalg.norm(one[:8]), atol=1e-6)
    # batch_size never changes a vector.
    sentences = texts("sentences")
    assert same_bits(m.encode(sentences, batch_size=1), m.encode(sentences, batch_size=256))
    assert "cpu" in m.device


def test_the_tutorial_runs_with_only_the_import_changed():
    # FlagEmbedding's README example, with the model path of a fixture.
    sentences_1 = ["样例数据-1", "样例数据-2"]
    sentences_2 = ["样例数据-3", "样例数据-4"]
    model_ = FlagModel(model("tiny-bge"),
                       query_instruction_for_retrieval="为这个句子生成表示以用于检索相关文章：",
                       use_fp16=True)
    embeddings_1 = model_.encode(sentences_1)
    embeddings_2 = model_.encode(sentences_2)
    similarity = embeddings_1 @ embeddings_2.T
    assert similarity.shape == (2, 2)

    queries = ['query_1', 'query_2']
    passages = ["样例文档-1", "样例文档-2"]
    q_embeddings = model_.encode_queries(queries)
    p_embeddings = model_.encode(passages)
    scores = q_embeddings @ p_embeddings.T
    assert scores.shape == (2, 2) and np.isfinite(scores).all()


@pytest.mark.parametrize("kwargs, message", [
    ({"pooling_method": "last_token"}, "pooling_method"),
    ({"trust_remote_code": True}, "trust_remote_code"),
    ({"cache_dir": "/tmp"}, "HF_HUB_CACHE"),
    ({"devices": ["cuda:0", "cuda:1"]}, "one device"),
    ({"devices": "tpu"}, "unknown device"),
    ({"convert_to_numpy": False}, "numpy"),
    ({"colour": "red"}, "unknown argument `colour`"),
    ({"query_max_length": 100000}, "max length"),
    ({"batch_size": 0}, "batch size"),
    ({"query_instruction_format": "{}"}, "twice"),
    ({"truncate_dim": 0}, "truncate_dim"),
])
def test_bad_arguments_are_value_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlagModel(model("tiny-bge"), devices=kwargs.pop("devices", "cpu"), **kwargs)


def test_bad_calls_and_missing_models():
    m = tiny()
    with pytest.raises(FileNotFoundError):
        FlagModel("/nonexistent/bge-model", devices="cpu")
    with pytest.raises(TypeError, match="str"):
        m.encode(123)
    with pytest.raises(TypeError):
        m.encode(["a", 1])
    with pytest.raises(ValueError, match="max length"):
        m.encode("a", max_length=1)
    with pytest.raises(ValueError, match="batch size"):
        m.encode("a", batch_size=0)
    with pytest.raises(ValueError, match="numpy"):
        m.encode("a", convert_to_numpy=False)
    with pytest.raises(ValueError, match="unknown argument"):
        m.encode("a", normalize=True)


def test_eight_threads_share_one_model_bit_for_bit():
    m = FlagModel(minilm(), pooling_method="mean", devices="cpu")
    sentences = texts("sentences")
    alone = [m.encode(sentences[i:]) for i in range(8)]
    results = [None] * 8
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        results[i] = [m.encode(sentences[i:]) for _ in range(3)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        assert all(same_bits(r, alone[i]) for r in results[i]), f"thread {i}"


def test_the_gil_is_released_while_encoding():
    m = FlagModel(minilm(), pooling_method="mean", devices="cpu")
    long = [" ".join(["the giant panda is a bear native to south central china"] * 20)] * 64
    ticks = [0]
    done = threading.Event()

    def encode():
        m.encode(long)
        done.set()

    worker = threading.Thread(target=encode)
    worker.start()
    # Sample the counter while the worker is inside encode: with the GIL held for the whole
    # call, this thread could not run at all until encode returned.
    samples = []
    while not done.is_set():
        before = ticks[0]
        deadline = time.perf_counter() + 0.02
        while time.perf_counter() < deadline:
            ticks[0] += 1
        if not done.is_set():
            samples.append(ticks[0] - before)
    worker.join()
    assert len(samples) >= 5, f"encode ended too soon to tell ({len(samples)} samples)"
    assert all(n > 100 for n in samples), samples
