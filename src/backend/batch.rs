//! The token inputs of one forward pass, packed without padding, and what the checks of
//! [`Backend`](super::Backend) need to know about them.

use crate::error::{Error, Result};

/// The host-side token inputs of one batch, packed without padding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackedBatch {
    /// `[T]` token ids of all sequences, concatenated.
    pub ids: Vec<u32>,
    /// `[T]` token type (segment) ids.
    pub type_ids: Vec<u32>,
    /// `[T]` position ids (BERT: `0..len`; XLM-R: `pad+1 ..`).
    pub position_ids: Vec<u32>,
    /// `[B+1]` sequence `s` is tokens `offsets[s]..offsets[s+1]`; `offsets[0] = 0`.
    pub offsets: Vec<u32>,
}

impl PackedBatch {
    /// `T`, the tokens of all sequences.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }

    /// `B`, the sequences.
    pub fn sequences(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Token range of sequence `s`.
    pub fn range(&self, s: usize) -> std::ops::Range<usize> {
        self.offsets[s] as usize..self.offsets[s + 1] as usize
    }

    /// The first row of every sequence (`[CLS]` / `<s>`).
    pub fn first_rows(&self) -> Vec<u32> {
        self.offsets[..self.sequences()].to_vec()
    }

    /// The batch's [`BatchDims`], after checking the invariants every kernel relies on:
    /// ids, type ids and positions of one length, and offsets that run from 0 to that length
    /// in sequences of at least one token.
    pub fn dims(&self) -> Result<BatchDims> {
        let t = self.ids.len();
        let bad = |m: &str| Err(Error::Shape(format!("batch: {m}")));
        if self.type_ids.len() != t || self.position_ids.len() != t {
            return bad(&format!(
                "{t} ids, {} type ids and {} positions differ in number",
                self.type_ids.len(),
                self.position_ids.len()
            ));
        }
        if self.offsets.first() != Some(&0) || self.offsets.last().map(|&o| o as usize) != Some(t) {
            return bad(&format!("offsets must run from 0 to the {t} tokens"));
        }
        if self.offsets.windows(2).any(|w| w[1] <= w[0]) {
            return bad("every sequence needs at least one token");
        }
        let rows = |v: &[u32]| v.iter().max().map_or(0, |&m| m as usize + 1);
        Ok(BatchDims {
            tokens: t,
            sequences: self.sequences(),
            id_rows: rows(&self.ids),
            position_rows: rows(&self.position_ids),
            type_rows: rows(&self.type_ids),
        })
    }
}

/// The sizes of a checked batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchDims {
    /// `T`
    pub tokens: usize,
    /// `B`
    pub sequences: usize,
    /// The rows the word, position and token-type tables need: one more than the largest
    /// id of each kind (0 for an empty batch).
    pub id_rows: usize,
    /// The rows the position table needs.
    pub position_rows: usize,
    /// The rows the token-type table needs.
    pub type_rows: usize,
}

/// A checked [`PackedBatch`] in host memory: the batch of the reference and CPU backends.
#[derive(Clone, Debug)]
pub struct HostBatch {
    /// The batch as given.
    pub packed: PackedBatch,
    /// Its sizes, from [`PackedBatch::dims`].
    pub dims: BatchDims,
}
