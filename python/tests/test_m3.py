"""bge_rs.BGEM3FlagModel against FlagEmbedding's BGEM3FlagModel (the fixtures)."""

import threading

import numpy as np
import pytest

from bge_rs import BGEM3FlagModel
from conftest import LEXICAL, NORMALIZED, assert_close, load, model, read_json, reference, same_bits, texts


def m3(**kwargs):
    return BGEM3FlagModel(model("tiny-m3"), devices="cpu", use_fp16=False, **kwargs)


def check_lexical(got, want, what):
    """Equal weights for ids on both sides; an id on one side only must weigh less than the
    tolerance (it may cross the ReLU by rounding)."""
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        assert all(isinstance(k, str) and isinstance(v, float) for k, v in g.items())
        for key in set(g) | set(w):
            if key in g and key in w:
                assert_close(g[key], w[key], LEXICAL, f"{what}[{i}] {key}")
            else:
                assert g.get(key, w.get(key)) < LEXICAL[0], f"{what}[{i}]: {key} on one side only"


def colbert_rows(path, prefix=""):
    offsets = load(path, prefix + "colbert_offsets")
    vecs = load(path, prefix + "colbert_vecs")
    return [vecs[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


@pytest.mark.parametrize("max_length", [1024, 32])
def test_encode_matches_bgem3flagmodel(max_length):
    path = f"tiny_m3/encode_max{max_length}.safetensors"
    out = m3().encode(texts("sentences"), max_length=max_length, return_dense=True,
                      return_sparse=True, return_colbert_vecs=True)
    assert set(out) == {"dense_vecs", "lexical_weights", "colbert_vecs"}
    assert_close(out["dense_vecs"], load(path, "dense_vecs"), NORMALIZED, "dense")
    want = read_json(reference(f"tiny_m3/encode_max{max_length}_lexical_weights.json"))["lexical_weights"]
    check_lexical(out["lexical_weights"], want, "lexical")
    assert len(out["colbert_vecs"]) == len(colbert_rows(path))
    for i, (g, w) in enumerate(zip(out["colbert_vecs"], colbert_rows(path))):
        assert g.dtype == np.float32
        assert_close(g, w, NORMALIZED, f"colbert[{i}]")


def test_retrieval_scores():
    model_ = m3()
    q = model_.encode_queries(texts("queries"), return_sparse=True, return_colbert_vecs=True)
    p = model_.encode_corpus(texts("passages"), return_sparse=True, return_colbert_vecs=True)
    path = "tiny_m3/retrieval.safetensors"
    assert_close(q["dense_vecs"], load(path, "queries.dense_vecs"), NORMALIZED, "queries")
    assert_close(p["dense_vecs"], load(path, "passages.dense_vecs"), NORMALIZED, "passages")
    lexical = model_.compute_lexical_matching_score(q["lexical_weights"], p["lexical_weights"])
    assert lexical.shape == (5, 7)
    assert_close(lexical, load(path, "scores.lexical"), LEXICAL, "lexical")
    assert isinstance(model_.compute_lexical_matching_score(q["lexical_weights"][0], p["lexical_weights"][0]), float)
    colbert = [[model_.colbert_score(a, b) for b in p["colbert_vecs"]] for a in q["colbert_vecs"]]
    assert_close(colbert, load(path, "scores.colbert"), NORMALIZED, "colbert")


def test_compute_score():
    fixture = read_json(reference("tiny_m3/compute_score.json"))
    pairs = [tuple(p) for p in fixture["pairs"]]
    model_ = m3()
    colbert_score = load("tiny_m3/retrieval.safetensors", "scores.colbert").reshape(-1)
    for run in ("default_weights", "weighted"):
        w = fixture[run]["weights_for_different_modes"]
        want = fixture[run]["scores"]
        got = model_.compute_score(pairs, weights_for_different_modes=w)
        assert list(got) == ["colbert", "sparse", "dense", "sparse+dense", "colbert+sparse+dense"]
        for key in ("dense", "sparse", "sparse+dense"):
            assert_close(got[key], want[key], LEXICAL, f"{run} {key}")
        # ColBERT over the real rows only: BGEM3FlagModel.colbert_score (README, "bge score").
        assert_close(got["colbert"], colbert_score, NORMALIZED, f"{run} colbert")
        d, s, c = (np.array(got[k]) for k in ("dense", "sparse", "colbert"))
        assert_close(got["colbert+sparse+dense"], (w[0] * d + w[1] * s + w[2] * c) / sum(w), NORMALIZED, run)
    one = model_.compute_score(pairs[0])
    assert all(isinstance(v, float) for v in one.values())
    assert model_.compute_score([]) == []


def test_types_and_the_single_text_form():
    model_ = m3(return_sparse=True, return_colbert_vecs=True)
    one = model_.encode("hello world")
    many = model_.encode(["hello world", "x"])
    assert one["dense_vecs"].shape == (32,) and many["dense_vecs"].shape == (2, 32)
    assert isinstance(one["lexical_weights"], dict) and isinstance(many["lexical_weights"], list)
    assert one["colbert_vecs"].ndim == 2 and len(many["colbert_vecs"]) == 2
    assert same_bits(one["colbert_vecs"], many["colbert_vecs"][0])
    dense_only = m3().encode(["a"])
    assert dense_only["lexical_weights"] is None and dense_only["colbert_vecs"] is None
    tokens = model_.convert_id_to_token(one["lexical_weights"])
    assert isinstance(tokens, dict) and all(isinstance(k, str) for k in tokens)
    assert model_.convert_id_to_token([one["lexical_weights"]]) == tokens
    assert len(model_.convert_id_to_token(many["lexical_weights"])) == 2


def test_the_tutorial_runs_with_only_the_import_changed():
    model_ = BGEM3FlagModel(model("tiny-m3"), use_fp16=True)
    sentences_1 = ["What is BGE M3?", "Defination of BM25"]
    sentences_2 = ["BGE M3 is an embedding model supporting dense retrieval, lexical matching and multi-vector interaction.",
                   "BM25 is a bag-of-words retrieval function that ranks a set of documents based on the query terms appearing in each document"]

    # The README asks for max_length=8192, bge-m3's; the tiny fixture model has 1026 positions.
    embeddings_1 = model_.encode(sentences_1, batch_size=12, max_length=1024)['dense_vecs']
    embeddings_2 = model_.encode(sentences_2)['dense_vecs']
    similarity = embeddings_1 @ embeddings_2.T
    assert similarity.shape == (2, 2)

    output_1 = model_.encode(sentences_1, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    output_2 = model_.encode(sentences_2, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    print(model_.convert_id_to_token(output_1['lexical_weights']))
    lexical_scores = model_.compute_lexical_matching_score(output_1['lexical_weights'][0], output_2['lexical_weights'][0])
    print(lexical_scores)
    print(model_.colbert_score(output_1['colbert_vecs'][0], output_2['colbert_vecs'][0]))

    sentence_pairs = [[i, j] for i in sentences_1 for j in sentences_2]
    scores = model_.compute_score(sentence_pairs, max_passage_length=128, weights_for_different_modes=[0.4, 0.2, 0.4])
    assert all(len(v) == 4 for v in scores.values())


def test_errors():
    with pytest.raises(ValueError, match="not a BGE-M3 model"):
        BGEM3FlagModel(model("tiny-bge"), devices="cpu")
    with pytest.raises(ValueError, match="colbert_dim"):
        m3(colbert_dim=128)
    model_ = m3()
    with pytest.raises(ValueError, match="weights"):
        model_.compute_score([("a", "b")], weights_for_different_modes=[1, 2])
    with pytest.raises(ValueError, match="dense \\+ sparse"):
        model_.compute_score([("a", "b")], weights_for_different_modes=[0, 0, 1])
    with pytest.raises(TypeError, match="pair"):
        model_.compute_score([("a", "b", "c")])
    with pytest.raises(ValueError, match="token id"):
        model_.compute_lexical_matching_score({"x": 1.0}, {"1": 1.0})


def test_eight_threads_share_one_model_bit_for_bit():
    model_ = m3()
    sentences = texts("sentences")
    alone = model_.encode(sentences, return_sparse=True, return_colbert_vecs=True)
    results = [None] * 8
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        results[i] = model_.encode(sentences, return_sparse=True, return_colbert_vecs=True)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert same_bits(r["dense_vecs"], alone["dense_vecs"])
        assert r["lexical_weights"] == alone["lexical_weights"]
        assert all(same_bits(a, b) for a, b in zip(r["colbert_vecs"], alone["colbert_vecs"]))
