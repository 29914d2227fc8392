//! The append-only JSONL journal: every outcome is on disk before anyone is told of it.

use super::records::{Header, JournalLine, TrialRecord, WorkerInfo};
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("cannot write the journal {}: {source}; choose a folder you can write to", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the journal {}: {source}; check the path", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the journal {} already exists; resume it, or choose another journal path", path.display())]
    Exists { path: PathBuf },
    #[error("{} is not an oomlab journal or results file ({message}); open the journal .jsonl or the results .json of an oomlab sweep", path.display())]
    NotJournal { path: PathBuf, message: String },
    #[error("{} line {line} is damaged ({message}); only the last line may be torn — restore the file or start a new sweep", path.display())]
    Damaged {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// Everything read back from a journal.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalContents {
    pub header: Header,
    pub workers: Vec<WorkerInfo>,
    pub trials: Vec<TrialRecord>,
    pub load_failures: Vec<(crate::plan::Build, String)>,
    /// The machine's memory at the latest start.
    pub host: Option<crate::measure::host::HostMemory>,
    /// Whether a torn last line was dropped.
    pub torn_tail: bool,
}

pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Creates a new journal, writing the header. Refuses to overwrite an existing file.
    pub fn create(path: &Path, header: &Header) -> Result<Self, JournalError> {
        let werr = |source| JournalError::Write {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(werr)?;
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    JournalError::Exists {
                        path: path.to_path_buf(),
                    }
                } else {
                    werr(e)
                }
            })?;
        let mut j = Self {
            path: path.to_path_buf(),
            file,
        };
        j.append(&JournalLine::Plan(header.clone()))?;
        Ok(j)
    }

    /// Opens an existing journal to continue it, dropping a torn last line first.
    pub fn reopen(path: &Path) -> Result<(Self, JournalContents), JournalError> {
        let bytes = std::fs::read(path).map_err(|source| JournalError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = std::str::from_utf8(&bytes).map_err(|e| JournalError::NotJournal {
            path: path.to_path_buf(),
            message: format!("it is not UTF-8 text ({e})"),
        })?;
        let contents = parse(path, text)?;
        let werr = |source| JournalError::Write {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(werr)?;
        let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        if keep < bytes.len() {
            file.set_len(keep as u64).map_err(werr)?;
        }
        file.seek(SeekFrom::End(0)).map_err(werr)?;
        Ok((
            Self {
                path: path.to_path_buf(),
                file,
            },
            contents,
        ))
    }

    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and makes it durable before returning.
    pub fn append(&mut self, line: &JournalLine) -> Result<(), JournalError> {
        let werr = |source| JournalError::Write {
            path: self.path.clone(),
            source,
        };
        let mut text = serde_json::to_string(line).map_err(|e| werr(std::io::Error::other(e)))?;
        text.push('\n');
        self.file.write_all(text.as_bytes()).map_err(werr)?;
        self.file.sync_data().map_err(werr)?;
        Ok(())
    }
}

/// Reads a journal. A torn last line (a crash mid-write) is ignored; damage elsewhere is an error.
pub fn read(path: &Path) -> Result<JournalContents, JournalError> {
    let text = std::fs::read_to_string(path).map_err(|source| JournalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

pub fn parse(path: &Path, text: &str) -> Result<JournalContents, JournalError> {
    let lines: Vec<&str> = text.split('\n').collect();
    let mut header = None;
    let mut workers = Vec::new();
    let mut trials = Vec::new();
    let mut load_failures = Vec::new();
    let mut host = None;
    let mut torn_tail = false;
    let last_nonempty = lines.iter().rposition(|l| !l.trim().is_empty());
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Result<JournalLine, _> = serde_json::from_str(line);
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                // Only the very last line may be torn, and only if it has no newline after it.
                let is_last = Some(i) == last_nonempty && !text.ends_with('\n');
                if is_last && header.is_some() {
                    torn_tail = true;
                    continue;
                }
                if i == 0 {
                    return Err(JournalError::NotJournal {
                        path: path.to_path_buf(),
                        message: format!("its first line is not an oomlab plan ({e})"),
                    });
                }
                return Err(JournalError::Damaged {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        };
        match parsed {
            JournalLine::Plan(h) => {
                if header.is_some() {
                    return Err(JournalError::Damaged {
                        path: path.to_path_buf(),
                        line: i + 1,
                        message: "a second plan line".into(),
                    });
                }
                header = Some(h);
            }
            _ if header.is_none() => {
                return Err(JournalError::NotJournal {
                    path: path.to_path_buf(),
                    message: "its first line is not an oomlab plan".into(),
                });
            }
            JournalLine::Worker(w) => workers.push(w),
            JournalLine::Trial(t) => trials.push(t),
            JournalLine::LoadFailed { build, reason } => load_failures.push((build, reason)),
            JournalLine::Host(h) => host = Some(h),
            JournalLine::End { .. } => {}
        }
    }
    let header = header.ok_or_else(|| JournalError::NotJournal {
        path: path.to_path_buf(),
        message: "it is empty".into(),
    })?;
    Ok(JournalContents {
        header,
        workers,
        trials,
        load_failures,
        host,
        torn_tail,
    })
}
