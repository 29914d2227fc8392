//! Model specs: the bundled catalog, Hugging Face `config.json` files, and local model folders
//! (config.json + safetensors, sharded index supported).
//!
//! Nothing here touches a device: this module parses, validates and describes shapes.

mod checkpoint;
pub mod hub;

pub use crate::families::{Dims, Family, TensorShape};
pub use checkpoint::{Checkpoint, CheckpointError};
pub use hub::{HubError, HubId};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};

/// One bundled model: a short id and its config.json text.
pub struct Bundled {
    pub id: &'static str,
    pub config_json: &'static str,
    /// Tiny models exist for tests and quick demonstrations.
    pub tiny: bool,
    /// The model's ids on the Hugging Face Hub (the first is its own): `--model` accepts any.
    pub hub_ids: &'static [&'static str],
}

pub const BUNDLED: &[Bundled] = &[
    Bundled {
        id: "bert-base-uncased",
        config_json: include_str!("../../assets/models/bert-base-uncased.json"),
        hub_ids: &["google-bert/bert-base-uncased"],
        tiny: false,
    },
    Bundled {
        id: "bert-large-uncased",
        config_json: include_str!("../../assets/models/bert-large-uncased.json"),
        hub_ids: &["google-bert/bert-large-uncased"],
        tiny: false,
    },
    Bundled {
        id: "distilbert-base-uncased",
        config_json: include_str!("../../assets/models/distilbert-base-uncased.json"),
        hub_ids: &["distilbert/distilbert-base-uncased"],
        tiny: false,
    },
    Bundled {
        id: "TinyLlama-1.1B",
        config_json: include_str!("../../assets/models/TinyLlama-1.1B.json"),
        hub_ids: &["TinyLlama/TinyLlama-1.1B-Chat-v1.0"],
        tiny: false,
    },
    Bundled {
        id: "Llama-3.2-1B",
        config_json: include_str!("../../assets/models/Llama-3.2-1B.json"),
        hub_ids: &["meta-llama/Llama-3.2-1B"],
        tiny: false,
    },
    Bundled {
        id: "Qwen2-0.5B",
        config_json: include_str!("../../assets/models/Qwen2-0.5B.json"),
        hub_ids: &["Qwen/Qwen2-0.5B"],
        tiny: false,
    },
    Bundled {
        id: "Qwen3-0.6B",
        config_json: include_str!("../../assets/models/Qwen3-0.6B.json"),
        hub_ids: &["Qwen/Qwen3-0.6B"],
        tiny: false,
    },
    Bundled {
        id: "Qwen3-30B-A3B",
        config_json: include_str!("../../assets/models/Qwen3-30B-A3B.json"),
        hub_ids: &["Qwen/Qwen3-30B-A3B"],
        tiny: false,
    },
    Bundled {
        id: "Mistral-7B-v0.1",
        config_json: include_str!("../../assets/models/Mistral-7B-v0.1.json"),
        hub_ids: &["mistralai/Mistral-7B-v0.1"],
        tiny: false,
    },
    Bundled {
        id: "Phi-3-mini-4k",
        config_json: include_str!("../../assets/models/Phi-3-mini-4k-instruct.json"),
        hub_ids: &["microsoft/Phi-3-mini-4k-instruct"],
        tiny: false,
    },
    Bundled {
        id: "roberta-base",
        config_json: include_str!("../../assets/models/roberta-base.json"),
        hub_ids: &["FacebookAI/roberta-base"],
        tiny: false,
    },
    Bundled {
        id: "xlm-roberta-base",
        config_json: include_str!("../../assets/models/xlm-roberta-base.json"),
        hub_ids: &["FacebookAI/xlm-roberta-base"],
        tiny: false,
    },
    Bundled {
        id: "gemma-2-2b",
        config_json: include_str!("../../assets/models/gemma-2-2b.json"),
        hub_ids: &["google/gemma-2-2b"],
        tiny: false,
    },
    Bundled {
        id: "gemma-3-1b",
        config_json: include_str!("../../assets/models/gemma-3-1b.json"),
        hub_ids: &["google/gemma-3-1b-pt", "google/gemma-3-1b-it"],
        tiny: false,
    },
    Bundled {
        id: "Mixtral-8x7B-v0.1",
        config_json: include_str!("../../assets/models/Mixtral-8x7B-v0.1.json"),
        hub_ids: &["mistralai/Mixtral-8x7B-v0.1"],
        tiny: false,
    },
    Bundled {
        id: "ModernBERT-base",
        config_json: include_str!("../../assets/models/ModernBERT-base.json"),
        hub_ids: &["answerdotai/ModernBERT-base"],
        tiny: false,
    },
    Bundled {
        id: "bert-tiny",
        config_json: include_str!("../../assets/models/bert-tiny.json"),
        hub_ids: &["google/bert_uncased_L-2_H-128_A-2", "prajjwal1/bert-tiny"],
        tiny: false,
    },
    Bundled {
        id: "bert-mini",
        config_json: include_str!("../../assets/models/bert-mini.json"),
        hub_ids: &["google/bert_uncased_L-4_H-256_A-4", "prajjwal1/bert-mini"],
        tiny: false,
    },
    Bundled {
        id: "bert-small",
        config_json: include_str!("../../assets/models/bert-small.json"),
        hub_ids: &["google/bert_uncased_L-4_H-512_A-8", "prajjwal1/bert-small"],
        tiny: false,
    },
    Bundled {
        id: "bert-medium",
        config_json: include_str!("../../assets/models/bert-medium.json"),
        hub_ids: &["google/bert_uncased_L-8_H-512_A-8", "prajjwal1/bert-medium"],
        tiny: false,
    },
    Bundled {
        id: "SmolLM2-135M",
        config_json: include_str!("../../assets/models/SmolLM2-135M.json"),
        hub_ids: &["HuggingFaceTB/SmolLM2-135M"],
        tiny: false,
    },
    Bundled {
        id: "tiny-bert",
        config_json: include_str!("../../assets/models/tiny-bert.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-distilbert",
        config_json: include_str!("../../assets/models/tiny-distilbert.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-llama",
        config_json: include_str!("../../assets/models/tiny-llama.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-qwen2",
        config_json: include_str!("../../assets/models/tiny-qwen2.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-mistral",
        config_json: include_str!("../../assets/models/tiny-mistral.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-phi3",
        config_json: include_str!("../../assets/models/tiny-phi3.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-roberta",
        config_json: include_str!("../../assets/models/tiny-roberta.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-gemma2",
        config_json: include_str!("../../assets/models/tiny-gemma2.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-gemma3",
        config_json: include_str!("../../assets/models/tiny-gemma3.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-mixtral",
        config_json: include_str!("../../assets/models/tiny-mixtral.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-modernbert",
        config_json: include_str!("../../assets/models/tiny-modernbert.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-qwen3",
        config_json: include_str!("../../assets/models/tiny-qwen3.json"),
        hub_ids: &[],
        tiny: true,
    },
    Bundled {
        id: "tiny-qwen3-moe",
        config_json: include_str!("../../assets/models/tiny-qwen3-moe.json"),
        hub_ids: &[],
        tiny: true,
    },
];

/// Where a model comes from. This is what travels to the worker and into the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRef {
    /// A bundled catalog id (synthetic weights).
    Catalog(String),
    /// A `config.json` file (synthetic weights).
    Config(PathBuf),
    /// A folder with `config.json` and, when present, `*.safetensors` weights.
    Folder(PathBuf),
    /// A Hugging Face Hub id: its snapshot in the local HF cache, downloaded there when missing
    /// (see [`hub`]).
    Hub {
        repo: String,
        revision: Option<String>,
    },
}

impl ModelRef {
    /// Interprets what a user typed, in order: a bundled model (by its id or its Hub id), an
    /// existing config file or folder, a Hugging Face Hub id (`org/name[@revision]`).
    pub fn parse(text: &str) -> Result<Self, CatalogError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CatalogError::Unknown {
                name: String::new(),
            });
        }
        if let Some(b) = BUNDLED.iter().find(|b| {
            b.id.eq_ignore_ascii_case(text)
                || b.hub_ids.iter().any(|h| h.eq_ignore_ascii_case(text))
        }) {
            return Ok(Self::Catalog(b.id.to_string()));
        }
        let path = Path::new(text);
        if path.is_dir() {
            Ok(Self::Folder(path.to_path_buf()))
        } else if path.is_file() {
            Ok(Self::Config(path.to_path_buf()))
        } else if looks_like_path(text) {
            Err(CatalogError::NoSuchPath {
                path: path.to_path_buf(),
            })
        } else if let Some(id) = HubId::parse(text)
            && (id.repo.contains('/') || id.revision.is_some())
        {
            Ok(Self::Hub {
                repo: id.repo,
                revision: id.revision,
            })
        } else {
            Err(CatalogError::Unknown {
                name: text.to_string(),
            })
        }
    }
}

/// A text meant as a file or folder, never a model id: absolute or relative to `.`/`..`/`~`,
/// a Windows path, or a `.json` file name.
fn looks_like_path(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    text.starts_with('/')
        || text.starts_with("./")
        || text.starts_with("../")
        || text.starts_with('~')
        || text.contains('\\')
        || Path::new(&lower)
            .extension()
            .is_some_and(|e| e == "json" || e == "safetensors")
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Catalog(id) => f.write_str(id),
            Self::Config(p) | Self::Folder(p) => write!(f, "{}", p.display()),
            Self::Hub { repo, revision } => match revision {
                Some(r) => write!(f, "{repo}@{r}"),
                None => f.write_str(repo),
            },
        }
    }
}

/// Where a model of the picker comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntrySource {
    Bundled,
    /// Found in the local Hugging Face cache.
    HfCache,
}

/// One model of the window's picker: the text that goes into the model field, its group (the
/// family), parameters and weight bytes per precision.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    pub name: String,
    pub group: String,
    pub source: EntrySource,
    pub params: Option<u64>,
    /// Weight bytes in f32 and in f16/bf16.
    pub f32_bytes: Option<u64>,
    pub half_bytes: Option<u64>,
    /// Why it cannot be swept (an unsupported architecture), when so.
    pub problem: Option<String>,
}

impl CatalogEntry {
    fn of(name: String, source: EntrySource, spec: Result<ModelSpec, CatalogError>) -> Self {
        match spec {
            Ok(s) => Self {
                name,
                group: s.family.to_string(),
                source,
                params: Some(s.dims.published_parameters(s.family)),
                f32_bytes: Some(s.weights_bytes(candle_core::DType::F32)),
                half_bytes: Some(s.weights_bytes(candle_core::DType::F16)),
                problem: None,
            },
            Err(e) => Self {
                name,
                group: "not supported".into(),
                source,
                params: None,
                f32_bytes: None,
                half_bytes: None,
                problem: Some(e.to_string()),
            },
        }
    }

    /// The bundled models (tiny test models in a group of their own).
    #[must_use]
    pub fn bundled() -> Vec<Self> {
        BUNDLED
            .iter()
            .map(|b| {
                let mut e = Self::of(
                    b.id.to_string(),
                    EntrySource::Bundled,
                    ModelSpec::resolve(&ModelRef::Catalog(b.id.to_string())),
                );
                if b.tiny {
                    e.group = "tiny (tests)".into();
                }
                e
            })
            .collect()
    }

    /// The models of the local Hugging Face cache at `cache` (reads each snapshot's config.json,
    /// not its weights): call it off the UI thread.
    #[must_use]
    pub fn cached(cache: &Path) -> Vec<Self> {
        hub::cached_repos(cache)
            .into_iter()
            .map(|(repo, snapshot)| {
                let spec = ModelSpec::resolve(&ModelRef::Config(snapshot.join("config.json"))).map(
                    |mut s| {
                        s.name.clone_from(&repo);
                        s
                    },
                );
                Self::of(repo, EntrySource::HfCache, spec)
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "unknown model '{name}': it is neither a bundled model id, an existing config.json file or model folder, nor a Hugging Face id such as org/name"
    )]
    Unknown { name: String },
    #[error(
        "no such file or folder: {}; give the path of a config.json or of a model folder (config.json + *.safetensors)",
        path.display()
    )]
    NoSuchPath { path: PathBuf },
    #[error("cannot read {}: {source}; check the path and its permissions", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} has no config.json; a model folder needs config.json next to its *.safetensors files", dir.display())]
    NoConfigInFolder { dir: PathBuf },
    #[error(
        "{origin} is empty; it should be a Hugging Face config.json (a JSON object with model_type, hidden_size, ...)"
    )]
    Empty { origin: String },
    #[error(
        "{origin} is not valid JSON ({source}); fix the syntax or point to the model's config.json"
    )]
    NotJson {
        origin: String,
        source: serde_json::Error,
    },
    #[error(
        "{origin} is not a JSON object; a config.json is an object such as {{\"model_type\": \"bert\", ...}}"
    )]
    NotObject { origin: String },
    #[error(
        "{origin}: architecture {found} is not supported; supported families (model_type): {supported} (set \"model_type\" to one of them if the model really is one)"
    )]
    UnknownArchitecture {
        origin: String,
        found: String,
        /// Every family's `model_type`, from the rooms (never a list kept by hand).
        supported: String,
    },
    #[error("{origin}: {message}; {fix}", fix = FIELD_FIX)]
    Field { origin: String, message: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Hub(#[from] HubError),
}

/// What a config field candle or oomlab cannot read asks of the user.
const FIELD_FIX: &str =
    "add or correct this field (compare with the model's published config.json)";

/// A resolved model: its config text, family, dimensions and (for folders) checkpoint.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub reference: ModelRef,
    /// Short name for tables and exports.
    pub name: String,
    /// Human-readable origin of the config, used in error messages.
    pub origin: String,
    pub config_json: String,
    pub family: Family,
    pub dims: Dims,
    /// Present when the folder holds safetensors weights.
    pub checkpoint: Option<Checkpoint>,
}

