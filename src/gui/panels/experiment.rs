//! The left panel: the experiment (model, device, sweep settings) and Run / Cancel / Resume.

use super::{PlanStatus, View, labelled_text};
use crate::catalog::{CatalogEntry, EntrySource};
use crate::gui::Command;
use crate::gui::form::{format_params, label};
use crate::gui::settings::Settings;
use crate::plan::{Attn, DeviceKind, Optimizer, Strategy, Task, Workload};
use eframe::egui;
use egui::{Color32, RichText};

pub fn panel(
    view: &View<'_>,
    settings: &mut Settings,
    filter: &mut String,
    ui: &mut egui::Ui,
    cmds: &mut Vec<Command>,
) {
    ui.heading("Experiment");
    ui.add_space(4.0);
    let running = view.running.is_some();
    ui.add_enabled_ui(!running, |ui| {
        model_ui(view, settings, filter, ui, cmds);
        ui.separator();
        device_ui(view, settings, ui);
        let on_gpu = settings.device != DeviceKind::Cpu;
        labelled_text(
            ui,
            label::CAPACITY,
            &mut settings.capacity,
            if on_gpu { "empty: the GPU's free memory" } else { "e.g. 1GiB, 11GiB" },
        );
        // A GPU one does not have: its memory as the capacity.
        let preset = settings.preset();
        ui.horizontal(|ui| {
            let l = ui.label("GPU preset");
            egui::ComboBox::from_id_salt("gpu-preset")
                .selected_text(preset.map_or("none", |p| p.name))
                .show_ui(ui, |ui| {
                    for p in crate::presets::PRESETS {
                        if ui
                            .selectable_label(preset == Some(p), p.name)
                            .on_hover_text(p.source)
                            .clicked()
                        {
                            settings.set_capacity(p.total_bytes, Some(p));
                        }
                    }
                })
                .response
                .labelled_by(l.id);
        });
        if let (Some(p), false) = (preset, on_gpu) {
            ui.label(
                RichText::new(format!(
                    "{}: {}; {}.",
                    p.name,
                    crate::presets::capacity_label(p.total_bytes, Some(p), false),
                    crate::presets::CPU_NOTE
                ))
                .small()
                .color(Color32::from_rgb(200, 120, 0)),
            );
        }
        ui.label(
            RichText::new(if on_gpu {
                "A smaller capacity than the GPU's is made real: the worker holds the rest back, so the out-of-memory it meets is the card's own."
            } else {
                "Simulates a device of this size: forward passes run on the CPU and oomlab counts every byte they allocate."
            })
            .weak()
            .small(),
        );
        if let (Some(h), false) = (view.host, on_gpu) {
            ui.label(
                RichText::new(format!(
                    "This machine: {}; it can simulate up to {}.",
                    h.describe(),
                    crate::plan::human_bytes(h.largest_capacity_bytes())
                ))
                .small(),
            );
        }
        ui.checkbox(&mut settings.allow_overcommit, label::OVERCOMMIT)
            .on_hover_text(
                "run with a capacity above what this machine can hold; the worker still stops itself before the machine runs out of memory (trials marked host mem)",
            );
        ui.separator();
        ui.label(RichText::new("Sweep").strong());
        labelled_text(ui, label::BATCH, &mut settings.batch, "e.g. 1..256");
        labelled_text(ui, label::SEQ, &mut settings.seqs, "e.g. 128, 512");
        ui.horizontal(|ui| {
            ui.label(label::DTYPE);
            ui.checkbox(&mut settings.f32, "f32");
            ui.checkbox(&mut settings.f16, "f16");
            ui.checkbox(&mut settings.bf16, "bf16");
        });
        runtime_ui(settings, ui, cmds);
        labelled_text(ui, label::HEADROOM, &mut settings.headroom, "e.g. 10%");
        ui.horizontal(|ui| {
            ui.label(label::STRATEGY);
            for (s, tip) in [
                (Strategy::Auto, "probe, predict b*, confirm b* and b*+1 (about 3 trials per curve)"),
                (Strategy::Grid, "every batch up to the first OOM: the full curve, for teaching"),
                (Strategy::Binsearch, "Lightning's power-then-bisect, for comparison"),
            ] {
                ui.radio_value(&mut settings.strategy, s, s.name()).on_hover_text(tip);
            }
        });
        ui.horizontal(|ui| {
            let l = ui.label(label::THREADS);
            ui.add(egui::DragValue::new(&mut settings.threads).range(1..=256))
                .labelled_by(l.id);
        });
    });
}

