//! Where a model's files come from: a local directory in the Hugging Face layout, or a hub id
//! (`BAAI/bge-base-en-v1.5`) resolved through the Hugging Face cache that Python also uses
//! (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`), downloading what
//! is missing unless `HF_HUB_OFFLINE=1`.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The files of one model, all local paths.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// The repository name (`bge-base-en-v1.5`), which FlagEmbedding uses to pick defaults.
    pub name: String,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    /// One or more checkpoint files (several for a sharded `model.safetensors.index.json`).
    pub weights: Vec<PathBuf>,
    /// sentence-transformers `1_Pooling/config.json`.
    pub pooling: Option<PathBuf>,
    /// `special_tokens_map.json` and `tokenizer_config.json`, those present, in that order
    /// (the special tokens' roles, e.g. which id is `eos`).
    pub special_tokens: Vec<PathBuf>,
    /// BGE-M3 heads.
    pub colbert_linear: Option<PathBuf>,
    pub sparse_linear: Option<PathBuf>,
}

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const SAFETENSORS: &str = "model.safetensors";
const SAFETENSORS_INDEX: &str = "model.safetensors.index.json";
const PYTORCH_BIN: &str = "pytorch_model.bin";
const POOLING: &str = "1_Pooling/config.json";
const SPECIAL_TOKENS: [&str; 2] = ["special_tokens_map.json", "tokenizer_config.json"];
const COLBERT_LINEAR: &str = "colbert_linear.pt";
const SPARSE_LINEAR: &str = "sparse_linear.pt";

impl ModelFiles {
    /// Resolves `spec`: an existing directory, else a hub id `owner/name`.
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        if path.is_dir() {
            return Self::from_dir(path);
        }
        if is_hub_id(spec) {
            return Hub::from_env(spec).files();
        }
        Err(Error::MissingFile {
            path: spec.into(),
            hint: " (the model is neither a directory nor a Hugging Face id like BAAI/bge-small-en-v1.5)"
                .into(),
        })
    }

    /// The files of a model directory in the Hugging Face layout.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let need = |file: &str| {
            let p = dir.join(file);
            if p.is_file() {
                Ok(p)
            } else {
                Err(Error::MissingFile {
                    path: p,
                    hint: format!(
                        " (a model directory needs {CONFIG}, {TOKENIZER} and {SAFETENSORS} or {PYTORCH_BIN})"
                    ),
                })
            }
        };
        let optional = |file: &str| Some(dir.join(file)).filter(|p| p.is_file());
        let config = need(CONFIG)?;
        let tokenizer = need(TOKENIZER)?;
        let weights = if let Some(p) = optional(SAFETENSORS) {
            vec![p]
        } else if let Some(index) = optional(SAFETENSORS_INDEX) {
            shards(&index)?
                .into_iter()
                .map(|f| need(&f))
                .collect::<Result<_>>()?
        } else {
            vec![need(PYTORCH_BIN)?]
        };
        Ok(ModelFiles {
            name: dir_model_name(dir),
            config,
            tokenizer,
            weights,
            pooling: optional(POOLING),
            special_tokens: SPECIAL_TOKENS.iter().filter_map(|f| optional(f)).collect(),
            colbert_linear: optional(COLBERT_LINEAR),
            sparse_linear: optional(SPARSE_LINEAR),
        })
    }
}

/// The model name of a directory: its own name, or for a snapshot inside a Hugging Face
/// cache (`models--BAAI--bge-m3/snapshots/<commit>`) the repository's name.
fn dir_model_name(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let parent = dir.parent();
    if parent.and_then(name).as_deref() == Some("snapshots")
        && let Some(repo) = parent.and_then(Path::parent).and_then(name)
        && let Some((_, model)) = repo
            .strip_prefix("models--")
            .and_then(|r| r.rsplit_once("--"))
    {
        return model.to_owned();
    }
    name(&dir).unwrap_or_default()
}

