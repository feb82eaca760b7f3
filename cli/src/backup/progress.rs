//! Per-collection progress on stderr: an indicatif bar when stderr is a terminal, plain lines
//! (one every few seconds, one at the end) when it is a log file or a pipe, where a redrawn
//! bar would be noise. stdout stays free for scripts.

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressState, ProgressStyle};

/// How often a plain-line progress report is printed for a long collection.
const PLAIN_LINE_INTERVAL: Duration = Duration::from_secs(5);
/// The progress bar's layout when the document count is known.
const BAR_TEMPLATE: &str =
    "{msg} [{elapsed_precise}] [{bar:30}] {human_pos}/{human_len} docs ({rate} docs/s)";
/// The layout when it is not (restore reads a stream of unknown length).
const SPINNER_TEMPLATE: &str =
    "{spinner} {msg} [{elapsed_precise}] {human_pos} docs ({rate} docs/s)";

/// Makes one progress display per collection; see the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Reporter {
    terminal: bool,
}

impl Reporter {
    /// A bar if stderr is a terminal, else plain lines.
    pub fn for_stderr() -> Reporter {
        Reporter {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Starts reporting on namespace `ns`; `verb` is `dumped` or `restored`, `total` the
    /// expected document count if known (an estimate: the collection is live).
    pub fn start(&self, verb: &'static str, ns: &str, total: Option<u64>) -> CollectionProgress {
        let bar = self.terminal.then(|| {
            let (bar, template) = match total {
                Some(total) => (ProgressBar::new(total), BAR_TEMPLATE),
                None => (ProgressBar::new_spinner(), SPINNER_TEMPLATE),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                let style = style.progress_chars("=> ").with_key(
                    "rate",
                    |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                        // A failed write only garbles one frame of the bar.
                        let _ = write!(out, "{:.0}", state.per_sec());
                    },
                );
                bar.set_style(style);
            }
            bar.set_message(ns.to_owned());
            bar
        });
        let now = Instant::now();
        CollectionProgress {
            bar,
            verb,
            ns: ns.to_owned(),
            total,
            started: now,
            last_line: now,
            docs: 0,
        }
    }
}

/// Progress of one collection.
#[derive(Debug)]
pub struct CollectionProgress {
    bar: Option<ProgressBar>,
    verb: &'static str,
    ns: String,
    total: Option<u64>,
    started: Instant,
    last_line: Instant,
    docs: u64,
}

impl CollectionProgress {
    /// Counts `docs` more documents.
    pub fn add(&mut self, docs: u64) {
        self.docs += docs;
        if let Some(bar) = &self.bar {
            bar.inc(docs);
            return;
        }
        if self.last_line.elapsed() >= PLAIN_LINE_INTERVAL {
            self.last_line = Instant::now();
            eprintln!(
                "{}",
                running_line(
                    self.verb,
                    &self.ns,
                    self.docs,
                    self.total,
                    self.started.elapsed()
                )
            );
        }
    }

    /// Documents counted so far.
    pub fn docs(&self) -> u64 {
        self.docs
    }

    /// Clears the bar and prints the collection's summary line.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "{}",
            done_line(self.verb, &self.ns, self.docs, self.started.elapsed())
        );
    }

    /// Clears the bar without a summary (the caller reports the error).
    pub fn abandon(self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// Documents per second, 0 for an instant.
pub fn docs_per_second(docs: u64, elapsed: Duration) -> u64 {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return 0;
    }
    (docs as f64 / seconds).round() as u64
}

/// `db.c: 1000/5000 documents restored so far (812 docs/s)`.
pub fn running_line(
    verb: &str,
    ns: &str,
    docs: u64,
    total: Option<u64>,
    elapsed: Duration,
) -> String {
    let count = match total {
        Some(total) => format!("{docs}/{total}"),
        None => docs.to_string(),
    };
    format!(
        "{ns}: {count} documents {verb} so far ({} docs/s)",
        docs_per_second(docs, elapsed)
    )
}

/// `db.c: 5000 documents dumped in 1.2s (4167 docs/s)`.
pub fn done_line(verb: &str, ns: &str, docs: u64, elapsed: Duration) -> String {
    format!(
        "{ns}: {docs} documents {verb} in {:.1}s ({} docs/s)",
        elapsed.as_secs_f64(),
        docs_per_second(docs, elapsed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(docs_per_second(1000, Duration::from_millis(500)), 2000);
        assert_eq!(docs_per_second(5, Duration::ZERO), 0);
        assert_eq!(docs_per_second(0, Duration::from_secs(3)), 0);
    }

    #[test]
    fn lines() {
        assert_eq!(
            done_line("dumped", "d.c", 5000, Duration::from_millis(1200)),
            "d.c: 5000 documents dumped in 1.2s (4167 docs/s)"
        );
        assert_eq!(
            running_line("restored", "d.c", 10, Some(40), Duration::from_secs(2)),
            "d.c: 10/40 documents restored so far (5 docs/s)"
        );
        assert_eq!(
            running_line("dumped", "d.c", 10, None, Duration::from_secs(1)),
            "d.c: 10 documents dumped so far (10 docs/s)"
        );
    }

    #[test]
    fn plain_progress_counts() {
        let reporter = Reporter { terminal: false };
        let mut progress = reporter.start("dumped", "d.c", Some(3));
        progress.add(2);
        progress.add(1);
        assert_eq!(progress.docs(), 3);
        progress.finish();
    }
}
