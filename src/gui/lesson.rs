//! A lesson in the window: the runner on a thread of its own, running the steps in order from
//! the start (the next step is measured while the class reads this one), each step's results
//! sent back as it finishes. The UI thread only reads what has arrived.

use crate::lesson::Lesson;
use crate::lesson::runner::{LessonRunner, StepResult};
use crate::worker::WorkerConfig;
use eframe::egui;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::time::Duration;

/// What the lesson's thread says.
enum Msg {
    Step(Box<StepResult>),
    Progress(String),
    /// The runner could not start (its folder cannot be made).
    Failed(String),
}

/// An open lesson: the steps that have arrived, the one shown, the last progress line.
pub struct LessonView {
    pub lesson: Lesson,
    pub dir: PathBuf,
    /// One slot a step, filled as each finishes.
    pub steps: Vec<Option<StepResult>>,
    pub current: usize,
    pub progress: Option<String>,
    pub error: Option<String>,
    rx: Receiver<Msg>,
    cancel: Arc<AtomicBool>,
}

impl LessonView {
    /// Starts `lesson`'s runner: journals under `dir`, the PyTorch interpreter `python` (None:
    /// found as the sweep finds it).
    pub fn start(
        lesson: Lesson,
        worker: WorkerConfig,
        python: Option<PathBuf>,
        dir: PathBuf,
        ctx: egui::Context,
    ) -> std::io::Result<Self> {
        // Bounded: steps are few; progress lines are dropped when the window is behind.
        let (tx, rx) = sync_channel(64);
        let cancel = Arc::new(AtomicBool::new(false));
        let n = lesson.steps.len();
        let (thread_lesson, thread_dir, thread_cancel) =
            (lesson.clone(), dir.clone(), Arc::clone(&cancel));
        std::thread::Builder::new()
            .name("oomlab-lesson".into())
            .spawn(move || {
                let send = |m: Msg| {
                    let _ = tx.send(m);
                    ctx.request_repaint();
                };
                let mut runner = match LessonRunner::new(thread_lesson, worker, python, thread_dir)
                {
                    Ok(r) => r,
                    Err(e) => return send(Msg::Failed(e)),
                };
                let progress_tx = std::sync::Mutex::new(tx.clone());
                let progress_ctx = ctx.clone();
                let say = move |line: String| {
                    if let Ok(t) = progress_tx.lock() {
                        let _ = t.try_send(Msg::Progress(line));
                    }
                    progress_ctx.request_repaint();
                };
                for i in 0..n {
                    if thread_cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    let r = runner.run_step(i, &thread_cancel, &say);
                    send(Msg::Step(Box::new(r)));
                }
            })?;
        Ok(Self {
            steps: vec![None; n],
            lesson,
            dir,
            current: 0,
            progress: None,
            error: None,
            rx,
            cancel,
        })
    }

    /// Takes what the thread has sent; whether anything arrived.
    pub fn drain(&mut self) -> bool {
        let mut any = false;
        while let Ok(m) = self.rx.try_recv() {
            self.take(m);
            any = true;
        }
        any
    }

    fn take(&mut self, m: Msg) {
        match m {
            Msg::Step(s) => {
                let i = s.index;
                self.steps[i] = Some(*s);
                self.progress = None;
            }
            Msg::Progress(p) => self.progress = Some(p),
            Msg::Failed(e) => self.error = Some(e),
        }
    }

    /// Blocks until the thread says something (tests), then takes it.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        match self.rx.recv_timeout(timeout) {
            Ok(m) => {
                self.take(m);
                true
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => false,
        }
    }

    /// The shown step's results, once measured.
    #[must_use]
    pub fn shown(&self) -> Option<&StepResult> {
        self.steps.get(self.current).and_then(Option::as_ref)
    }
}

impl Drop for LessonView {
    fn drop(&mut self) {
        self.cancel.store(true, Ordering::Relaxed);
    }
}
