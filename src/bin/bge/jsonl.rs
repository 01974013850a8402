//! JSONL in and out for the command line, streamed: input lines are read and parsed on a
//! thread of their own and handed over in chunks as they come, each chunk's results are written
//! (and flushed) before the next is processed, so memory stays bounded whatever the input's
//! size and a slow producer sees its answers while it is still writing. Every input error names its line;
//! an output file appears only when every line succeeded.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use bge::{Error, Result};

/// How long a line waits for more lines to share its batch: a chunk is processed at the latest
/// this long after its first line was read, however slowly the rest arrive.
const WAIT: Duration = Duration::from_millis(20);

/// The longest input line, in bytes: a longer one is an error (texts are cut to the model's
/// max length anyway; this bounds what one line can hold in memory).
const MAX_LINE: usize = 64 << 20;

/// A line's parser: its JSON value to an item, or what is wrong with it.
pub type Parse<T> = fn(Value) -> std::result::Result<T, String>;

/// Reads `--input` (or stdin) line by line, parses each line with `parse`, and calls `process`
/// with the items in input order, in chunks of at most `chunk`: a chunk is handed over when it
/// is full, when the input ends, or [`WAIT`] after its first line was read. At most three
/// chunks' worth of parsed lines are held at any time (two waiting, one being processed). A
/// malformed line `N` ends the run: the lines before it are processed first, then the error
/// names line `N`.
pub fn stream<T: Send + 'static>(
    input: Option<&Path>,
    parse: Parse<T>,
    chunk: usize,
    mut process: impl FnMut(Vec<T>) -> Result<()>,
) -> Result<()> {
    let chunk = chunk.max(1);
    let mut reader: Box<dyn BufRead + Send> = match input {
        Some(path) => Box::new(BufReader::new(File::open(path).map_err(|e| Error::Io {
            path: path.to_owned(),
            source: e,
        })?)),
        None => Box::new(BufReader::new(io::stdin())),
    };
    let (tx, rx) = mpsc::sync_channel(2 * chunk);
    std::thread::spawn(move || {
        for line in 1.. {
            let item = match read_line(&mut reader) {
                Ok(None) => return,
                Ok(Some(bytes)) => parse_line(bytes, parse),
                Err(message) => Err(message),
            }
            .map_err(|message| Error::InputLine { line, message });
            let failed = item.is_err();
            // A closed channel means the run ended early (an error downstream): stop reading.
            if tx.send(item).is_err() || failed {
                return;
            }
        }
    });
    let mut pending = Vec::with_capacity(chunk);
    let mut deadline = Instant::now();
    loop {
        let next = match pending.is_empty() {
            true => rx.recv().ok(),
            false => match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(item) => Some(item),
                Err(RecvTimeoutError::Timeout) => {
                    process(std::mem::take(&mut pending))?;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => None,
            },
        };
        match next {
            Some(Ok(item)) => {
                if pending.is_empty() {
                    deadline = Instant::now() + WAIT;
                }
                pending.push(item);
                if pending.len() == chunk {
                    process(std::mem::take(&mut pending))?;
                }
            }
            Some(Err(e)) => {
                if !pending.is_empty() {
                    process(pending)?;
                }
                return Err(e);
            }
            None => break,
        }
    }
    match pending.is_empty() {
        true => Ok(()),
        false => process(pending),
    }
}

/// The next line without its `\n` (`None` at the end of the input), at most [`MAX_LINE`]
/// bytes long.
fn read_line(reader: &mut impl BufRead) -> std::result::Result<Option<Vec<u8>>, String> {
    let mut line = Vec::new();
    let read = reader
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(|e| e.to_string())?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > MAX_LINE {
        return Err(format!("longer than {} MiB", MAX_LINE >> 20));
    }
    Ok(Some(line))
}

fn parse_line<T>(mut bytes: Vec<u8>, parse: Parse<T>) -> std::result::Result<T, String> {
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    let line = String::from_utf8(bytes).map_err(|_| "not valid UTF-8".to_owned())?;
    let value: Value = serde_json::from_str(&line).map_err(|e| format!("not valid JSON ({e})"))?;
    parse(value)
}

/// A text line: a JSON string or an object with a string `"text"` field.
pub fn text(value: Value) -> std::result::Result<String, String> {
    match value {
        Value::String(s) => Ok(s),
        Value::Object(mut m) => match m.remove("text") {
            Some(Value::String(s)) => Ok(s),
            _ => Err("the object has no string field \"text\"".into()),
        },
        _ => Err("expected a JSON string or an object with a \"text\" field".into()),
    }
}

/// A pair line: an object with string fields `"query"` and `"passage"`.
pub fn pair(value: Value) -> std::result::Result<(String, String), String> {
    let Value::Object(mut m) = value else {
        return Err("expected an object with \"query\" and \"passage\" fields".into());
    };
    let mut field = |name: &str| match m.remove(name) {
        Some(Value::String(s)) => Ok(s),
        _ => Err(format!("the object has no string field \"{name}\"")),
    };
    Ok((field("query")?, field("passage")?))
}

/// stdout, or a file written under a temporary name and renamed into place on success, so a
/// failed run never leaves a partial output file behind.
pub struct Output {
    writer: BufWriter<Box<dyn Write>>,
    file: Option<(PathBuf, PathBuf)>,
}

impl Output {
    pub fn open(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Output {
                writer: BufWriter::new(Box::new(io::stdout().lock())),
                file: None,
            });
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(|e| Error::Io {
            path: tmp.clone(),
            source: e,
        })?;
        Ok(Output {
            writer: BufWriter::new(Box::new(file)),
            file: Some((tmp, path.to_owned())),
        })
    }

    pub fn line(&mut self, value: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.writer, value).map_err(|e| self.error(e.into()))?;
        self.writer.write_all(b"\n").map_err(|e| self.error(e))
    }

    /// Passes the lines written so far on (to the reader of stdout, or to the partial file).
    pub fn flush(&mut self) -> Result<()> {
        self.writer.flush().map_err(|e| self.error(e))
    }

    pub fn commit(mut self) -> Result<()> {
        self.flush()?;
        if let Some((tmp, path)) = self.file.take() {
            std::fs::rename(&tmp, &path).map_err(|e| Error::Io { path, source: e })?;
        }
        Ok(())
    }

    fn error(&self, source: io::Error) -> Error {
        let path = self
            .file
            .as_ref()
            .map_or_else(|| PathBuf::from("<stdout>"), |(_, p)| p.clone());
        Error::Io { path, source }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some((tmp, _)) = &self.file {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// A progress bar on stderr when it is a terminal and not `quiet`; hidden otherwise. Its
/// length is the line count of an `--input` file; reading stdin, it counts without a length.
pub fn progress(input: Option<&Path>, unit: &str, quiet: bool) -> ProgressBar {
    if quiet || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match input.and_then(count_lines) {
        Some(total) => {
            let template = format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}");
            ProgressBar::new(total).with_style(style(&template))
        }
        None => ProgressBar::no_length()
            .with_style(style(&format!("{{pos}} {unit}  {{per_sec}}  {{elapsed}}"))),
    }
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// The lines of a regular file (a last line without `\n` counts), or `None` if it cannot be
/// read or is not a regular file (a pipe would be emptied by counting).
fn count_lines(path: &Path) -> Option<u64> {
    let mut file = File::open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = vec![0u8; 1 << 16];
    let (mut lines, mut last) = (0u64, b'\n');
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            return Some(lines + u64::from(last != b'\n'));
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
        last = buf[n - 1];
    }
}