/// The foot of the experiment panel, always in view: Run / Cancel / Resume, progress, notices.
pub fn run_ui(view: &View<'_>, ui: &mut egui::Ui, cmds: &mut Vec<Command>) {
    ui.add_space(4.0);
    run_controls(view, ui, cmds);
    if let Some(n) = view.notice {
        ui.label(RichText::new(n).italics());
    }
    ui.add_space(2.0);
}

/// The runtimes (candle, PyTorch) and, with PyTorch ticked, its settings in one group: the
/// interpreter, the workload, the head, attention, and for training the optimizer and
/// checkpointing. Only what applies to the chosen runtimes is drawn.
fn runtime_ui(settings: &mut Settings, ui: &mut egui::Ui, cmds: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        ui.label(label::RUNTIME);
        ui.checkbox(&mut settings.candle, "candle")
            .on_hover_text("candle-transformers inside oomlab: one binary, no Python; inference forwards");
        ui.checkbox(&mut settings.torch, "PyTorch").on_hover_text(
            "PyTorch + transformers in your Python: inference, a forward keeping the graph, or a training step",
        );
    });
    if !settings.torch {
        return;
    }
    egui::CollapsingHeader::new("PyTorch")
        .id_salt("torch-settings")
        .default_open(true)
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                let l = ui.label(label::PYTHON);
                ui.add(
                    egui::TextEdit::singleline(&mut settings.python)
                        .hint_text("found: venv, conda, python3")
                        .desired_width(150.0),
                )
                .labelled_by(l.id);
                if ui.small_button("Browse…").clicked() {
                    cmds.push(Command::PickPython);
                }
                if ui
                    .small_button("Check")
                    .on_hover_text("run the interpreter once: its Python, torch and transformers versions")
                    .clicked()
                {
                    cmds.push(Command::CheckPython);
                }
            });
            ui.horizontal(|ui| {
                ui.label(label::WORKLOAD);
                for (w, tip) in [
                    (Workload::Infer, "a forward under torch.no_grad()"),
                    (Workload::Grad, "a forward with autograd on, as a script without no_grad"),
                    (Workload::Train, "forward, backward, optimizer step (the larger of steps 1 and 2)"),
                ] {
                    ui.radio_value(&mut settings.workload, w, w.name()).on_hover_text(tip);
                }
            });
            ui.horizontal(|ui| {
                let l = ui.label(label::TASK);
                egui::ComboBox::from_id_salt("torch-task")
                    .selected_text(settings.task.map_or("default", Task::name))
                    .show_ui(ui, |ui| {
                        ui.selectable_value(&mut settings.task, None, "default")
                            .on_hover_text("inference: encoders base, decoders causal-lm; training: sequence-classification or causal-lm");
                        for &t in Task::ALL {
                            ui.selectable_value(&mut settings.task, Some(t), t.name());
                        }
                    })
                    .response
                    .labelled_by(l.id);
            });
            ui.horizontal(|ui| {
                ui.label(label::ATTN);
                ui.radio_value(&mut settings.attn, None, "default")
                    .on_hover_text("transformers' default for the model: sdpa, or eager where it has no sdpa (Gemma 2)");
                for &a in Attn::ALL {
                    ui.radio_value(&mut settings.attn, Some(a), a.name());
                }
            });
            ui.horizontal(|ui| {
                ui.label("Mixed precision");
                ui.checkbox(&mut settings.amp_bf16, "amp-bf16")
                    .on_hover_text("f32 weights, the forward under torch.autocast(bfloat16)");
                ui.checkbox(&mut settings.amp_f16, "amp-f16")
                    .on_hover_text("f32 weights under torch.autocast(float16), a GradScaler in training");
            });
            if settings.workload == Workload::Train {
                ui.horizontal(|ui| {
                    ui.label(label::OPTIMIZER);
                    for &o in Optimizer::ALL {
                        ui.radio_value(&mut settings.optimizer, o, o.name());
                    }
                });
                ui.horizontal(|ui| {
                    ui.label(label::CHECKPOINTING);
                    ui.checkbox(&mut settings.checkpointing_off, "off");
                    ui.checkbox(&mut settings.checkpointing_on, "on")
                        .on_hover_text("tick both for the two curves side by side");
                });
            }
            ui.label(
                RichText::new("PyTorch figures are PyTorch's own count (its profiler on the CPU; a CPU trial runs to its end and is then compared with the capacity).")
                    .weak()
                    .small(),
            );
        });
}

