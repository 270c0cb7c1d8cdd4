//! `fugo derive`: opens the files, loads the key, runs [`crate::bulk`].

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

use super::CliError;
use super::settings::{DeriveSettings, InputShape};
use crate::bulk::{self, Parallelism, Sinks, Summary};
use crate::code::Coder;
use crate::keyfile;

/// Runs `fugo derive`; returns the run's counts.
pub(crate) fn run(settings: DeriveSettings) -> Result<Summary, CliError> {
    let keys = keyfile::load(&settings.key, &mut io::stderr())?;
    let coder = Coder::new(&keys, settings.agency.clone(), settings.epoch);
    drop(keys);

    let input: Box<dyn Read + Send> = match &settings.input {
        Some(path) => Box::new(File::open(path).map_err(|source| CliError::OpenInput {
            path: path.display().to_string(),
            source,
        })?),
        None => Box::new(io::stdin()),
    };
    let mut output: Box<dyn Write> = match &settings.output {
        Some(path) => Box::new(File::create(path).map_err(|source| CliError::CreateOutput {
            path: path.display().to_string(),
            source,
        })?),
        None => Box::new(io::stdout().lock()),
    };
    let progress = progress_bar();
    let mut rejects: Box<dyn Write> = match &settings.rejects {
        Some(path) => Box::new(BufWriter::new(File::create(path).map_err(|source| {
            CliError::CreateOutput {
                path: path.display().to_string(),
                source,
            }
        })?)),
        None => Box::new(BufWriter::new(AboveProgress {
            bar: progress.clone(),
        })),
    };
    let parallelism = Parallelism {
        threads: settings.threads,
    };
    let sinks = Sinks {
        output: &mut *output,
        rejects: &mut *rejects,
        progress: progress.as_ref(),
    };
    let summary = match &settings.shape {
        InputShape::Lines => bulk::derive_lines(&coder, input, parallelism, sinks)?,
        InputShape::Csv(options) => bulk::derive_csv(&coder, input, options, parallelism, sinks)?,
    };
    if let Some(bar) = progress {
        bar.finish();
    }
    Ok(summary)
}

/// A rows/s spinner on stderr, only when a person is watching.
pub(crate) fn progress_bar() -> Option<ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("{spinner} {human_pos} rows  {rate}  {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .with_key("rate", |state: &ProgressState, out: &mut dyn fmt::Write| {
            let _ = write!(out, "{:.2} M rows/s", state.per_sec() / 1e6);
        });
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

/// Writes to stderr without tearing the progress bar.
pub(crate) struct AboveProgress {
    pub(crate) bar: Option<ProgressBar>,
}

impl Write for AboveProgress {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.bar {
            Some(bar) => bar.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
