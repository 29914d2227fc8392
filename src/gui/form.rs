//! Settings → plan: the window's side of the one override path ([`PlanOverrides`]), and the
//! window's words for the plan's fields (the labels it draws).

use super::settings::Settings;
use crate::catalog::{BUNDLED, ModelRef, ModelSpec};
use crate::plan::PlanError;
use crate::plan::{
    BatchRange, DeviceKind, Face, PlanField, PlanOverrides, PlanProblem, Precision, Runtime,
    SweepPlan, Workload, parse_bytes, parse_headroom,
};

/// The labels of the experiment panel's controls (drawn, and named by error messages).
pub mod label {
    pub const BUNDLED_MODEL: &str = "Browse models";
    pub const MODEL_FILTER: &str = "Filter models";
    pub const MODEL: &str = "Model id or path";
    pub const SEQ: &str = "Sequence lengths";
    pub const DTYPE: &str = "Precisions";
    pub const BATCH: &str = "Batch range";
    pub const CAPACITY: &str = "Capacity";
    pub const HEADROOM: &str = "Headroom";
    pub const STRATEGY: &str = "Strategy";
    pub const DEVICE: &str = "Device";
    pub const THREADS: &str = "Worker threads";
    pub const OVERCOMMIT: &str = "Allow overcommit";
    pub const RUNTIME: &str = "Runtime";
    pub const PYTHON: &str = "Python";
    pub const WORKLOAD: &str = "Workload";
    pub const TASK: &str = "Task";
    pub const ATTN: &str = "Attention";
    pub const OPTIMIZER: &str = "Optimizer";
    pub const CHECKPOINTING: &str = "Gradient checkpointing";
}

/// The window names a field by the control that sets it.
pub struct Labels;

impl Face for Labels {
    fn control(&self, field: PlanField) -> &'static str {
        match field {
            PlanField::Model => "the Model id or path field",
            PlanField::Seq => "the Sequence lengths field",
            PlanField::Dtype => "the Precisions boxes",
            PlanField::Batch => "the Batch range field",
            PlanField::Capacity => "the Capacity field",
            PlanField::Headroom => "the Headroom field",
            PlanField::Strategy => "the Strategy choice",
            PlanField::Device => "the Device choice",
            PlanField::Threads => "the Worker threads field",
            PlanField::Runtime => "the Runtime boxes",
            PlanField::Workload => "the Workload choice",
            PlanField::Python => "the Python field",
            PlanField::Task => "the Task choice",
            PlanField::Attn => "the Attention choice",
            PlanField::Optimizer => "the Optimizer choice",
            PlanField::Checkpointing => "the Gradient checkpointing boxes",
        }
    }
    fn model_list(&self) -> &'static str {
        "the Bundled model list"
    }
    fn overwrite(&self) -> &'static str {
        "tick \"overwrite\""
    }
    fn allow_overcommit(&self) -> &'static str {
        "tick \"Allow overcommit\""
    }
}

/// Whether checking these settings needs no file (a bundled model: its config is in memory), so
/// the UI thread may check them itself.
#[must_use]
pub fn in_memory(s: &Settings) -> bool {
    BUNDLED
        .iter()
        .any(|b| b.id.eq_ignore_ascii_case(s.model.trim()))
}

/// Why Run is disabled, in the window's words: a [`PlanError`] described with the window's
/// labels once, when the settings are checked, or why they cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl Refusal {
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What checking the settings found.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The plan Run would start, or why Run is disabled (one sentence in the window's words).
    pub plan: Result<SweepPlan, Refusal>,
    /// One line about the model (family, size, positions), when it could be read.
    pub summary: Option<String>,
    /// The model's name and its weights per precision, for the check against this machine.
    pub weights: Option<(String, Vec<(crate::plan::Precision, u64)>)>,
}

fn invalid(field: PlanField, message: impl std::fmt::Display) -> PlanError {
    PlanError::Invalid {
        field,
        problem: PlanProblem::Unparsable(message.to_string()),
    }
}

/// The plan fields the settings give, parsed (every field: the window has a control for each).
fn overrides(s: &Settings, model: ModelRef) -> Result<PlanOverrides, PlanError> {
    let device: DeviceKind = s.device;
    let dtypes: Vec<Precision> = [
        (s.f32, Precision::F32),
        (s.f16, Precision::F16),
        (s.bf16, Precision::Bf16),
        (s.torch && s.amp_bf16, Precision::AmpBf16),
        (s.torch && s.amp_f16, Precision::AmpF16),
    ]
    .into_iter()
    .filter_map(|(on, p)| on.then_some(p))
    .collect();
    let runtimes: Vec<Runtime> = [(s.candle, Runtime::Candle), (s.torch, Runtime::Torch)]
        .into_iter()
        .filter_map(|(on, r)| on.then_some(r))
        .collect();
    let checkpointing: Vec<bool> = [(s.checkpointing_off, false), (s.checkpointing_on, true)]
        .into_iter()
        .filter_map(|(on, c)| on.then_some(c))
        .collect();
    let python = s.python.trim();
    Ok(PlanOverrides {
        model: Some(model),
        seqs: Some(parse_seqs(&s.seqs).map_err(|e| invalid(PlanField::Seq, e))?),
        dtypes: Some(dtypes),
        batch: Some(
            s.batch
                .parse::<BatchRange>()
                .map_err(|e| invalid(PlanField::Batch, e))?,
        ),
        gpu: s.preset(),
        capacity_bytes: Some(
            parse_bytes(&s.capacity).map_err(|e| invalid(PlanField::Capacity, e.to_string()))?,
        ),
        headroom: Some(
            parse_headroom(&s.headroom).map_err(|e| invalid(PlanField::Headroom, e.to_string()))?,
        ),
        strategy: Some(s.strategy),
        device: Some(device),
        threads: Some(s.threads),
        runtimes: Some(runtimes),
        // The workload belongs to PyTorch: candle alone runs inference (the choice is hidden).
        workload: Some(if s.torch { s.workload } else { Workload::Infer }),
        python: (!python.is_empty()).then(|| python.into()),
        task: s.task,
        attn: s.attn,
        optimizer: Some(s.optimizer),
        // Checkpointing belongs to PyTorch's training: elsewhere the boxes are hidden.
        checkpointing: (s.torch && s.workload == Workload::Train && !checkpointing.is_empty())
            .then_some(checkpointing),
    })
}