fn model_ui(
    view: &View<'_>,
    settings: &mut Settings,
    filter: &mut String,
    ui: &mut egui::Ui,
    cmds: &mut Vec<Command>,
) {
    ui.horizontal(|ui| {
        ui.label(RichText::new("Model").strong());
        let d = &crate::presets::TEACHING_DEMO;
        if ui
            .small_button("Teaching demo")
            .on_hover_text(format!(
                "{}, sequence lengths {}, f32 and f16, every batch up to the first OOM under {}: a full grid that ends every curve in an OOM, in well under a minute on a laptop CPU",
                d.model, d.seqs, d.capacity
            ))
            .clicked()
        {
            settings.model = d.model.into();
            settings.seqs = d.seqs.into();
            settings.f32 = d.f32;
            settings.f16 = d.f16;
            settings.bf16 = d.bf16;
            settings.batch = d.batch.into();
            settings.capacity = d.capacity.into();
            settings.strategy = Strategy::Grid;
            settings.device = DeviceKind::Cpu;
        }
    });
    picker(view, settings, filter, ui);
    labelled_text(
        ui,
        label::MODEL,
        &mut settings.model,
        "id, org/name (Hugging Face), config.json or folder",
    );
    ui.horizontal(|ui| {
        if ui.button("Open model folder…").clicked() {
            cmds.push(Command::PickModelFolder);
        }
        if ui.button("Open config.json…").clicked() {
            cmds.push(Command::PickConfig);
        }
    });
    ui.label(
        RichText::new("or drop a folder / config.json onto the window")
            .weak()
            .small(),
    );
    if let Some(s) = view.model_summary {
        ui.label(RichText::new(s).small());
    }
}

