//! JSONL in and out for the command line: input lines with their numbers in every error,
//! output written whole or not at all, and the progress bar.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::Value;

use bge::{Error, Result};

/// Reads every line of `--input` (or stdin) through `parse`, which gets the line's JSON value;
/// any failure names the line.
pub fn read<T>(
    input: Option<&Path>,
    parse: impl Fn(Value) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    match input {
        Some(path) => {
            let file = File::open(path).map_err(|e| Error::Io {
                path: path.to_owned(),
                source: e,
            })?;
            read_lines(BufReader::new(file), parse)
        }
        None => read_lines(io::stdin().lock(), parse),
    }
}

fn read_lines<T>(
    reader: impl BufRead,
    parse: impl Fn(Value) -> std::result::Result<T, String>,
) -> Result<Vec<T>> {
    let mut items = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let bad = |message: String| Error::InputLine {
            line: i + 1,
            message,
        };
        let mut bytes = line.map_err(|e| bad(e.to_string()))?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let line = String::from_utf8(bytes).map_err(|_| bad("not valid UTF-8".into()))?;
        let value: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        items.push(parse(value).map_err(bad)?);
    }
    Ok(items)
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

    pub fn commit(mut self) -> Result<()> {
        self.writer.flush().map_err(|e| self.error(e))?;
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

/// A progress bar on stderr when it is a terminal and not `quiet`; hidden otherwise.
pub fn progress(total: usize, unit: &str, quiet: bool) -> ProgressBar {
    if quiet || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let template = format!("{{bar:40}} {{pos}}/{{len}} {unit}  {{per_sec}}  eta {{eta}}");
    ProgressBar::new(total as u64)
        .with_style(ProgressStyle::with_template(&template).expect("valid progress template"))
}
