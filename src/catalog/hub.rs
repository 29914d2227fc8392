//! Hugging Face Hub ids (`org/name[@revision]`): the local Hugging Face cache exactly as the HF
//! libraries lay it out, with no network; then, where the network is reachable and
//! `HF_HUB_OFFLINE` is not set, the Hub itself through the hf-hub crate (`config.json`, and the
//! safetensors weights when asked), downloaded into that same cache.
//!
//! Cache layout (`huggingface_hub`'s): `<cache>/models--org--name/refs/<revision>` holds a commit
//! hash; `<cache>/models--org--name/snapshots/<commit>/<file>` are symlinks into `blobs/`.

use std::fmt;
use std::path::{Path, PathBuf};

/// A model on the Hub: `org/name` (or a legacy bare `name`) and an optional revision (a branch,
/// tag or commit hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: Option<String>,
}

impl HubId {
    /// Reads `org/name[@revision]` or `name[@revision]`; None when the text cannot be a Hub id.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let (repo, revision) = match text.split_once('@') {
            Some((r, rev)) if !rev.is_empty() && !rev.contains('@') => (r, Some(rev.to_string())),
            Some(_) => return None,
            None => (text, None),
        };
        let parts: Vec<&str> = repo.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.len() <= 96
                && !p.starts_with(['.', '-'])
                && !p.contains("--")
                && !p.contains("..")
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if parts.is_empty() || parts.len() > 2 || !parts.iter().all(|p| valid(p)) {
            return None;
        }
        Some(Self {
            repo: repo.to_string(),
            revision,
        })
    }

    fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }

    /// The repository's folder in the cache: `models--org--name`.
    #[must_use]
    pub fn cache_folder(&self, cache: &Path) -> PathBuf {
        cache.join(format!("models--{}", self.repo.replace('/', "--")))
    }
}

impl fmt::Display for HubId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.revision {
            Some(r) => write!(f, "{}@{r}", self.repo),
            None => f.write_str(&self.repo),
        }
    }
}

/// The Hugging Face hub cache: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
#[must_use]
pub fn cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(c) = var("HF_HUB_CACHE") {
        return c;
    }
    if let Some(h) = var("HF_HOME") {
        return h.join("hub");
    }
    let base = var("XDG_CACHE_HOME")
        .or_else(|| var("HOME").map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("huggingface").join("hub")
}

/// Whether `HF_HUB_OFFLINE` forbids the network (`1`, `true`, `yes`, `on`).
#[must_use]
pub fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn is_commit(rev: &str) -> bool {
    rev.len() == 40 && rev.chars().all(|c| c.is_ascii_hexdigit())
}

/// Why a Hub id did not resolve, each worded as one sentence with the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    #[error(
        "{id} is not in the Hugging Face cache at {cache} and HF_HUB_OFFLINE is set, so nothing is downloaded; download it where the network is (`hf download {repo} config.json`) into that cache, or point HF_HUB_CACHE at a cache that has it",
        cache = cache.display(), repo = id.repo
    )]
    Offline { id: HubId, cache: PathBuf },
    #[error(
        "{id} is not in the Hugging Face cache at {cache} and the Hub cannot be reached ({why}); download it where the network is (`hf download {repo} config.json`), copy its folder here and pass the folder, or point HF_HUB_CACHE at a cache that has it",
        cache = cache.display(), repo = id.repo
    )]
    Unreachable {
        id: HubId,
        cache: PathBuf,
        why: String,
    },
    #[error(
        "{repo} is gated: accept its terms at https://huggingface.co/{repo} and set HF_TOKEN to an access token of that account (https://huggingface.co/settings/tokens){token}",
        token = if *with_token { " — the token in HF_TOKEN was refused for it" } else { "" }
    )]
    Gated { repo: String, with_token: bool },
    #[error(
        "there is no model {repo} on the Hugging Face Hub (or it is private and HF_TOKEN does not grant it); check the spelling as on its page, org/name"
    )]
    NoSuchRepo { repo: String },
    #[error(
        "{repo} has no revision '{revision}' on the Hugging Face Hub; give a branch, tag or commit hash that exists (or leave out @revision for main)"
    )]
    NoSuchRevision { repo: String, revision: String },
    #[error(
        "the Hugging Face cache at {cache} has {repo} but not its revision '{revision}' (it has: {have}), and HF_HUB_OFFLINE is set; choose one of those or download that revision",
        cache = cache.display()
    )]
    RevisionNotCached {
        repo: String,
        revision: String,
        cache: PathBuf,
        have: String,
    },
    #[error(
        "{repo} has no {file} on the Hugging Face Hub{why}; oomlab reads config.json and safetensors weights (not pytorch_model.bin)"
    )]
    NoSuchFile {
        repo: String,
        file: String,
        why: String,
    },
    #[error("downloading {file} of {repo} from the Hugging Face Hub failed: {why}")]
    Download {
        repo: String,
        file: String,
        why: String,
    },
}

