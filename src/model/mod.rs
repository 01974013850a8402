//! The transformer on top of a backend: where its parameters come from ([`Params`]), how token
//! ids become a [`PackedBatch`], and the encoder itself ([`encoder`]).

pub mod encoder;

pub(crate) use encoder::load_linear;
pub use encoder::{Encoder, Probe};

use crate::backend::PackedBatch;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tokenize::Encoded;
use crate::weights::Weights;

/// A source of named f32 parameters (Hugging Face names, relative to the encoder).
pub trait Params {
    /// Parameter `name`, checked to have `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>>;
}

/// A whole file as parameters, names as stored (e.g. `colbert_linear.pt`: `weight`, `bias`).
impl Params for Weights {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.f32(name, shape)
    }
}

/// Parameters read from a checkpoint. Encoder weights may sit under a prefix: none in the BGE
/// embedders, `bert.` in BERT task models, `roberta.` in the XLM-R rerankers.
pub struct Checkpoint<'a> {
    weights: &'a Weights,
    prefix: &'static str,
}

impl<'a> Checkpoint<'a> {
    const PREFIXES: [&'static str; 3] = ["", "bert.", "roberta."];

    pub fn new(weights: &'a Weights) -> Result<Self> {
        let probe = "embeddings.word_embeddings.weight";
        match Self::PREFIXES
            .into_iter()
            .find(|p| weights.contains(&format!("{p}{probe}")))
        {
            Some(prefix) => Ok(Checkpoint { weights, prefix }),
            None => Err(weights.missing(probe)),
        }
    }

    /// The same checkpoint read without the encoder prefix (for heads stored beside it, such
    /// as a reranker's `classifier.*`).
    pub fn unprefixed(&self) -> Checkpoint<'a> {
        Checkpoint {
            weights: self.weights,
            prefix: "",
        }
    }
}

impl Params for Checkpoint<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        // Checkpoints converted from TensorFlow name LayerNorm parameters gamma / beta.
        let legacy = full
            .strip_suffix("LayerNorm.weight")
            .map(|p| format!("{p}LayerNorm.gamma"))
            .or_else(|| {
                full.strip_suffix("LayerNorm.bias")
                    .map(|p| format!("{p}LayerNorm.beta"))
            });
        match legacy {
            Some(old) if !self.weights.contains(&full) && self.weights.contains(&old) => {
                self.weights.f32(&old, shape)
            }
            _ => self.weights.f32(&full, shape),
        }
    }
}

/// Deterministic random parameters at a model's real shapes, for benchmarks: uniform in
/// `[-0.05, 0.05)`, LayerNorm gains 1. Speed does not depend on the values.
pub struct RandomParams {
    pub seed: u64,
}

impl Params for RandomParams {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        if name.ends_with("LayerNorm.weight") {
            return Ok(vec![1.0; n]);
        }
        let salt = name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let mut rng = SplitMix64(self.seed ^ salt);
        Ok((0..n).map(|_| (rng.unit_f32() - 0.5) * 0.1).collect())
    }
}

/// SplitMix64, the generator `peer_bench.py` and candle-peer use, so `bge bench` feeds the
/// exact token ids the peers see.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`: the top 24 bits, so every value is an exact f32.
    pub fn unit_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Uniform in `lo..=hi` (modulo bias as in the peers).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Packs tokenized sequences into one batch, computing each architecture's position ids.
pub fn pack(config: &ModelConfig, seqs: &[&Encoded]) -> Result<PackedBatch> {
    let mut b = PackedBatch {
        offsets: vec![0],
        ..PackedBatch::default()
    };
    for s in seqs {
        if s.ids.len() > config.max_tokens() {
            return Err(Error::InvalidArgument(format!(
                "a sequence of {} tokens exceeds the model's limit of {}",
                s.ids.len(),
                config.max_tokens()
            )));
        }
        b.ids.extend_from_slice(&s.ids);
        b.type_ids.extend_from_slice(&s.type_ids);
        // BERT: 0..len. XLM-R: padding_idx + cumsum(mask), i.e. pad+1, pad+2, ... for real
        // tokens (modeling_xlm_roberta.py, create_position_ids_from_input_ids).
        let first = config.first_position() as u32;
        b.position_ids
            .extend((0..s.ids.len() as u32).map(|i| first + i));
        b.offsets.push(b.ids.len() as u32);
    }
    let dims = b.dims()?;
    for (what, needed, rows) in [
        ("token id", dims.id_rows, config.vocab_size),
        (
            "position",
            dims.position_rows,
            config.max_position_embeddings,
        ),
        ("token type", dims.type_rows, config.type_vocab_size),
    ] {
        if needed > rows {
            return Err(Error::InvalidArgument(format!(
                "{what} {} is outside the model's {rows} {what}s: the tokenizer and the weights do not belong together",
                needed - 1
            )));
        }
    }
    Ok(b)
}
