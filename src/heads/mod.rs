//! What sits on top of the encoder, one file each: [`dense`] (pooled sentence vectors),
//! [`sparse`] (BGE-M3's lexical weights), [`colbert`] (BGE-M3's multi-vector output) and
//! [`classifier`] (the rerankers' logits). Each file loads its head's weights, runs its
//! forward pass on the backend and does the host-side arithmetic FlagEmbedding does on the
//! result. [`Heads::forward`] runs the heads a call asks for on one encoder pass.

pub(crate) mod classifier;
pub(crate) mod colbert;
pub(crate) mod dense;
pub(crate) mod sparse;

use crate::backend::{Backend, PackedBatch};
use crate::config::{ModelConfig, Pooling};
use crate::error::{Error, Result};
use crate::model::Params;

use classifier::Classifier;
use colbert::Colbert;
use sparse::{LexicalWeights, Sparse};

/// One output an encoder pass can feed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Head {
    /// A pooled sentence vector (every model).
    Dense,
    /// BGE-M3's lexical weights (`sparse_linear.pt`).
    Sparse,
    /// BGE-M3's ColBERT vectors (`colbert_linear.pt`).
    Colbert,
    /// A reranker's logits (`*ForSequenceClassification`).
    Classifier,
}

impl Head {
    const ALL: [Head; 4] = [Head::Dense, Head::Sparse, Head::Colbert, Head::Classifier];

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// The head's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Head::Dense => "dense",
            Head::Sparse => "sparse",
            Head::Colbert => "ColBERT",
            Head::Classifier => "classifier",
        }
    }
}

/// A set of heads: those a model has, or those a call asks for.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct HeadSet(u8);

impl HeadSet {
    /// No head.
    pub const EMPTY: HeadSet = HeadSet(0);

    /// The set with `head` added.
    pub const fn with(self, head: Head) -> HeadSet {
        HeadSet(self.0 | 1 << head as u8)
    }

    /// Whether `head` is in the set.
    pub fn contains(self, head: Head) -> bool {
        self.0 & head.bit() != 0
    }

    /// Whether the set has no head.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The heads of this set, in the order of [`Head`]'s variants.
    pub fn iter(self) -> impl Iterator<Item = Head> {
        Head::ALL.into_iter().filter(move |&h| self.contains(h))
    }
}

impl From<Head> for HeadSet {
    fn from(head: Head) -> HeadSet {
        HeadSet::EMPTY.with(head)
    }
}

impl FromIterator<Head> for HeadSet {
    fn from_iter<I: IntoIterator<Item = Head>>(heads: I) -> HeadSet {
        heads.into_iter().fold(HeadSet::EMPTY, HeadSet::with)
    }
}

impl std::fmt::Debug for HeadSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// What one encoder pass computes: the heads, and how the dense head pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Request {
    pub heads: HeadSet,
    pub pooling: Pooling,
    /// L2-normalise the dense vectors.
    pub normalize: bool,
}

impl Request {
    /// Whether any head reads more than each sequence's first row of the last layer (CLS
    /// pooling and the classifier do not, and then the last layer computes those rows only).
    pub fn needs_all_tokens(&self) -> bool {
        self.heads.iter().any(|h| match h {
            Head::Dense => self.pooling == Pooling::Mean,
            Head::Sparse | Head::Colbert => true,
            Head::Classifier => false,
        })
    }
}

/// The host-side results of a [`Request`], one entry per sequence for each head asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Outputs {
    /// `[B][h]`
    pub dense: Vec<Vec<f32>>,
    pub sparse: Vec<LexicalWeights>,
    /// `[B][len - 1][h]`
    pub colbert: Vec<Vec<Vec<f32>>>,
    /// `[B][labels]`
    pub logits: Vec<Vec<f32>>,
}

/// The last hidden state of a batch, and which of its rows were computed.
pub(crate) struct Hidden<'a, B: Backend> {
    /// `[T, h]` every token, or `[B, h]` each sequence's first token only.
    pub states: B::Tensor,
    pub all_tokens: bool,
    pub batch: &'a PackedBatch,
    pub on_device: &'a B::Batch,
}

