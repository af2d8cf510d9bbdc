//! `turnpike ice-check`: run ICE agents against TURN servers and report
//! which kinds of path work (host, server-reflexive, relayed), with
//! round-trip times, as a table or as one JSON document.
//!
//! Without a mode both agents run in this process: A (controlling) and B
//! (controlled), optionally each in its own network namespace. `offer` and
//! `answer` run one agent each, in two processes (two machines), which
//! swap one-line descriptions through stdout and stdin.
//!
//! Exit status: 0 when the expectations hold (`--expect KIND`, or with
//! none: at least one pair succeeded), 1 when they do not, 2 when the
//! check could not run (bad arguments, credentials, sockets).
//!
//! By job: `args` (the command line), `plan` (arguments resolved into
//! agents and options), `fetch` (`--credentials-url`), `progress`
//! (stderr as it runs) and `render` (the table and the JSON); this file
//! runs it.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{Context, Result};

use turnpike::ice::driver::{Driver, Exchange};
use turnpike_proto::ice::Description;

mod args;
mod fetch;
mod plan;
mod progress;
mod render;

pub(crate) use args::IceCheckArgs;
use plan::plan;
use progress::Progress;
use render::{RunInfo, Verdict, render_json, render_table};

/// Read the other side's one-line description from stdin, on a thread of
/// its own (a blocked read must not hold the process open at exit).
fn read_remote() -> tokio::sync::mpsc::Receiver<Result<Description, String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut line = String::new();
        let r = loop {
            line.clear();
            match stdin.read_line(&mut line) {
                Ok(0) => break Err("stdin ended before the other side's description".to_string()),
                Ok(_) if line.trim().is_empty() => continue,
                Ok(_) => break Description::from_blob(line.trim()),
                Err(e) => break Err(format!("reading stdin: {e}")),
            }
        };
        let _ = tx.blocking_send(r);
    });
    rx
}

/// `turnpike ice-check`.
pub(crate) fn main(args: IceCheckArgs) -> ExitCode {
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(a: IceCheckArgs) -> Result<bool> {
    let plan = plan(&a)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let netns: Vec<Option<String>> = plan.sides.iter().map(|s| s.netns.clone()).collect();
    let tty = std::io::stderr().is_terminal();
    let mut progress = Progress::new(tty, plan.names.clone(), a.mode.is_some());
    let names = plan.names.clone();
    let outcome = rt.block_on(async {
        let mut driver = Driver::start(plan.sides, plan.opts).context("opening sockets")?;
        let exchange = match a.mode {
            None => Exchange::Local,
            Some(_) => Exchange::Remote {
                publish: Box::new(move |d: &Description| {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{}", d.to_blob());
                    let _ = out.flush();
                    if std::io::stdin().is_terminal() {
                        eprintln!(
                            "give the line above to the other side's ice-check; paste its line (tpice1.…) here and press Enter:"
                        );
                    }
                }),
                incoming: read_remote(),
            },
        };
        // Ctrl-C ends the run with what there is (and the allocations
        // deleted), not the process.
        let mut sigint =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
                .context("installing the SIGINT handler")?;
        let stop = async move {
            sigint.recv().await;
        };
        anyhow::Ok(driver.run(exchange, &mut progress, stop).await)
    })?;
    progress.finish();
    let verdict = Verdict::of(&outcome.reports, &a.expect);
    let mut out = std::io::stdout().lock();
    if a.json {
        let info = RunInfo {
            mode: a.mode,
            servers: &plan.servers,
            turn: &plan.turn,
            stun: plan.stun,
            names: &names,
            netns: &netns,
            expect: &a.expect,
        };
        let v = render_json(&info, &outcome, &verdict);
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        write!(
            out,
            "{}",
            render_table(&names, &outcome, &verdict, &a.expect)
        )?;
    }
    out.flush()?;
    Ok(verdict.expectations_met)
}
