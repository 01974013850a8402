//! Text -> token ids exactly as FlagEmbedding feeds them to the model:
//! `tokenizer(text, truncation=True, max_length=L)` in transformers. The special tokens are
//! added by the tokenizer's own post-processor, and the text is cut at its end so that the
//! whole sequence, special tokens included, is at most L long: the closing `[SEP]` / `</s>`
//! is kept. Whatever `truncation` / `padding` the tokenizer.json carries is ignored
//! (all-MiniLM-L6-v2 ships `padding: Fixed(128)`), as transformers overrides it per call.

use std::path::Path;

use tokenizers::{Encoding, TruncationDirection};

use crate::error::{Error, Result};

/// One tokenized text: the ids the encoder sees, without padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// Length before truncation, special tokens included.
    pub untruncated_len: usize,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn truncated(&self) -> bool {
        self.untruncated_len > self.ids.len()
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::MissingFile {
                path: path.to_owned(),
                hint: String::new(),
            });
        }
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        inner.with_padding(None);
        Ok(Tokenizer { inner })
    }

    /// Special tokens the post-processor adds to one sequence (2 for BERT and XLM-R).
    pub fn special_tokens_added(&self) -> usize {
        self.inner
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false))
    }

    /// Tokenizes `texts`, each truncated to `max_length` tokens special tokens included.
    pub fn encode_batch(&self, texts: &[&str], max_length: usize) -> Result<Vec<Encoded>> {
        let added = self.special_tokens_added();
        if max_length < added.max(1) {
            return Err(Error::InvalidArgument(format!(
                "max length {max_length} leaves no room for the {added} special tokens"
            )));
        }
        let raw = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        raw.into_iter()
            .map(|e| self.finish(e, max_length - added))
            .collect()
    }

    pub fn encode(&self, text: &str, max_length: usize) -> Result<Encoded> {
        let mut v = self.encode_batch(&[text], max_length)?;
        Ok(v.remove(0))
    }

    /// Cuts the content to `max_content` tokens, then adds the special tokens.
    fn finish(&self, mut content: Encoding, max_content: usize) -> Result<Encoded> {
        let untruncated_len = content.len() + self.special_tokens_added();
        content.truncate(max_content, 0, TruncationDirection::Right);
        let full = self
            .inner
            .post_process(content, None, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Encoded {
            ids: full.get_ids().to_vec(),
            type_ids: full.get_type_ids().to_vec(),
            untruncated_len,
        })
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
