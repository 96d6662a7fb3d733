//! lmforge's experiment tracking, above the core library: what records, searches and shows
//! runs, never what trains them.
//!
//! ```text
//! store        the SQLite experiment store of runs, metrics and statuses; its Recorder observer
//! tensorboard  TensorBoard event files of a run's scalars and hyperparameters (an observer)
//! sweep        hyperparameter sweeps: spaces, grid / random / TPE, ASHA / median, trials as
//!              `lmforge train` child processes
//! report       self-contained HTML reports of runs and sweeps (plotters SVG)
//! ```
//! The trainer knows none of these: it tells `lmforge::observe::Observers` about a run, and
//! [`observers`] builds the usual set.

pub mod report;
pub mod store;
pub mod sweep;
pub mod tensorboard;

use lmforge::observe::Observers;
use std::path::Path;

/// The observers of a run started from the command line: the experiment store at `db` (the
/// run's `kind`, `name` and `group` as the store labels it) and TensorBoard events in
/// `RUN_DIR/tb/`. A store that cannot be opened costs the record, not the run: the run goes on
/// with a warning.
pub fn observers(db: &Path, kind: &str, name: Option<String>, group: &str) -> Observers {
    let mut observers = Observers::default();
    match store::Store::open(db) {
        Ok(s) => observers.push(store::Recorder::new(s, kind, name, group)),
        Err(e) => tracing::warn!("this run is not recorded in the experiment store: {e}"),
    }
    observers.push(tensorboard::TensorBoardObserver::new());
    observers
}
