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

/// Which end of a long text truncation cuts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Side {
    /// Keep the start, cut the end (FlagEmbedding, and transformers' default).
    #[default]
    Right,
    /// Keep the end, cut the start.
    Left,
}

/// One token of a text, as TEI's `/tokenize` reports it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Token {
    pub id: u32,
    /// The text it covers; a special token's own text.
    pub text: String,
    pub special: bool,
    /// Its byte span in the text (none for special tokens).
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids of the `cls`, `eos`, `pad` and `unk` tokens the model declares (BGE-M3's sparse
    /// head ignores them).
    sparse_skip: Vec<u32>,
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
        Ok(Tokenizer {
            inner,
            sparse_skip: Vec::new(),
        })
    }

    /// A tokenizer that also knows the model's special tokens, from `special_tokens_map.json`
    /// or else `tokenizer_config.json` (where transformers finds `special_tokens_map`).
    pub fn with_special_tokens(mut self, files: &[&Path]) -> Result<Self> {
        let mut roles: Vec<(&str, String)> = Vec::new();
        for file in files.iter().filter(|f| f.is_file()) {
            let map: serde_json::Map<String, serde_json::Value> = crate::config::read_json(file)?;
            for role in ["cls_token", "eos_token", "pad_token", "unk_token"] {
                // A token is a string or {"content": ...}.
                let token = match map.get(role) {
                    Some(serde_json::Value::String(t)) => Some(t.clone()),
                    Some(serde_json::Value::Object(o)) => {
                        o.get("content").and_then(|c| c.as_str()).map(str::to_owned)
                    }
                    _ => None,
                };
                if let Some(t) = token.filter(|_| roles.iter().all(|(r, _)| *r != role)) {
                    roles.push((role, t));
                }
            }
        }
        self.sparse_skip = roles
            .iter()
            .filter_map(|(_, t)| self.inner.token_to_id(t))
            .collect();
        Ok(self)
    }

    /// The ids of the special tokens the sparse head skips (`cls`, `eos`, `pad`, `unk`).
    pub fn sparse_skip_ids(&self) -> &[u32] {
        &self.sparse_skip
    }

    /// Special tokens the post-processor adds to one sequence (2 for BERT and XLM-R).
    pub fn special_tokens_added(&self) -> usize {
        self.inner
            .get_post_processor()
            .map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false))
    }

    /// Tokenizes `texts`, each truncated to `max_length` tokens special tokens included.
    pub fn encode_batch(&self, texts: &[&str], max_length: usize) -> Result<Vec<Encoded>> {
        self.encode_batch_from(texts, max_length, Side::Right)
    }

    /// [`Self::encode_batch`], cutting a long text at `side`: its end (FlagEmbedding's way) or
    /// its start.
    pub fn encode_batch_from(
        &self,
        texts: &[&str],
        max_length: usize,
        side: Side,
    ) -> Result<Vec<Encoded>> {
        let max_content = self.max_content(max_length)?;
        let raw = self
            .inner
            .encode_batch_fast(texts.to_vec(), false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        raw.into_iter()
            .map(|e| self.finish(e, max_content, side))
            .collect()
    }

    pub fn encode(&self, text: &str, max_length: usize) -> Result<Encoded> {
        let mut v = self.encode_batch(&[text], max_length)?;
        Ok(v.remove(0))
    }

    /// A text given as token ids (without special tokens, as a tokenizer gives them for the
    /// text alone): cut to `max_length` at `side` and given the special tokens, as
    /// [`Self::encode_batch_from`] does with the text's own ids.
    pub fn encode_ids(&self, ids: &[u32], max_length: usize, side: Side) -> Result<Encoded> {
        let max_content = self.max_content(max_length)?;
        let vocab = self.inner.get_vocab_size(true);
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary of {vocab} tokens"
            )));
        }
        let n = ids.len();
        let tokens = ids
            .iter()
            .map(|&id| self.inner.id_to_token(id).unwrap_or_default())
            .collect();
        let content = Encoding::new(
            ids.to_vec(),
            vec![0; n],
            tokens,
            vec![None; n],
            vec![(0, 0); n],
            vec![0; n],
            vec![1; n],
            Vec::new(),
            Default::default(),
        );
        self.finish(content, max_content, side)
    }

    /// The tokens of `text` with their byte spans in it (`None` for the special tokens the
    /// post-processor adds), as TEI's `/tokenize` lists them.
    pub fn tokens(&self, text: &str, add_special_tokens: bool) -> Result<Vec<Token>> {
        let e = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok((0..e.len())
            .map(|i| {
                let special = e.get_special_tokens_mask()[i] == 1;
                let (start, stop) = e.get_offsets()[i];
                let span = text.get(start..stop).filter(|_| !special);
                Token {
                    id: e.get_ids()[i],
                    text: span.map_or_else(|| e.get_tokens()[i].clone(), str::to_owned),
                    special,
                    start: span.map(|_| start),
                    stop: span.map(|_| stop),
                }
            })
            .collect())
    }

    /// The content tokens `max_length` leaves room for beside the special tokens.
    fn max_content(&self, max_length: usize) -> Result<usize> {
        let added = self.special_tokens_added();
        if max_length < added.max(1) {
            return Err(Error::InvalidArgument(format!(
                "max length {max_length} leaves no room for the {added} special tokens"
            )));
        }
        Ok(max_length - added)
    }

    /// Cuts the content to `max_content` tokens at `side`, then adds the special tokens.
    fn finish(&self, mut content: Encoding, max_content: usize, side: Side) -> Result<Encoded> {
        let untruncated_len = content.len() + self.special_tokens_added();
        let direction = match side {
            Side::Right => TruncationDirection::Right,
            Side::Left => TruncationDirection::Left,
        };
        content.truncate(max_content, 0, direction);
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

    /// A cross-encoder input built at the id level as FlagReranker does with
    /// `prepare_for_model` (FlagEmbedding 1.4.2 on transformers 4, `reranker/encoder_only/base.py`):
    /// the query without special tokens cut to `query_max_length`, the passage cut to
    /// `max_length`, then `truncation='only_second'`: the passage loses as many tokens from its
    /// end as the pair (special tokens included) exceeds `max_length`, unless that would leave
    /// it empty, in which case nothing is cut (transformers logs an error and keeps the pair).
    pub fn encode_pair(
        &self,
        query: &str,
        passage: &str,
        query_max_length: usize,
        max_length: usize,
    ) -> Result<Encoded> {
        let raw = |t: &str| {
            self.inner
                .encode_fast(t, false)
                .map_err(|e| Error::Tokenizer(e.to_string()))
        };
        let (mut q, mut p) = (raw(query)?, raw(passage)?);
        let added = self
            .inner
            .get_post_processor()
            .map_or(0, |pp| tokenizers::PostProcessor::added_tokens(pp, true));
        let untruncated_len = q.len() + p.len() + added;
        q.truncate(query_max_length, 0, TruncationDirection::Right);
        p.truncate(max_length, 0, TruncationDirection::Right);
        let excess = (q.len() + p.len() + added).saturating_sub(max_length);
        if excess > 0 && p.len() > excess {
            let keep = p.len() - excess;
            p.truncate(keep, 0, TruncationDirection::Right);
        }
        let full = self
            .inner
            .post_process(q, Some(p), true)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(Encoded {
            ids: full.get_ids().to_vec(),
            type_ids: full.get_type_ids().to_vec(),
            untruncated_len,
        })
    }

    /// The text of `ids`, special tokens included (transformers' `tokenizer.decode(ids)`).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
