"""examples/ray_embed.py on a local Ray cluster gives `bge embed`'s vectors for the same file.
Ray is a test dependency only (.ci/run installs it into the test venv)."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

from conftest import ROOT, minilm, texts

EXAMPLES = ROOT / "python" / "examples"
sys.path.insert(0, str(EXAMPLES))


def test_ray_data_embeds_as_bge_embed(tmp_path):
    try:
        import ray
    except ImportError as e:  # a failure, not a skip: .ci/run installs ray
        raise AssertionError("ray is missing: pip install 'ray[data]' into the test venv (.ci/run does)") from e
    import ray_embed

    corpus = tmp_path / "corpus.jsonl"
    sentences = [t for t in texts("sentences") if t] * 3
    corpus.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(sentences)))

    bge = ROOT / "target" / "release" / "bge"
    assert bge.is_file(), f"{bge} is missing: cargo build --release"
    out = subprocess.run([str(bge), "embed", "--model", minilm(), "--device", "cpu", "--quiet",
                          "--input", str(corpus)], capture_output=True, check=True, text=True)
    want = np.array([json.loads(line)["dense"] for line in out.stdout.splitlines()], dtype=np.float32)

    # The actors import the example's module too.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(EXAMPLES)}})
    # Two actors on half a CPU each leave Ray a CPU to read the file with. Bounded: the
    # pipeline runs on a thread that gets 300 s.
    rows = []
    def run():
        ds = ray_embed.embed(str(corpus), minilm(), actors=2, batch_size=8, cpus_per_actor=0.5,
                             pooling_method="mean", devices="cpu")
        rows.extend(ds.take_all())
    worker = threading.Thread(target=run, daemon=True)
    try:
        worker.start()
        worker.join(timeout=300)
    finally:
        ray.shutdown()
    assert not worker.is_alive(), "the Ray pipeline did not finish in 300 s"
    assert [r["id"] for r in rows] == list(range(len(sentences)))
    got = np.stack([np.asarray(r["dense"], dtype=np.float32) for r in rows])
    # The CLI prints each f32 in the shortest form that reads back as the same f32.
    assert got.tobytes() == want.tobytes()
