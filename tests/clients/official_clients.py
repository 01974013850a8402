"""The official Python clients against a running `bge serve` (started by tests/serve.rs).

openai's `embeddings.create` (base64 by default, which the client decodes) and
huggingface_hub's `InferenceClient.feature_extraction` (TEI's `POST /`) must give exactly the
vectors the server's own `/embed` gave (passed in --cases), and surface its errors as their
exceptions. Exits non-zero with a message on the first mismatch.
"""

import argparse
import json
import sys

import numpy as np
import openai
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError


def same_bits(got, want, what):
    got = np.asarray(got, dtype=np.float32)
    want = np.asarray(want, dtype=np.float32)
    if got.shape != want.shape or not np.array_equal(got.view(np.uint32), want.view(np.uint32)):
        sys.exit(f"{what}: got {got.shape} {got.ravel()[:4]}, want {want.shape} {want.ravel()[:4]}")


def expect_status(call, exception, status, what):
    try:
        call()
    except exception as e:
        code = getattr(e, "status_code", None)
        if code is None and getattr(e, "response", None) is not None:
            code = e.response.status_code
        if code != status:
            sys.exit(f"{what}: status {code}, want {status}: {e}")
        return str(e)
    sys.exit(f"{what}: no error, want {status}")


def embedder(args, texts, expected):
    client = openai.OpenAI(base_url=args.url + "/v1", api_key=args.api_key or "none", max_retries=0)
    r = client.embeddings.create(model=args.model, input=texts)
    same_bits([d.embedding for d in r.data], expected, "openai embeddings.create (base64)")
    if r.model != args.model or [d.index for d in r.data] != list(range(len(texts))):
        sys.exit(f"openai: model {r.model}, indices {[d.index for d in r.data]}")
    if r.usage.prompt_tokens <= 0 or r.usage.total_tokens != r.usage.prompt_tokens:
        sys.exit(f"openai: usage {r.usage}")
    r = client.embeddings.create(model=args.model, input=texts[0], encoding_format="float")
    same_bits([r.data[0].embedding], expected[:1], "openai embeddings.create (float)")
    r = client.embeddings.create(model=args.model, input=texts[0], dimensions=8)
    v = np.asarray(r.data[0].embedding)
    if v.shape != (8,) or abs(np.linalg.norm(v) - 1) > 1e-5:
        sys.exit(f"openai dimensions=8: {v}")
    expect_status(
        lambda: client.embeddings.create(model=args.model, input=[""]),
        openai.UnprocessableEntityError,
        422,
        "openai: an empty input",
    )
    if args.api_key:
        wrong = openai.OpenAI(base_url=args.url + "/v1", api_key="wrong", max_retries=0)
        expect_status(
            lambda: wrong.embeddings.create(model=args.model, input=texts[0]),
            openai.AuthenticationError,
            401,
            "openai: a wrong key",
        )
    models = [m.id for m in client.models.list()]
    if models != [args.model]:
        sys.exit(f"openai models.list: {models}")

    hf = InferenceClient(model=args.url, token=args.api_key)
    got = hf.feature_extraction(texts[0])
    same_bits(got, expected[:1], "huggingface_hub feature_extraction")
    got = hf.feature_extraction(texts[1], normalize=True, truncate=True, truncation_direction="right")
    same_bits(got, expected[1:2], "huggingface_hub feature_extraction with options")
    expect_status(lambda: hf.feature_extraction(""), HfHubHTTPError, 422, "huggingface_hub: an empty input")
    if args.api_key:
        wrong = InferenceClient(model=args.url, token="wrong")
        expect_status(lambda: wrong.feature_extraction("a"), HfHubHTTPError, 401, "huggingface_hub: a wrong key")


def reranker(args, texts, expected):
    # Neither client has a rerank call: both must surface the server's clear refusal.
    client = openai.OpenAI(base_url=args.url + "/v1", api_key=args.api_key or "none", max_retries=0)
    message = expect_status(
        lambda: client.embeddings.create(model=args.model, input=texts[0]),
        openai.APIStatusError,
        424,
        "openai on a reranker",
    )
    if "reranker" not in message:
        sys.exit(f"openai on a reranker: {message}")
    hf = InferenceClient(model=args.url, token=args.api_key)
    expect_status(lambda: hf.feature_extraction(texts[0]), HfHubHTTPError, 422, "huggingface_hub on a reranker")
    if len(expected) != len(texts):
        sys.exit(f"/rerank gave {len(expected)} ranks for {len(texts)} texts")


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--cases", required=True, help="JSON: {texts, expected}")
    p.add_argument("--kind", choices=["embedder", "reranker"], required=True)
    p.add_argument("--api-key")
    args = p.parse_args()
    if not args.url.startswith("http://127.0.0.1:"):
        sys.exit(f"{args.url}: the tests talk to 127.0.0.1 only")
    with open(args.cases) as f:
        cases = json.load(f)
    {"embedder": embedder, "reranker": reranker}[args.kind](args, cases["texts"], cases["expected"])
    print(f"ok: {args.kind} at {args.url}")


if __name__ == "__main__":
    main()
