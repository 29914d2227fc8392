//! `oomlab devices`: the GPUs as the driver reports them.

use crate::plan::human_bytes;

/// `oomlab devices`: the GPUs NVML sees (exit 0 without a driver: the CPU is always there).
pub fn devices(json: bool) {
    let report = crate::measure::nvml::query();
    if json {
        let doc = match &report {
            Ok(r) => serde_json::json!({
                "driver_version": r.driver_version,
                "cuda_version": r.cuda_version,
                "gpus": r.gpus,
                "note": null,
            }),
            Err(why) => serde_json::json!({
                "driver_version": null,
                "cuda_version": null,
                "gpus": [],
                "note": why.to_string(),
            }),
        };
        out!("{doc:#}");
        return;
    }
    let r = match report {
        Ok(r) => r,
        Err(why) => {
            out!("{why}");
            return;
        }
    };
    out!(
        "driver {}, CUDA {}; {} GPU{}",
        r.driver_version.as_deref().unwrap_or("?"),
        r.cuda_version.as_deref().unwrap_or("?"),
        r.gpus.len(),
        if r.gpus.len() == 1 { "" } else { "s" }
    );
    for g in &r.gpus {
        out!(
            "cuda:{} {} ({})
  memory: {} total, {} used, {} free; utilization {}",
            g.index,
            g.name,
            g.uuid.as_deref().unwrap_or("no uuid"),
            human_bytes(g.total_bytes),
            human_bytes(g.used_bytes),
            human_bytes(g.free_bytes),
            g.utilization_percent
                .map_or_else(|| "unknown".into(), |u| format!("{u}%"))
        );
        match &g.processes {
            Ok(list) if list.is_empty() => out!("  no process holds memory"),
            Ok(list) => {
                for p in list {
                    out!(
                        "  pid {:>7} holds {}",
                        p.pid,
                        p.used_bytes
                            .map_or_else(|| "(not reported)".into(), human_bytes)
                    );
                }
            }
            Err(why) => out!("  processes: {why}"),
        }
    }
}
