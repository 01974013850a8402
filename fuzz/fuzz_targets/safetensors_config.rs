//! Arbitrary bytes into the safetensors header reader (through the same content dispatch as
//! `WeightFile::open`) and into the `config.json` reader. Errors are expected; panics are bugs.
#![no_main]

use std::path::Path;

use bge::ModelConfig;
use bge::internals::parse_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_bytes(data);
    let _ = ModelConfig::from_json_bytes(Path::new("config.json"), data);
});