impl<B: Backend> Hidden<'_, B> {
    /// `[B, h]`: each sequence's first row (`[CLS]` / `<s>`).
    pub fn first_rows(&self, b: &B) -> Result<B::Tensor> {
        let rows: Vec<u32> = match self.all_tokens {
            true => self.batch.first_rows(),
            false => (0..self.batch.sequences() as u32).collect(),
        };
        b.gather_rows(&self.states, &rows)
    }
}

/// Where each optional head's parameters come from, when the model has it.
#[derive(Default)]
pub(crate) struct HeadSources<'a> {
    /// `sparse_linear.pt`, and the token ids its lexical weights leave out.
    pub sparse: Option<(&'a dyn Params, Vec<u32>)>,
    /// `colbert_linear.pt`.
    pub colbert: Option<&'a dyn Params>,
    /// The checkpoint holding `classifier.*`, and the number of labels.
    pub classifier: Option<(&'a dyn Params, usize)>,
}

/// The heads a model has, resident on its backend (the dense head has no weights).
pub(crate) struct Heads<B: Backend> {
    sparse: Option<Sparse<B>>,
    colbert: Option<Colbert<B>>,
    classifier: Option<Classifier<B>>,
}

impl<B: Backend> Heads<B> {
    pub fn load(b: &B, config: &ModelConfig, sources: HeadSources) -> Result<Self> {
        let h = config.hidden_size;
        Ok(Heads {
            sparse: sources
                .sparse
                .map(|(p, skip)| Sparse::load(b, p, h, skip))
                .transpose()?,
            colbert: sources
                .colbert
                .map(|p| Colbert::load(b, p, h))
                .transpose()?,
            classifier: sources
                .classifier
                .map(|(p, labels)| Classifier::load(b, p, h, labels))
                .transpose()?,
        })
    }

    /// The heads this model can run.
    pub fn available(&self) -> HeadSet {
        let optional = [
            (Head::Sparse, self.sparse.is_some()),
            (Head::Colbert, self.colbert.is_some()),
            (Head::Classifier, self.classifier.is_some()),
        ];
        optional
            .into_iter()
            .filter(|&(_, has)| has)
            .map(|(head, _)| head)
            .chain([Head::Dense])
            .collect()
    }

    /// Runs every head `request` asks for on the last hidden state.
    pub fn forward(&self, b: &B, hidden: &Hidden<B>, request: &Request) -> Result<Outputs> {
        let missing =
            |head: Head| Error::InvalidArgument(format!("this model has no {} head", head.name()));
        let mut out = Outputs::default();
        for head in request.heads.iter() {
            match head {
                Head::Dense => {
                    out.dense = dense::forward(b, hidden, request.pooling, request.normalize)?;
                }
                Head::Sparse => {
                    let sparse = self.sparse.as_ref().ok_or_else(|| missing(head))?;
                    out.sparse = sparse.forward(b, hidden)?;
                }
                Head::Colbert => {
                    let colbert = self.colbert.as_ref().ok_or_else(|| missing(head))?;
                    out.colbert = colbert.forward(b, hidden)?;
                }
                Head::Classifier => {
                    let classifier = self.classifier.as_ref().ok_or_else(|| missing(head))?;
                    out.logits = classifier.forward(b, hidden)?;
                }
            }
        }
        Ok(out)
    }
}

/// Splits `[n, cols]` host values into rows.
fn rows(values: Vec<f32>, cols: usize) -> Vec<Vec<f32>> {
    values.chunks(cols.max(1)).map(<[f32]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_sets_hold_what_is_added() {
        let set = HeadSet::from(Head::Colbert).with(Head::Dense);
        assert!(set.contains(Head::Dense) && set.contains(Head::Colbert));
        assert!(!set.contains(Head::Sparse) && !set.contains(Head::Classifier));
        assert_eq!(set.iter().collect::<Vec<_>>(), [Head::Dense, Head::Colbert]);
        assert!(HeadSet::EMPTY.is_empty());
        assert_eq!(format!("{set:?}"), "{Dense, Colbert}");
    }
}
