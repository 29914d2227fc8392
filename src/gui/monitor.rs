//! The machine monitor: a background thread that samples this machine's memory every two
//! seconds (a simulated capacity must fit in it) and wakes the UI when it changed noticeably.

use super::jobs::BgMsg;
use crate::measure::host::HostMemory;
use eframe::egui;
use std::sync::mpsc::Sender;
use std::time::Duration;

/// Starts the sampling thread; it ends when the window stops listening.
pub fn start(tx: Sender<BgMsg>, ctx: egui::Context) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("oomlab-host-monitor".into())
        .spawn(move || {
            let mut shown: Option<u64> = None;
            loop {
                let host = HostMemory::read();
                let largest = host.map(|h| h.largest_capacity_bytes());
                // Wake the UI only for a change it would show (over 1 %), so an idle window
                // stays idle.
                let changed = match (shown, largest) {
                    (Some(a), Some(b)) => a.abs_diff(b) * 100 > a,
                    (a, b) => a != b || a.is_none(),
                };
                if changed {
                    if tx.send(BgMsg::Host(host)).is_err() {
                        return;
                    }
                    shown = largest;
                    ctx.request_repaint();
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        })
        .map(drop)
}
