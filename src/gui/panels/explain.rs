//! The "Explain an OOM message" window: paste a message, read what each figure means and the
//! fixes in order of effect (the same explanation as `oomlab explain`).

use super::PanelState;
use crate::explain::{self, Explanation, NotOom};
use eframe::egui;
use egui::RichText;

/// The last text explained and its explanation (parsed again only when the text changes).
#[derive(Debug, Clone, Default)]
pub struct ExplainState {
    pub open: bool,
    pub text: String,
    explained: Option<(String, Result<Explanation, NotOom>)>,
}

pub fn window(state: &mut PanelState, ctx: &egui::Context) {
    let e = &mut state.explain;
    let mut open = e.open;
    egui::Window::new("Explain an OOM message")
        .open(&mut open)
        .default_size([560.0, 520.0])
        .vscroll(true)
        .show(ctx, |ui| {
            ui.label(
                "Paste the error from PyTorch (on NVIDIA, AMD, Intel or Apple GPUs, or the CPU), TensorFlow, JAX or PyTorch/XLA (GPU or TPU), CuPy, Numba or CUDA:",
            );
            ui.add(
                egui::TextEdit::multiline(&mut e.text)
                    .desired_rows(5)
                    .desired_width(f32::INFINITY)
                    .hint_text("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 11.17 GiB total capacity; …)"),
            )
            .labelled_by(ui.label("Message").id);
            if e.text.trim().is_empty() {
                return;
            }
            if e.explained.as_ref().is_none_or(|(t, _)| *t != e.text) {
                e.explained = Some((e.text.clone(), explain::explain(&e.text)));
            }
            match e.explained.as_ref().map(|(_, r)| r) {
                Some(Ok(x)) => {
                    ui.label(RichText::new(x.heading()).strong());
                    ui.label(RichText::new("What it says").strong());
                    if x.figures.is_empty() {
                        ui.label(x.no_figures());
                    }
                    for f in &x.figures {
                        ui.label(format!("• {f}"));
                    }
                    ui.label(RichText::new("What to do, most effective first").strong());
                    for (i, a) in x.advice.iter().enumerate() {
                        ui.label(format!("{}. {a}", i + 1));
                    }
                }
                Some(Err(not)) => {
                    ui.label(RichText::new(not.to_string()).italics());
                }
                None => {}
            }
        });
    e.open = open;
}