/// The model repositories of the cache at `cache` that have a snapshot with a `config.json`
/// (main's when there is one), sorted by name.
#[must_use]
pub fn cached_repos(cache: &Path) -> Vec<(String, PathBuf)> {
    let Ok(dir) = std::fs::read_dir(cache) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = dir
        .flatten()
        .filter_map(|e| {
            let folder = e.file_name().to_string_lossy().into_owned();
            let repo = folder.strip_prefix("models--")?.replacen("--", "/", 1);
            let id = HubId::parse(&repo)?;
            let snap = cached_snapshot(cache, &id).ok().or_else(|| {
                std::fs::read_dir(e.path().join("snapshots"))
                    .ok()?
                    .flatten()
                    .map(|s| s.path())
                    .find(|p| p.join("config.json").is_file())
            })?;
            Some((repo, snap))
        })
        .collect();
    out.sort();
    out
}

/// The snapshot folder of `id` in `cache` when it holds a `config.json`; else why not (as a
/// [`HubError`] that applies when the network is not used).
pub fn cached_snapshot(cache: &Path, id: &HubId) -> Result<PathBuf, HubError> {
    let repo_dir = id.cache_folder(cache);
    let rev = id.revision_or_main();
    let commit = if is_commit(rev) {
        Some(rev.to_string())
    } else {
        std::fs::read_to_string(repo_dir.join("refs").join(rev))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    if let Some(commit) = commit {
        let snap = repo_dir.join("snapshots").join(commit);
        if snap.join("config.json").is_file() {
            return Ok(snap);
        }
    }
    if repo_dir.is_dir() && id.revision.is_some() {
        let mut have: Vec<String> = std::fs::read_dir(repo_dir.join("refs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        have.sort();
        return Err(HubError::RevisionNotCached {
            repo: id.repo.clone(),
            revision: rev.to_string(),
            cache: cache.to_path_buf(),
            have: if have.is_empty() {
                "no refs".into()
            } else {
                have.join(", ")
            },
        });
    }
    Err(HubError::Offline {
        id: id.clone(),
        cache: cache.to_path_buf(),
    })
}

/// The snapshot folder of `id`: from the cache, else (unless offline) downloaded from the Hub —
/// `config.json`, plus the safetensors weights (single or sharded) when `weights` is set.
pub fn resolve(id: &HubId, weights: bool) -> Result<PathBuf, HubError> {
    let cache = cache_dir();
    match cached_snapshot(&cache, id) {
        Ok(snap) if !weights || has_weights(&snap) => return Ok(snap),
        Ok(snap) if offline() => return Ok(snap),
        Err(e) if offline() => return Err(e),
        _ => {}
    }
    download(&cache, id, weights)
}

fn has_weights(snap: &Path) -> bool {
    snap.join("model.safetensors").is_file() || snap.join("model.safetensors.index.json").is_file()
}

fn download(cache: &Path, id: &HubId, weights: bool) -> Result<PathBuf, HubError> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let mut builder = ApiBuilder::new()
        .with_cache_dir(cache.to_path_buf())
        .with_progress(false)
        .with_token(
            std::env::var("HF_TOKEN")
                .ok()
                .filter(|t| !t.trim().is_empty()),
        );
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT")
        && !endpoint.trim().is_empty()
    {
        builder = builder.with_endpoint(endpoint.trim().trim_end_matches('/').to_string());
    }
    let api = builder.build().map_err(|e| HubError::Unreachable {
        id: id.clone(),
        cache: cache.to_path_buf(),
        why: e.to_string(),
    })?;
    let repo = api.repo(Repo::with_revision(
        id.repo.clone(),
        RepoType::Model,
        id.revision_or_main().to_string(),
    ));
    let get = |file: &str| repo.get(file).map_err(|e| classify(cache, id, file, &e));
    let config = get("config.json")?;
    let snap = config
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| HubError::Download {
            repo: id.repo.clone(),
            file: "config.json".into(),
            why: "the cache path has no folder".into(),
        })?;
    if weights {
        match get("model.safetensors.index.json") {
            Ok(index) => {
                for shard in shard_names(&index).map_err(|why| HubError::Download {
                    repo: id.repo.clone(),
                    file: "model.safetensors.index.json".into(),
                    why,
                })? {
                    get(&shard)?;
                }
            }
            Err(HubError::NoSuchFile { .. }) => {
                get("model.safetensors")?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(snap)
}

/// The shard files a `model.safetensors.index.json` names, each once.
fn shard_names(index: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(index).map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or("no weight_map in it")?;
    let mut names: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    if names
        .iter()
        .any(|n| n.contains('/') || n.contains("..") || !n.ends_with(".safetensors"))
    {
        return Err("a shard name is not a plain .safetensors file name".into());
    }
    Ok(names)
}

/// One sentence for a failed Hub request, from its HTTP status and the Hub's `X-Error-Code`.
fn classify(cache: &Path, id: &HubId, file: &str, e: &hf_hub::api::sync::ApiError) -> HubError {
    use hf_hub::api::sync::ApiError;
    let mut err = e;
    while let ApiError::TooManyRetries(inner) = err {
        err = inner;
    }
    let ApiError::RequestError(req) = err else {
        return HubError::Download {
            repo: id.repo.clone(),
            file: file.into(),
            why: err.to_string(),
        };
    };
    match req.as_ref() {
        ureq::Error::Status(code, response) => {
            let code_header = response
                .header("x-error-code")
                .unwrap_or_default()
                .to_string();
            let message = response
                .header("x-error-message")
                .unwrap_or_default()
                .to_string();
            let with_token = std::env::var("HF_TOKEN").is_ok_and(|t| !t.trim().is_empty());
            match (code, code_header.as_str()) {
                (_, "GatedRepo") | (403, _) => HubError::Gated {
                    repo: id.repo.clone(),
                    with_token,
                },
                (_, "RevisionNotFound") => HubError::NoSuchRevision {
                    repo: id.repo.clone(),
                    revision: id.revision_or_main().to_string(),
                },
                (_, "EntryNotFound") => HubError::NoSuchFile {
                    repo: id.repo.clone(),
                    file: file.into(),
                    why: String::new(),
                },
                (_, "RepoNotFound") | (401 | 404, _) => HubError::NoSuchRepo {
                    repo: id.repo.clone(),
                },
                _ => HubError::Download {
                    repo: id.repo.clone(),
                    file: file.into(),
                    why: format!("HTTP {code} {message}").trim().to_string(),
                },
            }
        }
        ureq::Error::Transport(t) => HubError::Unreachable {
            id: id.clone(),
            cache: cache.to_path_buf(),
            why: t.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_parse_with_revisions_and_refuse_what_cannot_be_one() {
        let id = HubId::parse("FacebookAI/roberta-base@v1.0").unwrap();
        assert_eq!(id.repo, "FacebookAI/roberta-base");
        assert_eq!(id.revision.as_deref(), Some("v1.0"));
        assert_eq!(HubId::parse("gpt2").unwrap().revision, None);
        for bad in [
            "",
            "a/b/c",
            "org/",
            "/name",
            "org/na me",
            "org/name@",
            "../x",
            "a@b@c",
            "org--x/name",
        ] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
        assert_eq!(
            HubId::parse("org/name")
                .unwrap()
                .cache_folder(Path::new("/c")),
            Path::new("/c/models--org--name")
        );
    }
}