/// The device picker (the CPU, and each GPU by name and free memory) and a live gauge per GPU
/// with the processes holding its memory.
fn device_ui(view: &View<'_>, settings: &mut Settings, ui: &mut egui::Ui) {
    use crate::plan::human_bytes;
    ui.label(RichText::new("Device and capacity").strong());
    let gpus = match view.gpus {
        Some(Ok(r)) => r.gpus.as_slice(),
        _ => &[],
    };
    let built = cfg!(feature = "cuda");
    let name_of = |g: &crate::measure::nvml::GpuInfo| {
        format!(
            "cuda:{} · {} · {} free{}",
            g.index,
            g.name,
            human_bytes(g.free_bytes),
            if built { "" } else { " (needs a CUDA build)" }
        )
    };
    let selected = gpus
        .iter()
        .find(|g| {
            DeviceKind::Cuda {
                index: g.index as usize,
            } == settings.device
        })
        .map_or_else(
            || {
                if settings.device == DeviceKind::Cpu {
                    "CPU (simulated capacity)".to_string()
                } else {
                    settings.device.to_string()
                }
            },
            name_of,
        );
    egui::ComboBox::from_label(label::DEVICE)
        .selected_text(selected)
        .width(220.0)
        .show_ui(ui, |ui| {
            ui.selectable_value(
                &mut settings.device,
                DeviceKind::Cpu,
                "CPU (simulated capacity)",
            );
            for g in gpus {
                ui.selectable_value(
                    &mut settings.device,
                    DeviceKind::Cuda {
                        index: g.index as usize,
                    },
                    name_of(g),
                );
            }
        });
    match view.gpus {
        Some(Ok(r)) => {
            for g in &r.gpus {
                let used = g.used_bytes as f32 / g.total_bytes.max(1) as f32;
                ui.add(egui::ProgressBar::new(used).text(format!(
                    "cuda:{} {}: {} of {} used{}",
                    g.index,
                    g.name,
                    human_bytes(g.used_bytes),
                    human_bytes(g.total_bytes),
                    g.utilization_percent
                        .map_or_else(String::new, |u| format!(", {u}% busy"))
                )));
                match &g.processes {
                    Ok(list) => {
                        for p in list {
                            let who = if Some(p.pid) == view.worker_pid {
                                " — oomlab's worker"
                            } else {
                                ""
                            };
                            ui.label(
                                RichText::new(format!(
                                    "  pid {} holds {}{who}",
                                    p.pid,
                                    p.used_bytes
                                        .map_or_else(|| "(not reported)".into(), human_bytes)
                                ))
                                .small(),
                            );
                        }
                    }
                    Err(why) => {
                        ui.label(RichText::new(format!("  processes: {why}")).small().weak());
                    }
                }
            }
            ui.label(
                RichText::new(format!(
                    "driver {}, CUDA {}",
                    r.driver_version.as_deref().unwrap_or("?"),
                    r.cuda_version.as_deref().unwrap_or("?")
                ))
                .small()
                .weak(),
            );
        }
        Some(Err(why)) => {
            ui.label(RichText::new(why.to_string()).small().weak());
        }
        None => {}
    }
}

fn run_controls(view: &View<'_>, ui: &mut egui::Ui, cmds: &mut Vec<Command>) {
    ui.horizontal(|ui| {
        if view.running.is_some() {
            if ui.button(RichText::new("Cancel").size(16.0)).clicked() {
                cmds.push(Command::Cancel);
            }
            return;
        }
        let ready = matches!(view.plan, PlanStatus::Ready);
        let run = ui.add_enabled(ready, egui::Button::new(RichText::new("Run").size(16.0)));
        let run = match view.plan {
            PlanStatus::Invalid(e) => run.on_disabled_hover_text(e),
            PlanStatus::Checking => run.on_disabled_hover_text("checking the model…"),
            PlanStatus::Ready => run,
        };
        if run.clicked() {
            cmds.push(Command::Run);
        }
        if let Some(j) = view.resumable
            && ui
                .button("Resume")
                .on_hover_text(format!("continue {}", j.display()))
                .clicked()
        {
            cmds.push(Command::Resume(j.to_path_buf()));
        }
    });
    match view.plan {
        PlanStatus::Invalid(e) if view.running.is_none() => {
            ui.label(
                RichText::new(format!("Cannot run: {e}")).color(Color32::from_rgb(200, 60, 60)),
            );
        }
        PlanStatus::Checking if view.running.is_none() => {
            ui.label(RichText::new("checking the model…").weak());
        }
        _ => {}
    }
    if let Some(p) = view.running {
        let (done, total) = view.results.as_ref().map_or((0, 1), |r| {
            (
                r.boundaries.iter().filter(|b| b.stop.is_none()).count(),
                r.boundaries.len().max(1),
            )
        });
        ui.add(
            egui::ProgressBar::new(done as f32 / total as f32)
                .text(format!("{done} of {total} curves")),
        );
        // No spinner: it repaints every frame, which on a software-rendered display costs a
        // core the worker needs. The elapsed time below refreshes once a second.
        let model = view.results.as_ref().map_or("", |r| r.model.as_str());
        ui.horizontal_wrapped(|ui| {
            match p.current {
                Some(t) => ui.label(format!(
                    "{model}: {} · {:.1}s",
                    t.what,
                    t.since.elapsed().as_secs_f64()
                )),
                None => ui.label("starting the worker…"),
            };
        });
        ui.label(
            RichText::new(format!(
                "{} trials so far · {:.0}s",
                view.results.as_ref().map_or(0, |r| r.trials.len()),
                p.started.elapsed().as_secs_f64()
            ))
            .small(),
        );
    }
}

