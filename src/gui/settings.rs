//! The small persisted settings struct (eframe storage). Runtime handles live beside it.

use crate::plan::{
    Attn, DeviceKind, Optimizer, Precision, Runtime, Strategy, SweepPlan, Task, Workload, defaults,
};
use crate::presets::GpuPreset;
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

/// The zoom View → Presentation sets: text and lines half again as large, for a projector.
pub const PRESENTATION_ZOOM: f32 = 1.5;

/// A zoom the window can use (a stored one may have been edited by hand).
#[must_use]
pub fn clamp_zoom(z: f32) -> f32 {
    if z.is_finite() {
        z.clamp(0.5, 3.0)
    } else {
        1.0
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
    /// PyTorch's mixed precisions (shown with the PyTorch runtime).
    pub amp_bf16: bool,
    pub amp_f16: bool,
    /// The runtimes ticked: candle (built in) and PyTorch.
    pub candle: bool,
    pub torch: bool,
    /// The PyTorch runtime's interpreter; empty: found (beside oomlab, the active virtualenv or
    /// conda env, python3 on PATH).
    pub python: String,
    pub workload: Workload,
    /// `None`: the workload's default head.
    pub task: Option<Task>,
    /// `None`: transformers' default for the model (sdpa; eager for Gemma 2).
    pub attn: Option<Attn>,
    pub optimizer: Optimizer,
    /// Gradient checkpointing curves: off and/or on.
    pub checkpointing_off: bool,
    pub checkpointing_on: bool,
    pub batch: String,
    pub capacity: String,
    /// The GPU preset chosen for the capacity (its id); it holds while the capacity is its
    /// memory ([`Self::preset`]).
    pub gpu: Option<String>,
    pub headroom: String,
    pub strategy: Strategy,
    pub theme: ThemeChoice,
    /// Text and lines scale (View → Zoom, Ctrl +/-): 1.0, or 1.5 for a projector.
    pub zoom: f32,
    /// The experiment, recommendation and trials panels beside the plot (presentation zoom
    /// hides them, so the plot fills the screen).
    pub panels: bool,
    /// The CPU or a GPU (stored as `cpu` or `cuda:N`).
    pub device: DeviceKind,
    pub threads: usize,
    /// Run with a capacity above what this machine can hold (never persisted).
    #[serde(skip)]
    pub allow_overcommit: bool,
    /// Models run lately, newest first (the picker's "recent" group).
    #[serde(default)]
    pub recent_models: Vec<String>,
}

impl Settings {
    /// The capacity field shows `bytes` as a size that reads back exactly; `preset` is the GPU
    /// whose memory it is.
    pub fn set_capacity(&mut self, bytes: u64, preset: Option<&'static GpuPreset>) {
        self.capacity = crate::plan::human_bytes(bytes).replace(".0 ", " ");
        if crate::plan::parse_bytes(&self.capacity) != Ok(bytes) {
            self.capacity = format!("{bytes}B");
        }
        self.gpu = preset.map(|p| p.id.to_string());
    }

    /// The GPU preset the capacity is, while the capacity field still reads as its memory.
    #[must_use]
    pub fn preset(&self) -> Option<&'static GpuPreset> {
        self.gpu
            .as_deref()
            .and_then(|id| crate::presets::find(id).ok())
            .filter(|p| crate::plan::parse_bytes(&self.capacity) == Ok(p.total_bytes))
    }

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
            amp_bf16: false,
            amp_f16: false,
            candle: true,
            torch: false,
            python: String::new(),
            workload: Workload::default(),
            task: None,
            attn: None,
            optimizer: Optimizer::default(),
            checkpointing_off: true,
            checkpointing_on: false,
            batch: String::new(),
            capacity: String::new(),
            gpu: None,
            headroom: String::new(),
            strategy: Strategy::default(),
            theme: ThemeChoice::System,
            zoom: 1.0,
            panels: true,
            device: DeviceKind::Cpu,
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
        self.amp_bf16 = plan.dtypes.contains(&Precision::AmpBf16);
        self.amp_f16 = plan.dtypes.contains(&Precision::AmpF16);
        self.candle = plan.runtimes.contains(&Runtime::Candle);
        self.torch = plan.runtimes.contains(&Runtime::Torch);
        if let Some(p) = &plan.torch.python {
            self.python = p.display().to_string();
        }
        self.workload = plan.workload;
        self.task = plan.torch.task;
        self.attn = plan.torch.attn;
        self.optimizer = plan.torch.optimizer;
        let ckpt = plan.torch.checkpointing_list();
        self.checkpointing_off = ckpt.contains(&false);
        self.checkpointing_on = ckpt.contains(&true);
        self.batch = plan.batch.to_string();
        self.set_capacity(plan.capacity_bytes, plan.gpu);
        self.headroom = format!("{}%", (plan.headroom * 100.0 * 1000.0).round() / 1000.0);
        self.strategy = plan.strategy;
        self.device = plan.device.kind();
        self.threads = plan.device.threads();
    }
}
