//! The small persisted settings struct (eframe storage). Runtime handles live beside it.

use crate::plan::Strategy;
use eframe::egui;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ThemeChoice {
    #[default]
    System,
    Light,
    Dark,
}

impl ThemeChoice {
    pub fn apply(self, ctx: &egui::Context) {
        ctx.set_theme(match self {
            Self::System => egui::ThemePreference::System,
            Self::Light => egui::ThemePreference::Light,
            Self::Dark => egui::ThemePreference::Dark,
        });
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Catalog id, config.json path, or model folder.
    pub model: String,
    pub seqs: String,
    pub f32: bool,
    pub f16: bool,
    pub bf16: bool,
    pub batch: String,
    pub capacity: String,
    pub headroom: String,
    pub strategy: Strategy,
    pub theme: ThemeChoice,
    pub threads: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: "bert-base-uncased".into(),
            seqs: "128, 512".into(),
            f32: true,
            f16: true,
            bf16: false,
            batch: "1..256".into(),
            capacity: "1GiB".into(),
            headroom: "10%".into(),
            strategy: Strategy::Auto,
            theme: ThemeChoice::System,
            threads: crate::worker::default_threads(),
        }
    }
}

impl Settings {
    /// Takes the experiment of reopened results, so Run repeats (or extends) it.
    pub fn load_from(&mut self, r: &crate::report::Results) {
        self.model = r.model_ref.to_string();
        let mut seqs: Vec<usize> = Vec::new();
        let mut dtypes = Vec::new();
        for b in &r.boundaries {
            if !seqs.contains(&b.seq) {
                seqs.push(b.seq);
            }
            if !dtypes.contains(&b.dtype) {
                dtypes.push(b.dtype);
            }
        }
        self.seqs = seqs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        self.f32 = dtypes.contains(&crate::plan::Precision::F32);
        self.f16 = dtypes.contains(&crate::plan::Precision::F16);
        self.bf16 = dtypes.contains(&crate::plan::Precision::Bf16);
        self.batch = format!("{}..{}", r.batch_range[0], r.batch_range[1]);
        self.capacity = bytesize::ByteSize::b(r.capacity_bytes)
            .display()
            .iec()
            .to_string();
        if crate::plan::parse_bytes(&self.capacity) != Ok(r.capacity_bytes) {
            self.capacity = r.capacity_bytes.to_string();
        }
        self.headroom = format!("{}%", (r.headroom * 100.0 * 1000.0).round() / 1000.0);
        self.strategy = r.strategy;
        if let Some(t) = r.threads {
            self.threads = t;
        }
    }
}