impl ModelSpec {
    /// Resolves a reference: reads the config, detects the family, parses and checks dimensions,
    /// and (for folders with weights) indexes and validates the checkpoint against the config.
    pub fn resolve(reference: &ModelRef) -> Result<Self, CatalogError> {
        let (name, origin, text, folder) = match reference {
            ModelRef::Catalog(id) => {
                let b = BUNDLED
                    .iter()
                    .find(|b| b.id == id)
                    .ok_or_else(|| CatalogError::Unknown { name: id.clone() })?;
                (
                    id.clone(),
                    format!("bundled config '{id}'"),
                    b.config_json.to_string(),
                    None,
                )
            }
            ModelRef::Config(path) => {
                let text = read(path)?;
                (file_stem_name(path), path.display().to_string(), text, None)
            }
            ModelRef::Folder(dir) => {
                let cfg = dir.join("config.json");
                if !cfg.is_file() {
                    return Err(CatalogError::NoConfigInFolder { dir: dir.clone() });
                }
                let text = read(&cfg)?;
                let name = dir
                    .file_name()
                    .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into());
                (name, cfg.display().to_string(), text, Some(dir.clone()))
            }
            ModelRef::Hub { repo, revision } => {
                let id = HubId {
                    repo: repo.clone(),
                    revision: revision.clone(),
                };
                let dir = hub::resolve(&id, false)?;
                let cfg = dir.join("config.json");
                let text = read(&cfg)?;
                (
                    id.to_string(),
                    format!("{id} ({})", cfg.display()),
                    text,
                    Some(dir),
                )
            }
        };
        let (family, dims) = parse_config(&origin, &text)?;
        let checkpoint = match folder {
            Some(dir) => Checkpoint::open(&dir)?,
            None => None,
        };
        if let Some(ck) = &checkpoint {
            ck.validate(family, &dims.tensors(family), &origin)?;
        }
        let spec = Self {
            reference: reference.clone(),
            name,
            origin,
            config_json: text,
            family,
            dims,
            checkpoint,
        };
        Ok(spec)
    }

    /// Why candle cannot run this model, if it cannot: candle's own config type for the family
    /// does not read the config (a field only it requires, a value it does not know), or its
    /// model does not follow these dims. The PyTorch runtime reads configs with transformers;
    /// candle's runs, plans and estimates ask this before any worker starts.
    #[must_use]
    pub fn candle_refuses(&self) -> Option<String> {
        let room = self.family.room();
        if let Some(why) = &self.dims.candle_refuses {
            return Some(why.clone());
        }
        if let Err(e) = room.check_candle(&self.config_json, &self.dims) {
            return Some(format!(
                "candle's {} config does not read {}: {}; {FIELD_FIX}",
                self.family, self.origin, e.0
            ));
        }
        room.candle_refuses(&self.dims)
    }

    /// SHA-256 of the config text, recorded in the journal so a resume can tell the model changed.
    #[must_use]
    pub fn config_hash(&self) -> String {
        let digest = Sha256::digest(self.config_json.as_bytes());
        digest.iter().fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// Parameters candle's model holds (tied embeddings once; BERT without pooler).
    #[must_use]
    pub fn candle_parameters(&self) -> u64 {
        self.dims.candle_parameters(self.family)
    }

    /// Bytes the weights take in `dtype`, computed from the config alone (no allocation).
    #[must_use]
    pub fn weights_bytes(&self, dtype: candle_core::DType) -> u64 {
        self.candle_parameters() * dtype.size_in_bytes() as u64
    }

    /// What the forward computes, said plainly for results and exports.
    #[must_use]
    pub fn forward_label(&self) -> &'static str {
        self.family.forward_label()
    }
}

fn file_stem_name(path: &Path) -> String {
    // A config.json is named after its folder; any other file after its stem.
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    if stem == "config"
        && let Some(parent) = path.parent().and_then(Path::file_name)
    {
        return parent.to_string_lossy().to_string();
    }
    stem
}

fn read(path: &Path) -> Result<String, CatalogError> {
    std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Detects the family and parses the dimensions of a config text.
pub fn parse_config(origin: &str, text: &str) -> Result<(Family, Dims), CatalogError> {
    if text.trim().is_empty() {
        return Err(CatalogError::Empty {
            origin: origin.to_string(),
        });
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|source| CatalogError::NotJson {
            origin: origin.to_string(),
            source,
        })?;
    let Some(obj) = value.as_object() else {
        return Err(CatalogError::NotObject {
            origin: origin.to_string(),
        });
    };
    let family = Family::detect(obj).map_err(|e| CatalogError::UnknownArchitecture {
        origin: origin.to_string(),
        found: e.found,
        supported: Family::supported_model_types(),
    })?;
    let dims = Dims::from_config(family, &value).map_err(|e| CatalogError::Field {
        origin: origin.to_string(),
        message: e.0,
    })?;
    Ok((family, dims))
}

#[cfg(test)]
mod tests;
