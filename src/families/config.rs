//! Reading a config.json's fields: the readers every family uses, the fields most configs name
//! alike, and the checks every family's dims pass.

use super::{ActSaves, Dims};
use serde_json::Value;

/// What is wrong with a config's fields, in words naming the field (the catalog adds the file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for ConfigError {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

/// A required non-negative integer.
pub fn field(v: &Value, name: &str) -> Result<usize, ConfigError> {
    match v.get(name) {
        None | Some(Value::Null) => Err(format!("missing field \"{name}\"").into()),
        Some(x) => x
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                format!("field \"{name}\" must be a non-negative integer, found {x}").into()
            }),
    }
}

/// An optional non-negative integer (absent or null: None).
pub fn opt_field(v: &Value, name: &str) -> Result<Option<usize>, ConfigError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => field(v, name).map(Some),
    }
}

/// A boolean candle's config requires.
pub fn bool_field(v: &Value, name: &str) -> Result<bool, ConfigError> {
    match v.get(name) {
        None | Some(Value::Null) => Err(format!("missing field \"{name}\"").into()),
        Some(x) => x
            .as_bool()
            .ok_or_else(|| format!("field \"{name}\" must be true or false, found {x}").into()),
    }
}

/// A flag that transformers defaults to false: absent or null read as false.
pub fn flag_field(v: &Value, name: &str) -> Result<bool, ConfigError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(_) => bool_field(v, name),
    }
}

/// Refuses a flag the family's models do not follow when it is true (`what`: what it adds, and
/// that it is not modelled); absent, null or false pass. A config that sets it would otherwise
/// be read without what it adds: a silently smaller number.
pub fn refuse_true(v: &Value, name: &str, what: &str) -> Result<(), ConfigError> {
    if flag_field(v, name)? {
        return Err(format!(
            "field \"{name}\" is true ({what}); oomlab reads such configs with it false or absent"
        )
        .into());
    }
    Ok(())
}

/// Whether a dropout probability is on (above 0); absent or null: `default`.
pub fn dropout_field(v: &Value, name: &str, default: bool) -> Result<bool, ConfigError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(x) => match x.as_f64() {
            Some(p) if (0.0..1.0).contains(&p) => Ok(p > 0.0),
            _ => Err(format!("field \"{name}\" must be a probability in [0, 1), found {x}").into()),
        },
    }
}

/// The activation a config names in `name` (absent or null: `default`), read into `d`: whether
/// autograd saves its output (`ReLU`) rather than its input (`gelu`, `gelu_pytorch_tanh`, `silu`:
/// one op each in transformers' `ACT2FN`). Any other activation (transformers writes several in
/// Python, each op a tensor: `gelu_new`, `quick_gelu`) keeps the config off the PyTorch
/// estimator, naming the field; candle's runs read the field themselves.
pub fn activation(v: &Value, name: &str, default: &str, d: &mut Dims) -> Result<(), ConfigError> {
    let act = match v.get(name) {
        None | Some(Value::Null) => default,
        Some(Value::String(s)) => s.as_str(),
        Some(x) => {
            return Err(format!("field \"{name}\" must be an activation's name, found {x}").into());
        }
    };
    match act {
        "gelu" | "gelu_pytorch_tanh" | "silu" | "swish" => d.act_saves = ActSaves::Input,
        "relu" => d.act_saves = ActSaves::Output,
        other => {
            d.torch_refuses.get_or_insert_with(|| {
                format!(
                    "field \"{name}\" = \"{other}\" (an activation transformers computes in several ops) is not modelled yet; gelu, gelu_pytorch_tanh, silu (swish) and relu are"
                )
            });
        }
    }
    Ok(())
}

/// The fields most configs name alike (`num_hidden_layers`, `hidden_size`,
/// `num_attention_heads`, `intermediate_size`, `vocab_size`, `max_position_embeddings`), one
/// key/value head per query head; a family sets what differs.
pub fn named_alike(v: &Value) -> Result<Dims, ConfigError> {
    // Read in this order, so a config missing several names the first of them.
    let layers = field(v, "num_hidden_layers")?;
    let hidden = field(v, "hidden_size")?;
    let heads = field(v, "num_attention_heads")?;
    Ok(Dims {
        layers,
        hidden,
        heads,
        kv_heads: heads,
        intermediate: field(v, "intermediate_size")?,
        vocab: field(v, "vocab_size")?,
        max_positions: field(v, "max_position_embeddings")?,
        ..Dims::default()
    })
}

