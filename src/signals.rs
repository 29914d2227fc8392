//! Ctrl-C and SIGTERM for both faces, through signal-hook: a named thread waits for the signals
//! (no polling) and calls the face's handler, which cancels the sweep (command line) or closes
//! the window (desktop lab). The trial in flight is recorded as cancelled either way.

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Calls `on_signal` on a background thread each time SIGINT or SIGTERM arrives.
pub fn on_terminate(on_signal: impl Fn() + Send + 'static) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("oomlab-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                on_signal();
            }
        })?;
    Ok(())
}
