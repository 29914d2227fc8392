//! Sizes and fractions as people write them: parsing `600MiB` or `10%`, printing `598.2 MiB`.
//! A leaf: every module that shows or reads a size uses it.

/// A size or headroom that does not read, in words that say what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnitError(String);

/// Parses sizes such as `600MiB`, `1GiB`, `1.5 GB` or `1234B`. A number without a unit is
/// refused (is `16` sixteen bytes or 16 GiB?), with the unit it most likely meant; a negative
/// size gets a sentence of its own.
pub fn parse_bytes(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix('-') {
        return Err(UnitError(format!(
            "a size cannot be negative ('{t}'); write a positive size such as {}",
            if rest.trim().is_empty() {
                "11GiB".to_string()
            } else {
                rest.trim().to_string()
            }
        )));
    }
    if let Ok(n) = t.parse::<f64>() {
        let guess = if n < 4096.0 {
            format!("{t}GiB or {t}MiB")
        } else {
            human_bytes(n as u64).replace(".0 ", " ").replace(' ', "")
        };
        return Err(UnitError(format!(
            "'{t}' has no unit; write {guess} (or {t}B if you mean bytes)"
        )));
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| {
            UnitError(format!(
                "'{s}' is not a size; write e.g. 600MiB, 1GiB or 8GB"
            ))
        })
}

/// Parses a headroom such as `10%` or `0.1` into a fraction in [0, 0.9].
pub fn parse_headroom(s: &str) -> Result<f64, UnitError> {
    let t = s.trim();
    let percent = t.strip_suffix('%');
    let v = percent
        .map_or(t, str::trim)
        .parse::<f64>()
        .map(|x| if percent.is_some() { x / 100.0 } else { x })
        .map_err(|_| UnitError(format!("'{s}' is not a headroom; write e.g. 10% or 0.1")))?;
    if percent.is_none() && v > 1.0 && v <= 90.0 {
        return Err(UnitError(format!(
            "headroom {t} is read as a fraction of the capacity (0 to 0.9); for {t} percent write {t}%"
        )));
    }
    if v < 0.0 {
        return Err(UnitError(format!(
            "a headroom cannot be negative ('{t}'); write e.g. 10% (0% keeps none)"
        )));
    }
    if !(0.0..=0.9).contains(&v) {
        return Err(UnitError(format!(
            "headroom {s} is outside 0%..90%; 10% is a common choice"
        )));
    }
    Ok(v)
}

/// Formats bytes as binary units (`598.2 MiB`).
#[must_use]
pub fn human_bytes(b: u64) -> String {
    bytesize::ByteSize::b(b).display().iec().to_string()
}
