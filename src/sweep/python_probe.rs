//! The PyTorch runtime before its first trial: finding and probing the interpreter the plan
//! names (it runs a program, so it is the driver's, not the plan's), and the config
//! transformers builds the model from.

use super::{Probed, python};
use crate::catalog::ModelSpec;
use crate::plan::{Device, PlanError, PlanField, PlanProblem, SweepPlan};
use std::path::Path;

/// Finds and probes the PyTorch runtime's interpreter when the plan uses it (`exe`: the oomlab
/// binary, beside which a `python` is looked for), and records the one found in the plan. Runs
/// the interpreter (seconds: it imports torch): call it off the UI thread.
pub fn probe_python(plan: &mut SweepPlan, exe: &Path) -> Result<Option<Probed>, PlanError> {
    if !plan.uses_torch() {
        return Ok(None);
    }
    let problem = |p: python::PythonProblem| {
        PlanError::invalid(PlanField::Python, PlanProblem::Python(p.to_string()))
    };
    let found = python::find(plan.torch.python.as_deref(), exe).map_err(problem)?;
    let probed = python::probe(&found).map_err(problem)?;
    if let Device::Cuda { index } = plan.device
        && !probed.cuda_available
    {
        return Err(problem(python::PythonProblem::NoCuda {
            python: probed.python,
            version: probed.versions.torch,
            index,
        }));
    }
    // Recorded absolute, so a resume from another folder finds the same interpreter.
    plan.torch.python = Some(std::path::absolute(&probed.python).unwrap_or(probed.python.clone()));
    Ok(Some(probed))
}

/// The config transformers builds the model from: the file's, with `model_type` filled in.
#[must_use]
pub fn torch_config(spec: &ModelSpec) -> serde_json::Value {
    let mut v: serde_json::Value =
        serde_json::from_str(&spec.config_json).unwrap_or_else(|_| serde_json::json!({}));
    if let Some(obj) = v.as_object_mut()
        && !obj.contains_key("model_type")
    {
        obj.insert("model_type".into(), spec.family.room().model_type().into());
    }
    v
}