/// What every family's dims must satisfy; `names` are the config's names for layers, hidden
/// size, heads and MLP width.
pub fn check(d: &Dims, names: [&str; 4]) -> Result<(), ConfigError> {
    for (value, name) in [
        (d.layers, names[0]),
        (d.hidden, names[1]),
        (d.heads, names[2]),
        (d.intermediate, names[3]),
        (d.vocab, "vocab_size"),
        (d.max_positions, "max_position_embeddings"),
        (d.kv_heads, "num_key_value_heads"),
    ] {
        if value == 0 {
            return Err(format!("field \"{name}\" must be at least 1, found 0").into());
        }
    }
    if d.head_dim_override == Some(0) {
        return Err("field \"head_dim\" must be at least 1, found 0".into());
    }
    if d.head_dim_override.is_none() && !d.hidden.is_multiple_of(d.heads) {
        return Err(format!(
            "field \"{}\" = {} is not divisible by \"{}\" = {}",
            names[1], d.hidden, names[2], d.heads
        )
        .into());
    }
    if !d.heads.is_multiple_of(d.kv_heads) {
        return Err(format!(
            "field \"num_attention_heads\" = {} is not a multiple of \"num_key_value_heads\" = {}",
            d.heads, d.kv_heads
        )
        .into());
    }
    // Absurd sizes would overflow shape arithmetic long before they fit anywhere.
    let biggest = (d.vocab as u128) * (d.hidden as u128);
    let attention = (d.heads as u128) * (d.head_dim() as u128) * (d.hidden as u128);
    if biggest > 1 << 40 || attention > 1 << 40 || d.layers > 10_000 {
        return Err(format!(
            "sizes are implausible (vocab_size × hidden_size = {biggest}, layers = {})",
            d.layers
        )
        .into());
    }
    Ok(())
}

/// Every this many layers one is global: `sliding_window_pattern`, or where a newer config
/// lists `layer_types` instead, the period of its `full_attention` entries.
pub fn window_pattern(v: &Value) -> Result<usize, ConfigError> {
    if v.get("sliding_window_pattern")
        .is_some_and(|p| !p.is_null())
    {
        let p = field(v, "sliding_window_pattern")?;
        if p == 0 {
            return Err("field \"sliding_window_pattern\" must be at least 1, found 0".into());
        }
        return Ok(p);
    }
    let Some(types) = v.get("layer_types").and_then(Value::as_array) else {
        return Err("missing field \"sliding_window_pattern\" (or \"layer_types\")".into());
    };
    let global = |l: usize| types.get(l).and_then(Value::as_str) == Some("full_attention");
    let pattern = (0..types.len())
        .find(|&l| global(l))
        .map_or(types.len() + 1, |l| l + 1);
    if (0..types.len()).any(|l| global(l) != (l + 1).is_multiple_of(pattern)) {
        return Err(format!(
            "field \"layer_types\" is not one global layer every {pattern}; candle 0.11's Gemma 3 reads only such a pattern (sliding_window_pattern)"
        )
        .into());
    }
    Ok(pattern)
}

/// A classification head's labels as transformers reads them: `id2label`'s length, else
/// `num_labels`, else 2; and why its training loss is not modelled, where it is a regression's
/// (one label) or a multi-label's (`problem_type`).
pub fn labels(v: &Value) -> Result<(usize, Option<String>), ConfigError> {
    let labels = match v.get("id2label") {
        Some(Value::Object(m)) => m.len(),
        None | Some(Value::Null) => opt_field(v, "num_labels")?.unwrap_or(2),
        Some(x) => {
            return Err(format!("field \"id2label\" must be an object, found {x}").into());
        }
    };
    if labels == 0 {
        return Err(
            "field \"num_labels\" (or \"id2label\") must name at least 1 label, found 0".into(),
        );
    }
    if labels > 1_000_000 {
        return Err(format!(
            "field \"num_labels\" (or \"id2label\") names {labels} labels, which is not plausible for a classification head"
        )
        .into());
    }
    let problem = v.get("problem_type").and_then(Value::as_str);
    let refuses = match problem {
        Some(p) if p != "single_label_classification" => Some(format!(
            "field \"problem_type\" is \"{p}\": that head's training loss is not modelled (single_label_classification is)"
        )),
        _ if labels == 1 => Some(
            "one label (\"num_labels\" 1) makes the classification head a regression, whose training loss is not modelled".to_string(),
        ),
        _ => None,
    };
    Ok((labels, refuses))
}
