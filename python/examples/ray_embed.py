"""Embed a JSONL corpus with Ray Data, one bge_rs model per actor.

Each line of the input is {"text": ...} (other fields are kept); each output line adds
"dense", the text's vector, exactly what `bge embed` gives for it (a text's vector does not
depend on its batch). On one machine:

    python examples/ray_embed.py --model BAAI/bge-small-en-v1.5 --input corpus.jsonl \
        --output vectors/ --actors 2

On a cluster, start Ray on every node (`ray start --head` on one, `ray start --address=HEAD:6379`
on the others) and run the same command on the head node with `--address auto`: Ray Data
spreads the actors, each holding one model, over the nodes, and reads and writes the files
from paths every node can reach (a shared file system or object storage URLs such as
s3://bucket/corpus.jsonl).
"""

import argparse

import ray

from bge_rs import FlagModel


class Embedder:
    """One model per Ray actor; `__call__` embeds a batch of rows."""

    def __init__(self, model, **options):
        self.model = FlagModel(model, **options)

    def __call__(self, batch):
        texts = [str(t) for t in batch["text"]]
        batch["dense"] = list(self.model.encode(texts))
        return batch


def embed(input_path, model, actors=2, batch_size=64, cpus_per_actor=1.0, **options):
    """The dataset of the input's rows with their "dense" vectors, in input order. Each actor
    reserves `cpus_per_actor` of Ray's CPUs (leave some for reading the input: with every CPU
    held by actors, the read tasks never run)."""
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.read_json(input_path, lines=True)
    return ds.map_batches(
        Embedder,
        fn_constructor_kwargs={"model": model, **options},
        concurrency=actors,
        num_cpus=cpus_per_actor,
        batch_size=batch_size,
        batch_format="numpy",
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True, help="JSONL, one {\"text\": ...} per line")
    p.add_argument("--output", required=True, help="a directory for the JSON output files")
    p.add_argument("--actors", type=int, default=2, help="models (Ray actors) working at once")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--address", help="a Ray cluster's address (auto: the one this node is in)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0)
    p.add_argument("--pooling-method", default="cls")
    args = p.parse_args()
    ray.init(address=args.address)
    ds = embed(args.input, args.model, args.actors, args.batch_size, args.cpus_per_actor,
               pooling_method=args.pooling_method)
    ds.write_json(args.output)


if __name__ == "__main__":
    main()
