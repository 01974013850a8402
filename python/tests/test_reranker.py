"""bge_rs.FlagReranker against FlagEmbedding's FlagReranker (the fixtures)."""

import threading

import pytest

from bge_rs import FlagReranker
from conftest import LOGITS, SIGMOID, assert_close, model, read_json, reference


def reranker(**kwargs):
    return FlagReranker(model("tiny-reranker"), devices="cpu", **kwargs)


def test_scores_match_flagreranker():
    fixture = read_json(reference("tiny_reranker/scores.json"))
    pairs = [tuple(p) for p in fixture["pairs"]]
    r = reranker()
    for run in fixture["runs"]:
        L = run["max_length"]
        assert_close(r.compute_score(pairs, max_length=L), run["prepare_for_model_scores"], LOGITS, f"{L}")
        got = r.compute_score(pairs, max_length=L, normalize=True)
        assert_close(got, run["prepare_for_model_scores_normalized"], SIGMOID, f"{L} normalized")
        constructed = reranker(max_length=L, normalize=True).compute_score(pairs)
        assert constructed == got


def test_a_single_pair_gives_a_list_as_flagembedding_1_4_2_does():
    r = reranker()
    one = r.compute_score(["what is panda?", "hi"])
    assert isinstance(one, list) and len(one) == 1 and isinstance(one[0], float)
    both = r.compute_score([["what is panda?", "hi"], ["what is panda?", "The giant panda is a bear."]])
    assert both[0] == one[0] and len(both) == 2
    assert r.compute_score([]) == []
    assert reranker(query_max_length=4).compute_score(["a b c d e f g h", "x"]) == r.compute_score(
        ["a b c d e f g h", "x"], query_max_length=4)


def test_errors():
    with pytest.raises(ValueError, match="not a reranker"):
        FlagReranker(model("tiny-bge"), devices="cpu")
    with pytest.raises(ValueError, match="instructions"):
        reranker(query_instruction_for_rerank="Q: ")
    with pytest.raises(ValueError, match="unknown argument `passage_max_length`"):
        reranker(passage_max_length=512)
    with pytest.raises(FileNotFoundError):
        FlagReranker("/nonexistent/reranker", devices="cpu")
    r = reranker()
    with pytest.raises(TypeError, match="pair"):
        r.compute_score([("a",)])
    with pytest.raises(ValueError, match="max length"):
        r.compute_score([("a", "b")], max_length=100000)


def test_eight_threads_share_one_model_bit_for_bit():
    fixture = read_json(reference("tiny_reranker/scores.json"))
    pairs = [tuple(p) for p in fixture["pairs"]]
    r = reranker()
    alone = r.compute_score(pairs)
    results = [None] * 8
    barrier = threading.Barrier(8)

    def work(i):
        barrier.wait()
        results[i] = r.compute_score(pairs)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(res == alone for res in results)
