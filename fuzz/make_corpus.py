#!/usr/bin/env python3
"""Seeds fuzz/corpus/ from the test fixtures (stdlib only; run from the repository root).

torch_pickle: the tiny-m3 `.pt` checkpoints and the `data.pkl` of each checkpoint.
safetensors_config: every fixture model's config.json and a small safetensors file.
"""
import glob
import json
import os
import shutil
import struct
import zipfile

TORCH = "fuzz/corpus/torch_pickle"
CONFIG = "fuzz/corpus/safetensors_config"
M3 = "tests/fixtures/models/tiny-m3"

os.makedirs(TORCH, exist_ok=True)
os.makedirs(CONFIG, exist_ok=True)
for name in ["colbert_linear.pt", "sparse_linear.pt", "pytorch_model.bin"]:
    path = os.path.join(M3, name)
    if name.endswith(".pt"):
        shutil.copy(path, TORCH)
    archive = zipfile.ZipFile(path)
    pickle = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
    with open(os.path.join(TORCH, name.split(".")[0] + ".pkl"), "wb") as f:
        f.write(archive.read(pickle))

for config in glob.glob("tests/fixtures/models/*/config.json"):
    shutil.copy(config, os.path.join(CONFIG, config.split("/")[-2] + ".json"))
header = json.dumps({
    "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
    "h": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
    "ids": {"dtype": "I64", "shape": [2], "data_offsets": [32, 48]},
    "__metadata__": {"format": "pt"},
}).encode()
with open(os.path.join(CONFIG, "small.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(header)) + header + bytes(48))
