//! Byte progress of the physical backup commands on stderr, in the manner of
//! [`crate::backup::progress`] (which counts documents): an indicatif bar when stderr is a
//! terminal, plain lines (one every few seconds, one at the end) otherwise. stdout stays free for
//! what scripts read (a backup id, a listing).

use std::{
    io::IsTerminal as _,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

/// How often a plain-line report is printed for a long set.
const PLAIN_LINE_INTERVAL: Duration = Duration::from_secs(5);
/// The bar's layout.
const BAR_TEMPLATE: &str =
    "{msg} [{elapsed_precise}] [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec})";
/// Bytes in the megabyte the reports use (decimal, as disk and network rates are quoted).
const BYTES_PER_MB: f64 = 1_000_000.0;

/// Makes one progress display per replica set.
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

    /// Plain lines only (tests, and output meant for logs).
    #[cfg(test)]
    pub fn plain() -> Reporter {
        Reporter { terminal: false }
    }

    /// Starts reporting on `label` (a set name); `verb` is `stored`, `verified` or `restored`;
    /// `total` the bytes expected.
    pub fn start(&self, verb: &'static str, label: &str, total: u64) -> ByteProgress {
        let bar = self.terminal.then(|| {
            let bar = ProgressBar::new(total);
            if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(label.to_owned());
            bar
        });
        let now = Instant::now();
        ByteProgress {
            bar,
            verb,
            label: label.to_owned(),
            total,
            started: now,
            last_line: now,
            bytes: 0,
        }
    }
}

/// Progress of one set.
#[derive(Debug)]
pub struct ByteProgress {
    bar: Option<ProgressBar>,
    verb: &'static str,
    label: String,
    total: u64,
    started: Instant,
    last_line: Instant,
    bytes: u64,
}

impl ByteProgress {
    /// Counts `bytes` more.
    pub fn add(&mut self, bytes: u64) {
        self.bytes += bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
            return;
        }
        if self.last_line.elapsed() >= PLAIN_LINE_INTERVAL {
            self.last_line = Instant::now();
            eprintln!(
                "{}: {}/{} {} so far ({})",
                self.label,
                megabytes(self.bytes),
                megabytes(self.total),
                self.verb,
                rate(self.bytes, self.started.elapsed())
            );
        }
    }

    /// Clears the bar and prints the set's summary line, `detail` appended.
    pub fn finish(self, detail: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "{}",
            done_line(
                &self.label,
                self.verb,
                self.bytes,
                self.started.elapsed(),
                detail
            )
        );
    }

    /// Clears the bar without a summary (the caller reports the error).
    pub fn abandon(self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

/// `12.3 MB`.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / BYTES_PER_MB)
}

/// `85.2 MB/s`; `- MB/s` for an instant.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64();
    if seconds <= 0.0 {
        return "- MB/s".to_owned();
    }
    format!("{:.1} MB/s", bytes as f64 / BYTES_PER_MB / seconds)
}

/// `shard0: 400.0 MB stored in 3.1s (129.0 MB/s), 12.0 MB new`.
pub fn done_line(label: &str, verb: &str, bytes: u64, elapsed: Duration, detail: &str) -> String {
    format!(
        "{label}: {} {verb} in {:.1}s ({}){detail}",
        megabytes(bytes),
        elapsed.as_secs_f64(),
        rate(bytes, elapsed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_rates() {
        assert_eq!(megabytes(12_345_678), "12.3 MB");
        assert_eq!(rate(100_000_000, Duration::from_secs(2)), "50.0 MB/s");
        assert_eq!(rate(5, Duration::ZERO), "- MB/s");
        assert_eq!(
            done_line("s", "stored", 3_000_000, Duration::from_millis(1500), ", x"),
            "s: 3.0 MB stored in 1.5s (2.0 MB/s), x"
        );
    }

    #[test]
    fn plain_progress_counts() {
        let mut progress = Reporter::plain().start("stored", "s", 10);
        progress.add(4);
        progress.add(6);
        assert_eq!(progress.bytes, 10);
        progress.finish("");
    }
}
