//! The small persisted settings struct (eframe storage). Runtime handles live beside it.

use crate::plan::{Precision, Strategy, SweepPlan, defaults};
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

/// What the experiment panel edits, as typed (text fields keep what the person wrote).
#[allow(clippy::struct_excessive_bools)] // one per checkbox the panel draws
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
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub threads: usize,
    /// Run with a capacity above what this machine can hold (never persisted).
    #[serde(skip)]
    pub allow_overcommit: bool,
    /// Models run lately, newest first (the picker's "recent" group).
    #[serde(default)]
    pub recent_models: Vec<String>,
}

impl Settings {
    /// Puts the current model at the head of the recent ones (six kept).
    pub fn remember_model(&mut self) {
        let m = self.model.trim().to_string();
        if m.is_empty() {
            return;
        }
        self.recent_models.retain(|r| *r != m);
        self.recent_models.insert(0, m);
        self.recent_models.truncate(6);
    }
}

impl Default for Settings {
    /// The plan defaults (one place: [`crate::plan::defaults`]) on the window's starting model.
    fn default() -> Self {
        let model = crate::catalog::ModelRef::Catalog(defaults::WINDOW_MODEL.into());
        let mut s = Self {
            model: String::new(),
            seqs: String::new(),
            f32: false,
            f16: false,
            bf16: false,
            batch: String::new(),
            capacity: String::new(),
            headroom: String::new(),
            strategy: Strategy::default(),
            theme: ThemeChoice::System,
            device: "cpu".into(),
            threads: 1,
            allow_overcommit: false,
            recent_models: Vec::new(),
        };
        s.apply_plan(&SweepPlan::defaults(model, usize::MAX));
        s
    }
}

impl Settings {
    /// Takes every field of `plan` (a reopened sweep's, or the defaults), so Run repeats it.
    pub fn apply_plan(&mut self, plan: &SweepPlan) {
        self.model = plan.model.to_string();
        self.seqs = plan
            .seqs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        self.f32 = plan.dtypes.contains(&Precision::F32);
        self.f16 = plan.dtypes.contains(&Precision::F16);
        self.bf16 = plan.dtypes.contains(&Precision::Bf16);
        self.batch = plan.batch.to_string();
        self.capacity = crate::plan::human_bytes(plan.capacity_bytes).replace(".0 ", " ");
        if crate::plan::parse_bytes(&self.capacity) != Ok(plan.capacity_bytes) {
            self.capacity = plan.capacity_bytes.to_string();
        }
        self.headroom = format!("{}%", (plan.headroom * 100.0 * 1000.0).round() / 1000.0);
        self.strategy = plan.strategy;
        self.device = plan.device.name();
        self.threads = plan.device.threads();
    }
}
