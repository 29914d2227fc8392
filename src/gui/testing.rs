//! The one interface tests drive the window through: the settings a user would set, what the
//! window shows ([`Seen`]), and waits for its background threads. The app's state stays private.

use super::frame_stats::FrameStats;
use super::panels::PlanStatus;
use super::{OomLabApp, Settings};
use crate::plan::SweepPlan;
use crate::report::Results;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the window holds now, as a test reads it.
#[derive(Debug)]
pub struct Seen<'a> {
    pub settings: &'a Settings,
    /// The shown results (a live sweep or a reopened file).
    pub results: Option<&'a Results>,
    /// The journal the shown results come from.
    pub journal: Option<&'a Path>,
    pub notice: Option<&'a str>,
    pub frame_stats: FrameStats,
    /// The plan Run would start now, when the settings check found one.
    pub checked_plan: Option<SweepPlan>,
    /// The settings are being checked off the UI thread (or the machine's memory is unknown).
    pub checking: bool,
    pub running: bool,
    /// The worker's pid and the batch of the trial whose forward is running now.
    pub trial_in_flight: Option<(u32, usize)>,
    /// The estimator for the shown sweep is built.
    pub estimator_ready: bool,
    /// The open lesson: the step shown, and its results once measured.
    pub lesson: Option<(usize, Option<&'a crate::lesson::runner::StepResult>)>,
}

/// Test hooks (never used by the app itself).
pub trait TestHooks {
    fn seen(&self) -> Seen<'_>;
    /// The settings, as a user would edit them in the controls.
    fn settings_mut(&mut self) -> &mut Settings;
    /// Opens a results or journal file, as the Open dialog would.
    fn open_results(&mut self, path: PathBuf);
    /// Blocks until a background job reports (or `timeout`), then handles it.
    fn wait_for_background(&mut self, timeout: Duration) -> bool;
    /// Blocks until the sweep engine sends its next message (or `timeout`), then handles it.
    fn wait_for_engine(&mut self, timeout: Duration) -> bool;
    /// Starts a lesson (bundled name or file) with its journals in `dir`, as the Lessons menu
    /// does (a folder holding its finished journals is read back).
    fn open_lesson_in(&mut self, name: &str, dir: PathBuf);
    /// Blocks until the lesson's thread says something (or `timeout`), then takes it.
    fn wait_for_lesson(&mut self, timeout: Duration) -> bool;
}

impl TestHooks for OomLabApp {
    fn seen(&self) -> Seen<'_> {
        Seen {
            settings: &self.settings,
            results: self.sweeps.results(),
            journal: self.sweeps.journal_path(),
            notice: self.messages.notice.as_deref(),
            frame_stats: self.window.frame,
            checked_plan: self
                .check
                .current(&self.settings)
                .and_then(|c| c.plan.as_ref().ok().cloned()),
            checking: matches!(self.plan_status(), PlanStatus::Checking),
            running: self.sweeps.is_running(),
            trial_in_flight: self.sweeps.trial_in_flight(),
            estimator_ready: self.sweeps.estimator_ready(),
            lesson: self.lesson.as_ref().map(|l| (l.current, l.shown())),
        }
    }

    fn settings_mut(&mut self) -> &mut Settings {
        &mut self.settings
    }

    fn open_results(&mut self, path: PathBuf) {
        OomLabApp::open_results(self, path);
    }

    fn wait_for_background(&mut self, timeout: Duration) -> bool {
        match self.jobs.recv_timeout(timeout) {
            Some(m) => {
                self.handle_bg(m);
                true
            }
            None => false,
        }
    }

    fn wait_for_engine(&mut self, timeout: Duration) -> bool {
        OomLabApp::wait_for_engine(self, timeout)
    }

    fn open_lesson_in(&mut self, name: &str, dir: PathBuf) {
        match crate::lesson::Lesson::find(name) {
            Ok(l) => {
                let ctx = self.window.ctx.clone();
                OomLabApp::open_lesson_in(self, l, dir, &ctx);
            }
            Err(e) => self.messages.error(e.to_string()),
        }
    }

    fn wait_for_lesson(&mut self, timeout: Duration) -> bool {
        self.lesson.as_mut().is_some_and(|l| l.wait(timeout))
    }
}
