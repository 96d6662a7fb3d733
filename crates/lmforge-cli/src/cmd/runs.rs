//! `lmforge runs`: list, show, compare and remove the runs recorded in the experiment store.

use crate::Ctx;
use anyhow::Result;
use lmforge_track::store::{self, view, Filter, RunRecord, Store};
use std::io::Write;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Recorded runs, newest first.
    List {
        /// KEY OP VALUE, OP one of = != < <= > >= ~ (contains); KEY a column (name, kind,
        /// status, group, host, step), a metric (val_loss, best_val_loss, train_loss, ...) or a
        /// config key (optim.lr). Repeatable; all must hold.
        #[arg(long, value_name = "EXPR")]
        filter: Vec<String>,
        /// Sort by a column, metric or config key (`-KEY`: descending).
        #[arg(long, value_name = "KEY")]
        sort: Option<String>,
        /// Show at most N runs.
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON records.
        #[arg(long)]
        json: bool,
    },
    /// Everything recorded about a run: status, metrics, artifacts, config.
    Show {
        /// An id, a unique id prefix, a name or a run dir.
        run: String,
        /// Print the record and its metric rows as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Config differences and metrics of runs side by side.
    Compare {
        #[arg(required = true, num_args = 2..)]
        runs: Vec<String>,
    },
    /// Remove runs from the store (their run dirs stay on disk).
    Rm {
        #[arg(required = true)]
        runs: Vec<String>,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

fn now_s() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn run(cmd: Command, ctx: &Ctx) -> Result<i32> {
    let mut st = Store::open(&ctx.db_path())?;
    match cmd {
        Command::List { filter, sort, limit, json } => {
            let filters: Vec<Filter> = filter.iter().map(|f| Filter::parse(f)).collect::<Result<_, _>>()?;
            let mut runs: Vec<RunRecord> =
                st.list()?.into_iter().filter(|r| filters.iter().all(|f| f.matches(r))).collect();
            if let Some(key) = sort {
                store::sort_runs(&mut runs, &key);
            }
            runs.truncate(limit.unwrap_or(usize::MAX));
            if json {
                println!("{}", serde_json::to_string_pretty(&runs)?);
            } else {
                print!("{}", view::list_table(&runs, now_s()));
            }
        }
        Command::Show { run, json } => {
            let r = st.find(&run)?;
            let metrics = st.metrics(&r.id)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"run": r, "metrics": metrics}))?);
            } else {
                print!("{}", view::show(&r, now_s(), metrics.len()));
            }
        }
        Command::Compare { runs } => {
            let records: Vec<RunRecord> = runs.iter().map(|q| st.find(q)).collect::<Result<_, _>>()?;
            print!("{}", view::compare(&records));
        }
        Command::Rm { runs, yes } => {
            let records: Vec<RunRecord> = runs.iter().map(|q| st.find(q)).collect::<Result<_, _>>()?;
            for r in &records {
                println!("{}  {}  {}  {}", r.id, r.name, r.status, r.run_dir);
            }
            if !yes
                && !confirm(&format!(
                    "remove these {} run record(s) from {}? (run dirs stay) [y/N] ",
                    records.len(),
                    st.path().display()
                ))?
            {
                println!("nothing removed");
                return Ok(1);
            }
            let ids: Vec<String> = records.iter().map(|r| r.id.clone()).collect();
            st.remove(&ids)?;
            println!("removed {} run record(s)", ids.len());
        }
    }
    Ok(0)
}

/// Asks on the terminal; refuses (an error) when stdin is not one.
fn confirm(question: &str) -> Result<bool> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("not removing without confirmation: pass --yes (stdin is not a terminal)");
    }
    print!("{question}");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