/// `owner/name`, both parts non-empty, the way the hub spells repository ids.
fn is_hub_id(spec: &str) -> bool {
    let mut parts = spec.split('/');
    let ok = |s: Option<&str>| {
        s.is_some_and(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The shard file names listed in `model.safetensors.index.json`.
fn shards(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let parsed: Index = crate::config::read_json(index)?;
    let mut files: Vec<String> = parsed.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    if files.iter().any(|f| f.contains("..") || f.starts_with('/')) {
        return Err(Error::config(
            index,
            "shard names must stay inside the model directory",
        ));
    }
    Ok(files)
}

/// A hub repository seen through the local cache, downloading on a miss unless offline.
struct Hub {
    repo: String,
    cache: PathBuf,
    offline: bool,
}

impl Hub {
    fn from_env(repo: &str) -> Self {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let cache = if let Some(c) = env("HF_HUB_CACHE") {
            PathBuf::from(c)
        } else if let Some(home) = env("HF_HOME") {
            PathBuf::from(home).join("hub")
        } else {
            hf_hub::Cache::default().path().clone()
        };
        let offline = env("HF_HUB_OFFLINE").is_some_and(|v| v != "0" && v != "false");
        Hub {
            repo: repo.to_owned(),
            cache,
            offline,
        }
    }

    /// `<cache>/models--owner--name`, the layout of `huggingface_hub`.
    fn repo_dir(&self) -> PathBuf {
        self.cache
            .join(format!("models--{}", self.repo.replace('/', "--")))
    }

    /// The snapshot directory `refs/main` points to, if any.
    fn snapshot(&self) -> Option<PathBuf> {
        let commit = std::fs::read_to_string(self.repo_dir().join("refs/main")).ok()?;
        Some(self.repo_dir().join("snapshots").join(commit.trim()))
    }

    fn cached(&self, file: &str) -> Option<PathBuf> {
        Some(self.snapshot()?.join(file)).filter(|p| p.is_file())
    }

    /// A required file: from the cache, else downloaded, else an error saying how to get it.
    fn need(&self, file: &str) -> Result<PathBuf> {
        if let Some(p) = self.cached(file) {
            return Ok(p);
        }
        let why = if self.offline {
            "HF_HUB_OFFLINE is set".to_owned()
        } else {
            match self.download(file) {
                Ok(p) => return Ok(p),
                Err(e) => format!("download failed: {e}"),
            }
        };
        Err(Error::Hub {
            repo: self.repo.clone(),
            message: format!(
                "{file} is not in the Hugging Face cache {} and {why}; fetch it with `huggingface-cli download {}` (or `hf download`) on a machine with network access, or pass a local directory",
                self.cache.display(),
                self.repo
            ),
        })
    }

    /// An optional file: from the cache, else downloaded when online; absent otherwise.
    fn optional(&self, file: &str) -> Option<PathBuf> {
        self.cached(file)
            .or_else(|| (!self.offline).then(|| self.download(file).ok()).flatten())
    }

    fn download(&self, file: &str) -> std::result::Result<PathBuf, String> {
        let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(self.cache.clone()))
            .with_progress(false)
            .build()
            .map_err(|e| e.to_string())?;
        api.model(self.repo.clone())
            .get(file)
            .map_err(|e| e.to_string())
    }

    fn files(&self) -> Result<ModelFiles> {
        let config = self.need(CONFIG)?;
        let tokenizer = self.need(TOKENIZER)?;
        let weights = match self.optional(SAFETENSORS) {
            Some(p) => vec![p],
            None => match self.optional(SAFETENSORS_INDEX) {
                Some(index) => shards(&index)?
                    .iter()
                    .map(|f| self.need(f))
                    .collect::<Result<_>>()?,
                None => vec![self.need(PYTORCH_BIN)?],
            },
        };
        let name = self.repo.rsplit('/').next().unwrap_or_default().to_owned();
        Ok(ModelFiles {
            name,
            config,
            tokenizer,
            weights,
            pooling: self.optional(POOLING),
            special_tokens: SPECIAL_TOKENS
                .iter()
                .filter_map(|f| self.optional(f))
                .collect(),
            colbert_linear: self.optional(COLBERT_LINEAR),
            sparse_linear: self.optional(SPARSE_LINEAR),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_owner_slash_name() {
        assert!(is_hub_id("BAAI/bge-base-en-v1.5"));
        assert!(is_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(!is_hub_id("bge-base"));
        assert!(!is_hub_id("../x"));
        assert!(!is_hub_id("a/b/c"));
        assert!(!is_hub_id("/abs/path"));
    }
}