/// Checks settings against their model. Reads the model's files for a path: call it off the
/// UI thread unless [`in_memory`] says so.
#[must_use]
pub fn check(s: &Settings) -> Checked {
    let spec = ModelRef::parse(&s.model)
        .and_then(|r| ModelSpec::resolve(&r))
        .map_err(PlanError::Model);
    let summary = spec.as_ref().ok().map(summary);
    let weights = spec
        .as_ref()
        .ok()
        .map(|s| (s.name.clone(), crate::plan::weights_per_dtype(s)));
    let plan = spec
        .and_then(|spec| {
            let given = overrides(s, spec.reference.clone())?;
            crate::plan::plan_for(&given, &spec)
        })
        .map_err(|e| Refusal(e.describe(&Labels)));
    Checked {
        plan,
        summary,
        weights,
    }
}

fn summary(spec: &ModelSpec) -> String {
    format!(
        "{} · {} · up to {} positions · {}",
        spec.family,
        format_params(spec.dims.published_parameters(spec.family)),
        spec.dims.max_positions,
        if spec.checkpoint.is_some() {
            "real weights"
        } else {
            "synthetic weights"
        }
    )
}

/// `109.5M parameters`, `1.10B parameters`, `26.8K parameters`.
#[must_use]
pub fn format_params(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B parameters", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M parameters", n / 1e6)
    } else {
        format!("{:.1}K parameters", n / 1e3)
    }
}

/// Parses `128, 512` into sequence lengths.
fn parse_seqs(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        let n: usize = part
            .parse()
            .map_err(|_| format!("'{part}' is not a sequence length; write e.g. 128, 512"))?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err("give at least one sequence length, e.g. 128".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The zoom and the panels are saved with the settings (eframe serialises them), and
    /// settings saved before they existed load at normal size with the panels.
    #[test]
    #[allow(clippy::float_cmp)] // the zoom is stored and read back exactly
    fn the_zoom_is_remembered_with_the_settings() {
        let s = Settings {
            zoom: 1.5,
            panels: false,
            ..Settings::default()
        };
        let mut saved = serde_json::to_value(&s).unwrap();
        let back: Settings = serde_json::from_value(saved.clone()).unwrap();
        assert_eq!((back.zoom, back.panels), (1.5, false));
        let fields = saved.as_object_mut().unwrap();
        fields.remove("zoom");
        fields.remove("panels");
        let back: Settings = serde_json::from_value(saved).unwrap();
        assert_eq!((back.zoom, back.panels), (1.0, true));
        assert_eq!(crate::gui::settings::clamp_zoom(f32::NAN), 1.0);
        assert_eq!(crate::gui::settings::clamp_zoom(9.0), 3.0);
    }

    /// The GPU preset list sets a capacity that reads back (a size with its unit) and names the
    /// GPU in the plan; typing another capacity leaves no GPU named.
    #[test]
    fn a_gpu_preset_sets_a_capacity_that_checks_and_names_the_gpu() {
        let t4 = crate::presets::find("t4").unwrap();
        let mut s = Settings::default();
        s.set_capacity(t4.total_bytes, Some(t4));
        assert_eq!(s.preset(), Some(t4));
        let plan = check(&s).plan.unwrap();
        assert_eq!(plan.capacity_bytes, t4.total_bytes);
        assert_eq!(plan.gpu, Some(t4));
        s.capacity = "1GiB".into();
        assert_eq!(s.preset(), None);
        assert_eq!(check(&s).plan.unwrap().gpu, None);
    }

    #[test]
    fn default_settings_are_the_plan_defaults_and_check_clean() {
        let s = Settings::default();
        let plan = check(&s).plan.unwrap();
        let want = SweepPlan::defaults(
            ModelRef::Catalog(crate::plan::defaults::WINDOW_MODEL.into()),
            512,
        );
        assert_eq!(plan, want);
        // And back: the settings a plan gives check to the same plan.
        let mut t = Settings {
            model: "tiny-llama".into(),
            ..Settings::default()
        };
        t.apply_plan(&want);
        assert_eq!(t, s);
    }

    #[test]
    fn errors_name_the_window_controls_not_flags() {
        let mut s = Settings {
            capacity: "10KiB".into(),
            ..Settings::default()
        };
        let e = check(&s).plan.unwrap_err().0;
        assert!(e.contains("raise the Capacity field above"), "{e}");
        assert!(!e.contains("--"), "{e}");
        s.capacity = "1GiB".into();
        s.batch = "0..3".into();
        let e = check(&s).plan.unwrap_err().0;
        assert!(
            e.starts_with("the Batch range field: batch sizes start at 1"),
            "{e}"
        );
        s.batch = "1..3".into();
        s.model = "no-such-model".into();
        let e = check(&s).plan.unwrap_err().0;
        assert!(e.contains("the Bundled model list"), "{e}");
    }
}
