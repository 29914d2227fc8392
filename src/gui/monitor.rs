//! The machine monitor: a background thread that samples this machine's memory (a simulated
//! capacity must fit in it) and its NVIDIA GPUs (what `nvidia-smi` shows) about once a second,
//! and wakes the UI only when something it shows changed, so an idle window stays idle.

use super::msg::BgMsg;
use crate::measure::host::HostMemory;
use crate::measure::nvml;
use eframe::egui;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

/// Starts the sampling thread; it ends when the window stops listening.
pub fn start(tx: SyncSender<BgMsg>, ctx: egui::Context, sample_gpus: bool) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("oomlab-monitor".into())
        .spawn(move || {
            let mut shown_host: Option<Option<u64>> = None;
            let mut shown_gpus = None;
            loop {
                let host = HostMemory::read();
                let largest = host.map(|h| h.largest_capacity_bytes());
                // Over 1 % of a change in what can be simulated is worth a frame.
                let changed = match (shown_host, largest) {
                    (Some(Some(a)), Some(b)) => a.abs_diff(b) * 100 > a,
                    (Some(a), b) => a != b,
                    (None, _) => true,
                };
                let mut sent = false;
                if changed {
                    if tx.send(BgMsg::Host(host)).is_err() {
                        return;
                    }
                    shown_host = Some(largest);
                    sent = true;
                }
                if sample_gpus {
                    let gpus = nvml::query();
                    if shown_gpus.as_ref() != Some(&gpus) {
                        if tx.send(BgMsg::Gpus(gpus.clone())).is_err() {
                            return;
                        }
                        shown_gpus = Some(gpus);
                        sent = true;
                    }
                }
                if sent {
                    ctx.request_repaint();
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .map(drop)
}
