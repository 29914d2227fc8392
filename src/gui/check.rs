//! Checking the settings: a bundled model at once on the UI thread (its config is in memory), a
//! model path on one long-lived checker thread (the latest settings win; a newer submission
//! replaces one still queued, so typing a path never piles up jobs). If the thread cannot start,
//! Run says so instead of "checking" for ever.

use super::form::{self, Checked, Refusal};
use super::msg::BgMsg;
use super::panels::PlanStatus;
use super::settings::Settings;
use eframe::egui;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};

/// Where the check of the settings stands.
pub struct SettingsCheck {
    /// The checker thread, or why it could not start (then paths cannot be checked).
    checker: Result<Checker, Refusal>,
    /// The last check and the settings it was for.
    checked: Option<(Settings, Checked)>,
    /// Settings handed to the checker and not yet answered.
    submitted: Option<Settings>,
}

impl SettingsCheck {
    #[must_use]
    pub fn new(checker: Result<Checker, Refusal>) -> Self {
        Self {
            checker,
            checked: None,
            submitted: None,
        }
    }

    /// Brings the check up to date with `settings`.
    pub fn refresh(&mut self, settings: &Settings) {
        if self.current(settings).is_some() {
            return;
        }
        if form::in_memory(settings) {
            self.checked = Some((settings.clone(), form::check(settings)));
        } else if self.submitted.as_ref() != Some(settings)
            && let Ok(checker) = &self.checker
        {
            checker.submit(settings.clone());
            self.submitted = Some(settings.clone());
        }
    }

    /// The checker thread's answer.
    pub fn receive(&mut self, key: Settings, checked: Checked) {
        if self.submitted.as_ref() == Some(&key) {
            self.submitted = None;
        }
        self.checked = Some((key, checked));
    }

    /// The check of exactly these settings, when there is one.
    #[must_use]
    pub fn current(&self, settings: &Settings) -> Option<&Checked> {
        self.checked
            .as_ref()
            .filter(|(k, _)| k == settings)
            .map(|(_, c)| c)
    }

    #[must_use]
    pub fn status(&self, settings: &Settings) -> PlanStatus<'_> {
        match (self.current(settings), &self.checker) {
            (Some(c), _) => match &c.plan {
                Ok(_) => PlanStatus::Ready,
                Err(e) => PlanStatus::Invalid(e.as_str()),
            },
            (None, Err(e)) => PlanStatus::Invalid(e.as_str()),
            (None, Ok(_)) => PlanStatus::Checking,
        }
    }

    /// The model line of the last check of the same model (it stays while other fields change).
    #[must_use]
    pub fn model_summary(&self, settings: &Settings) -> Option<&str> {
        self.checked
            .as_ref()
            .filter(|(k, _)| k.model == settings.model)
            .and_then(|(_, c)| c.summary.as_deref())
    }
}

/// The checker thread: checks the latest settings submitted.
pub struct Checker {
    slot: Arc<Slot>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Slot {
    next: Mutex<Option<Settings>>,
    wake: Condvar,
    closed: AtomicBool,
}

impl Checker {
    /// Starts the checker thread.
    pub fn start(tx: SyncSender<BgMsg>, ctx: egui::Context) -> std::io::Result<Self> {
        let slot = Arc::new(Slot {
            next: Mutex::new(None),
            wake: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let s = Arc::clone(&slot);
        let thread = std::thread::Builder::new()
            .name("oomlab-check-settings".into())
            .spawn(move || {
                loop {
                    let settings = {
                        let Ok(mut next) = s.next.lock() else { return };
                        while next.is_none() && !s.closed.load(Ordering::Relaxed) {
                            next = match s.wake.wait(next) {
                                Ok(n) => n,
                                Err(_) => return,
                            };
                        }
                        match next.take() {
                            Some(settings) => settings,
                            None => return,
                        }
                    };
                    let checked = form::check(&settings);
                    let msg = BgMsg::Checked {
                        key: Box::new(settings),
                        checked: Box::new(checked),
                    };
                    if tx.send(msg).is_err() {
                        return;
                    }
                    ctx.request_repaint();
                }
            })?;
        Ok(Self {
            slot,
            thread: Some(thread),
        })
    }

    /// Queues `settings` for checking, replacing any not yet started.
    pub fn submit(&self, settings: Settings) {
        if let Ok(mut next) = self.slot.next.lock() {
            *next = Some(settings);
            self.slot.wake.notify_one();
        }
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        // Under the lock, so the thread cannot miss it between its check and its wait.
        if let Ok(_next) = self.slot.next.lock() {
            self.slot.closed.store(true, Ordering::Relaxed);
        }
        self.slot.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