/// One line of the picker: name, parameters, weight bytes in f32 and f16/bf16, where from.
fn entry_text(e: &CatalogEntry) -> String {
    use crate::plan::human_bytes;
    let params = e
        .params
        .map(|p| format!("  {}", format_params(p).replace(" parameters", "")))
        .unwrap_or_default();
    let bytes = match (e.f32_bytes, e.half_bytes) {
        (Some(a), Some(b)) => format!(" · f32 {} · f16 {}", human_bytes(a), human_bytes(b)),
        _ => String::new(),
    };
    let from = if e.source == EntrySource::HfCache {
        " · HF cache"
    } else {
        ""
    };
    format!("{}{params}{bytes}{from}", e.name)
}

/// The model picker: every known model grouped by family (bundled, the local Hugging Face
/// cache, recent runs), filtered as you type; a click puts the name in the model field.
fn picker(view: &View<'_>, settings: &mut Settings, filter: &mut String, ui: &mut egui::Ui) {
    let header = format!("{} ({} models)", label::BUNDLED_MODEL, view.models.len());
    // A pick closes the list (on the next frame), so Run is back in view.
    let close_id = ui.make_persistent_id("model-picker-close");
    let close = ui
        .data_mut(|d| d.remove_temp::<bool>(close_id))
        .unwrap_or(false);
    egui::CollapsingHeader::new(header)
        .id_salt("model-picker")
        .open(close.then_some(false))
        .show(ui, |ui| {
            labelled_text(ui, label::MODEL_FILTER, filter, "name or family");
            let needle = filter.trim().to_ascii_lowercase();
            let matches = |e: &CatalogEntry| {
                needle.is_empty()
                    || e.name.to_ascii_lowercase().contains(&needle)
                    || e.group.to_ascii_lowercase().contains(&needle)
            };
            let recent: Vec<&String> = settings
                .recent_models
                .iter()
                .filter(|r| needle.is_empty() || r.to_ascii_lowercase().contains(&needle))
                .collect();
            let mut groups: Vec<&str> = Vec::new();
            for e in view.models.iter().filter(|e| matches(e)) {
                if !groups.contains(&e.group.as_str()) {
                    groups.push(&e.group);
                }
            }
            egui::ScrollArea::vertical()
                .id_salt("model-picker-list")
                .max_height(300.0)
                .show(ui, |ui| {
                    let mut pick: Option<String> = None;
                    if !recent.is_empty() {
                        ui.label(RichText::new("recent").strong().small());
                        for r in &recent {
                            if ui
                                .selectable_label(settings.model == **r, r.as_str())
                                .clicked()
                            {
                                pick = Some((*r).clone());
                            }
                        }
                    }
                    for g in &groups {
                        ui.label(RichText::new(*g).strong().small());
                        for e in view.models.iter().filter(|e| e.group == *g && matches(e)) {
                            let r = ui.selectable_label(
                                settings.model == e.name,
                                RichText::new(entry_text(e)).small(),
                            );
                            let r = match &e.problem {
                                Some(p) => r.on_hover_text(p),
                                None => r,
                            };
                            if r.clicked() {
                                pick = Some(e.name.clone());
                            }
                        }
                    }
                    if groups.is_empty() && recent.is_empty() {
                        ui.label(RichText::new("no model matches").weak().small());
                    }
                    if let Some(p) = pick {
                        settings.model = p;
                        ui.data_mut(|d| d.insert_temp(close_id, true));
                        ui.ctx().request_repaint();
                    }
                });
        });
}
