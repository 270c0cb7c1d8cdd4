//! The files of a bulk run, shared by `fugo derive` and `fugo client`:
//! input, an output that appears only when complete, rejects, encoding.
//!
//! Output to a file goes to a temporary file beside the target (same
//! folder, so the final rename is atomic) and is renamed into place only
//! when the run finished; a run that stops leaves no file under the target
//! name, and the temporary file is removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use super::CliError;
use super::progress::{AboveProgress, progress_bar};
use super::settings::FileSettings;
use fugo::bulk::{self, EncodeWriter, Sinks, Summary, Work};

/// A file being written under a temporary name until [`Pending::commit`].
struct Pending {
    temp: PathBuf,
    target: PathBuf,
    file: Option<BufWriter<File>>,
}

impl Pending {
    fn create(target: &Path) -> Result<Self, CliError> {
        let failed = |source| CliError::CreateOutput {
            path: target.display().to_string(),
            source,
        };
        let name = target
            .file_name()
            .ok_or_else(|| failed(io::Error::other("not a file name")))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".fugo-partial-{}", std::process::id()));
        let temp = target.with_file_name(temp_name);
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            // The output may hold numbers (reidentify): owner only.
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&temp).map_err(failed)?;
        Ok(Pending {
            temp,
            target: target.to_owned(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// Flushes, syncs and renames the file into place.
    fn commit(mut self) -> Result<(), CliError> {
        let failed = |source| CliError::CreateOutput {
            path: self.target.display().to_string(),
            source,
        };
        if let Some(writer) = self.file.take() {
            let file = writer.into_inner().map_err(|e| failed(e.into_error()))?;
            file.sync_all().map_err(failed)?;
        }
        fs::rename(&self.temp, &self.target).map_err(failed)
    }
}

impl Write for Pending {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(file) => file.write(buf),
            None => Err(io::Error::other("already closed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.file {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            // Not committed: the run stopped. Leave nothing behind.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// Where the results go.
enum Output {
    Stdout(io::StdoutLock<'static>),
    /// Not a regular file (`/dev/null`, a named pipe): written directly,
    /// since it cannot be replaced by a rename (and must not be).
    Special(BufWriter<File>),
    /// `None` once committed.
    File(Option<Pending>),
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Output::Stdout(out) => out.write(buf),
            Output::Special(out) => out.write(buf),
            Output::File(Some(file)) => file.write(buf),
            Output::File(None) => Err(io::Error::other("the output is closed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Output::Stdout(out) => out.flush(),
            Output::Special(out) => out.flush(),
            Output::File(Some(file)) => file.flush(),
            Output::File(None) => Ok(()),
        }
    }
}

/// A regular file (new or not) is written beside and renamed into place;
/// a symbolic link is followed to its file; anything else is written as is.
fn open_output(path: &Path) -> Result<Output, CliError> {
    let failed = |source| CliError::CreateOutput {
        path: path.display().to_string(),
        source,
    };
    match fs::metadata(path) {
        Ok(meta) if !meta.is_file() => {
            let file = OpenOptions::new().write(true).open(path).map_err(failed)?;
            Ok(Output::Special(BufWriter::with_capacity(1 << 20, file)))
        }
        Ok(_) => {
            let real = fs::canonicalize(path).map_err(failed)?;
            Ok(Output::File(Some(Pending::create(&real)?)))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Ok(Output::File(Some(Pending::create(path)?)))
        }
        Err(error) => Err(failed(error)),
    }
}

fn open_input(path: Option<&Path>) -> Result<Box<dyn Read + Send>, CliError> {
    Ok(match path {
        Some(path) => Box::new(File::open(path).map_err(|source| CliError::OpenInput {
            path: path.display().to_string(),
            source,
        })?),
        None => Box::new(io::stdin()),
    })
}

/// Runs `work` over the files `files` names; the output file appears only
/// if the run finished.
pub(crate) fn run<W: Work>(work: &W, files: &FileSettings) -> Result<Summary, CliError> {
    let input = open_input(files.input.as_deref())?;
    let output = match &files.output {
        Some(path) => open_output(path)?,
        None => Output::Stdout(io::stdout().lock()),
    };
    let mut output = EncodeWriter::new(output, files.encoding);
    let progress = progress_bar();
    let mut rejects: Box<dyn Write> = match &files.rejects {
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
    let sinks = Sinks {
        output: &mut output,
        rejects: &mut *rejects,
        progress: progress.as_ref(),
    };
    let ran = bulk::run(work, input, files.encoding, &files.shape, sinks);
    if let Some(bar) = &progress {
        bar.finish();
    }
    let summary = match ran {
        Ok(summary) => summary,
        Err(stopped) if files.output.is_none() && stopped.error.is_broken_pipe() => {
            return Err(CliError::ClosedPipe);
        }
        Err(stopped) if matches!(stopped.error, bulk::BulkError::Header(_)) => {
            return Err(CliError::Bulk(stopped.error));
        }
        Err(stopped) => {
            return Err(CliError::Stopped {
                error: stopped.error,
                rows: stopped.rows,
                output: files.output.as_ref().map(|p| p.display().to_string()),
            });
        }
    };
    drop(rejects);
    if let Output::File(pending) = output.get_mut()
        && let Some(pending) = pending.take()
    {
        pending.commit()?;
    }
    Ok(summary)
}
