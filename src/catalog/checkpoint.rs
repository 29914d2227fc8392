//! Local safetensors checkpoints: single file, several files, or a sharded index.

use super::{Family, TensorShape};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read {}: {message}; re-download or re-export the file", path.display())]
    Unreadable { path: PathBuf, message: String },
    #[error("{} lists shard {shard} which is not in {}; copy all shards into the folder", index.display(), dir.display())]
    MissingShard {
        index: PathBuf,
        dir: PathBuf,
        shard: String,
    },
    #[error(
        "the checkpoint in {} has no tensor `{name}`{also}, which {origin} requires; the weights do not match their config: use the config.json that came with these weights",
        dir.display()
    )]
    MissingTensor {
        dir: PathBuf,
        name: String,
        also: String,
        origin: String,
    },
    #[error(
        "tensor `{name}` in {}: {origin} implies shape {expected:?}, the checkpoint has {found:?}; the weights do not match their config: use the config.json that came with these weights",
        file.display()
    )]
    ShapeMismatch {
        name: String,
        file: PathBuf,
        origin: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("loading tensor `{name}` from {}: {message}", dir.display())]
    Load {
        dir: PathBuf,
        name: String,
        message: String,
    },
}

/// An indexed checkpoint: its files and, for every tensor, the file that holds it.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// name → (file index, shape, stored bytes)
    tensors: HashMap<String, (usize, Vec<usize>, u64)>,
}

fn unreadable(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Unreadable {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl Checkpoint {
    /// Indexes the `*.safetensors` files of a folder (or those named by
    /// `model.safetensors.index.json`). Returns `None` when the folder holds no weights.
    pub fn open(dir: &Path) -> Result<Option<Self>, CheckpointError> {
        let index = dir.join("model.safetensors.index.json");
        let mut files: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| unreadable(&index, e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| unreadable(&index, e))?;
            let map = v
                .get("weight_map")
                .and_then(serde_json::Value::as_object)
                .ok_or_else(|| unreadable(&index, "no \"weight_map\" object"))?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|s| s.as_str().map(String::from))
                .collect();
            shards.sort();
            shards.dedup();
            let mut out = Vec::new();
            for shard in shards {
                let p = dir.join(&shard);
                if !p.is_file() {
                    return Err(CheckpointError::MissingShard {
                        index,
                        dir: dir.to_path_buf(),
                        shard,
                    });
                }
                out.push(p);
            }
            out
        } else {
            let rd = std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))?;
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect()
        };
        files.sort();
        if files.is_empty() {
            return Ok(None);
        }
        let mut tensors = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            // SAFETY: the file is mapped read-only; oomlab does not modify checkpoints while
            // reading them (the usual caveat of mmap'd model files).
            let st = unsafe { MmapedSafetensors::new(f) }.map_err(|e| unreadable(f, e))?;
            for (name, view) in st.tensors() {
                tensors.insert(name, (i, view.shape().to_vec(), view.data().len() as u64));
            }
        }
        Ok(Some(Self {
            dir: dir.to_path_buf(),
            files,
            tensors,
        }))
    }

    /// The stored name for a canonical tensor name (`bert.`-style prefixes allowed).
    fn stored_name(&self, family: Family, name: &str) -> Option<String> {
        if self.tensors.contains_key(name) {
            return Some(name.to_string());
        }
        let prefixed = format!("{}.{name}", family.name());
        self.tensors.contains_key(&prefixed).then_some(prefixed)
    }

    /// Checks that every tensor the config implies is present with its shape.
    pub fn validate(
        &self,
        family: Family,
        expected: &[TensorShape],
        origin: &str,
    ) -> Result<(), CheckpointError> {
        for t in expected {
            let Some(stored) = self.stored_name(family, &t.name) else {
                let also = if family.is_decoder() {
                    String::new()
                } else {
                    format!(" (nor `{}.{}`)", family.name(), t.name)
                };
                return Err(CheckpointError::MissingTensor {
                    dir: self.dir.clone(),
                    name: t.name.clone(),
                    also,
                    origin: origin.to_string(),
                });
            };
            let (file, shape, _) = &self.tensors[&stored];
            if *shape != t.shape {
                return Err(CheckpointError::ShapeMismatch {
                    name: stored,
                    file: self.files[*file].clone(),
                    origin: origin.to_string(),
                    expected: t.shape.clone(),
                    found: shape.clone(),
                });
            }
        }
        Ok(())
    }

    /// Loads the expected tensors, converted to `dtype`, keyed by their canonical names.
    pub fn load(
        &self,
        family: Family,
        expected: &[TensorShape],
        dtype: DType,
        device: &Device,
    ) -> Result<HashMap<String, Tensor>, CheckpointError> {
        // SAFETY: read-only mapping, see `open`.
        let st = unsafe { MmapedSafetensors::multi(&self.files) }
            .map_err(|e| unreadable(&self.dir, e))?;
        let mut out = HashMap::with_capacity(expected.len());
        for t in expected {
            let stored = self.stored_name(family, &t.name).ok_or_else(|| {
                CheckpointError::MissingTensor {
                    dir: self.dir.clone(),
                    name: t.name.clone(),
                    also: String::new(),
                    origin: "the config".into(),
                }
            })?;
            let err = |e: candle_core::Error| CheckpointError::Load {
                dir: self.dir.clone(),
                name: stored.clone(),
                message: e.to_string(),
            };
            let tensor = st
                .load(&stored, device)
                .and_then(|x| x.to_dtype(dtype))
                .map_err(err)?;
            out.insert(t.name.clone(), tensor);
        }
        Ok(out)
    }
}
