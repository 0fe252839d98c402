//! The JSON-lines file source, and the line splitting it shares with the stdin source.
//!
//! Everything is partition 0 and the offset of a message is its 0-based line number,
//! so a checkpoint names a line to restart from. Blank lines count but are not delivered;
//! a UTF-8 byte order mark at the very start is dropped.
//!
//! A line number only means something in the input it was counted in: the first bytes read
//! (up to [`PREFIX_LEN`]) identify the input, and a resume on an input whose first bytes
//! differ is refused (see [`crate::Identity`]).

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::{Identity, Message, Offsets, Source, SourceError};

/// Read buffer size: large, so that reading a big file takes few system calls.
pub(crate) const READ_BUFFER: usize = 1 << 20;

/// How many of an input's first bytes identify it.
pub(crate) const PREFIX_LEN: usize = 4096;

const BOM: &[u8] = b"\xef\xbb\xbf";

/// The first bytes an input gave, shared with the thread that reads it (stdin).
pub(crate) type Prefix = Arc<Mutex<Vec<u8>>>;

/// Length and hex SHA-256 of the first `len` bytes of `prefix`.
pub(crate) fn fingerprint(prefix: &Prefix, len: u64) -> (u64, String) {
    let bytes = prefix.lock().unwrap_or_else(PoisonError::into_inner);
    let bytes = &bytes[..bytes.len().min(len as usize)];
    (bytes.len() as u64, hex::encode(Sha256::digest(bytes)))
}

/// Splits a byte stream into numbered lines, skipping blank ones and those before a resume point.
pub(crate) struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    /// Number of the next line to read.
    line: i64,
    /// Lines before this one are skipped (already processed before a restart).
    skip_before: i64,
    /// Bytes read so far.
    consumed: u64,
    /// The first [`PREFIX_LEN`] bytes read.
    prefix: Prefix,
}

impl<R: BufRead> Lines<R> {
    pub(crate) fn new(reader: R) -> Self {
        Self {
            reader,
            buf: Vec::new(),
            line: 0,
            skip_before: 0,
            consumed: 0,
            prefix: Prefix::default(),
        }
    }

    pub(crate) fn skip_before(&mut self, line: i64) {
        self.skip_before = line;
    }

    /// Number of the next line to be read, for error messages.
    pub(crate) fn line(&self) -> i64 {
        self.line
    }

    /// Bytes read so far: up to the end of the last line read.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The input's first bytes, as far as they were read.
    pub(crate) fn prefix(&self) -> Prefix {
        self.prefix.clone()
    }

    /// The next line worth delivering, or `None` at the end of the stream.
    pub(crate) fn next_message(&mut self) -> io::Result<Option<Message>> {
        loop {
            self.buf.clear();
            let n = self.reader.read_until(b'\n', &mut self.buf)?;
            if n == 0 {
                return Ok(None);
            }
            if self.consumed < PREFIX_LEN as u64 {
                let mut prefix = self.prefix.lock().unwrap_or_else(PoisonError::into_inner);
                let room = PREFIX_LEN - prefix.len();
                prefix.extend_from_slice(&self.buf[..n.min(room)]);
            }
            self.consumed += n as u64;
            let offset = self.line;
            self.line += 1;
            let mut text = trim_newline(&self.buf);
            if offset == 0 {
                text = text.strip_prefix(BOM).unwrap_or(text);
            }
            if offset < self.skip_before || text.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(Message {
                payload: text.to_vec(),
                partition: 0,
                offset,
                key: None,
            }));
        }
    }
}

/// The line without its `\n` or `\r\n` ending.
fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads a JSON-lines file once, from the resumed line to its end.
pub(crate) struct FileSource {
    path: PathBuf,
    /// The path made absolute, which the identity records.
    absolute: PathBuf,
    lines: Lines<BufReader<File>>,
    caught_up: BTreeSet<i32>,
    ended: bool,
    /// An error met after part of a batch was read, returned by the next poll.
    pending_error: Option<SourceError>,
}

impl FileSource {
    pub(crate) fn open(path: &Path) -> Result<Self, SourceError> {
        let opened = |source| SourceError::FileOpen {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(opened)?;
        Ok(Self {
            path: path.to_owned(),
            absolute: std::fs::canonicalize(path).map_err(opened)?,
            lines: Lines::new(BufReader::with_capacity(READ_BUFFER, file)),
            caught_up: BTreeSet::new(),
            ended: false,
            pending_error: None,
        })
    }

    /// The identity of this file if its first `len` bytes are what was read of it.
    fn identity_over(&self, len: u64) -> Result<Identity, SourceError> {
        let mut head = Vec::new();
        File::open(&self.path)
            .and_then(|f| f.take(len).read_to_end(&mut head))
            .map_err(|source| SourceError::FileOpen {
                path: self.path.clone(),
                source,
            })?;
        Ok(Identity::File {
            path: self.absolute.display().to_string(),
            prefix_len: head.len() as u64,
            prefix_sha256: hex::encode(Sha256::digest(&head)),
        })
    }
}

impl Source for FileSource {
    fn resume(&mut self, offsets: &Offsets, last: Option<&Identity>) -> Result<(), SourceError> {
        if let Some(last) = last {
            let Identity::File {
                path,
                prefix_len,
                prefix_sha256,
            } = last
            else {
                return Err(last.changed(self.identity_over(PREFIX_LEN as u64)?));
            };
            let now = self.identity_over(*prefix_len)?;
            let Identity::File {
                prefix_sha256: now_sha256,
                ..
            } = &now
            else {
                unreachable!("a file's identity is a file's");
            };
            if now_sha256 != prefix_sha256 {
                return Err(last.changed(now));
            }
            if *path != self.absolute.display().to_string() {
                tracing::warn!(was = %path, now = %self.absolute.display(), "The file source has moved since the last checkpoint; its first bytes are the same, so it resumes where it stopped.");
            }
        }
        self.lines
            .skip_before(offsets.get(&0).copied().unwrap_or(0));
        Ok(())
    }

    fn identity(&self) -> Identity {
        let (prefix_len, prefix_sha256) = fingerprint(&self.lines.prefix(), self.lines.consumed());
        Identity::File {
            path: self.absolute.display().to_string(),
            prefix_len,
            prefix_sha256,
        }
    }

    fn poll(
        &mut self,
        out: &mut Vec<Message>,
        max: usize,
        _timeout: Duration,
    ) -> Result<bool, SourceError> {
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        if self.ended {
            return Ok(false);
        }
        // A file is always ready, so the timeout never comes into play.
        let start = out.len();
        while out.len() - start < max {
            match self.lines.next_message() {
                Ok(Some(message)) => out.push(message),
                Ok(None) => {
                    tracing::debug!(path = %self.path.display(), lines = self.lines.line(), "File source reached the end of its file.");
                    self.ended = true;
                    self.caught_up.insert(0);
                    return Ok(out.len() > start);
                }
                Err(source) => {
                    let error = SourceError::FileRead {
                        path: self.path.clone(),
                        line: self.lines.line(),
                        source,
                    };
                    if out.len() == start {
                        return Err(error);
                    }
                    self.pending_error = Some(error);
                    break;
                }
            }
        }
        Ok(true)
    }

    fn caught_up(&self) -> &BTreeSet<i32> {
        &self.caught_up
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "file",
            "path": self.path.display().to_string(),
            "line": self.lines.line(),
            "ended": self.ended,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A file in the temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn with(contents: &[u8]) -> Self {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let name = format!(
                "weft-source-{}-{}.jsonl",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = std::env::temp_dir().join(name);
            std::fs::write(&path, contents).expect("temp dir is writable");
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// Polls until the end, in batches of `max`, returning (offset, payload) pairs.
    fn read_all(source: &mut dyn Source, max: usize) -> Result<Vec<(i64, Vec<u8>)>, SourceError> {
        let mut out = Vec::new();
        while source.poll(&mut out, max, Duration::from_millis(10))? {
            assert!(out.len() <= 1_000, "the file source never ended");
        }
        Ok(out.into_iter().map(|m| (m.offset, m.payload)).collect())
    }

    fn lines(pairs: &[(i64, &str)]) -> Vec<(i64, Vec<u8>)> {
        pairs
            .iter()
            .map(|&(o, s)| (o, s.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn numbers_lines_and_skips_blank_ones() -> Result<(), SourceError> {
        let file = TempFile::with(b"{\"a\":0}\n\n{\"a\":2}\r\n   \n{\"a\":4}\r\n\r\n{\"a\":6}");
        let mut source = FileSource::open(&file.0)?;
        source.resume(&Offsets::new(), None)?;
        assert!(source.caught_up().is_empty());
        let got = read_all(&mut source, 2)?;
        assert_eq!(
            got,
            lines(&[
                (0, r#"{"a":0}"#),
                (2, r#"{"a":2}"#),
                (4, r#"{"a":4}"#),
                (6, r#"{"a":6}"#)
            ])
        );
        Ok(())
    }

    #[test]
    fn resume_starts_at_the_offset() -> Result<(), SourceError> {
        let text: String = (0..10).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let file = TempFile::with(text.as_bytes());
        for from in [0, 1, 5, 9, 10, 20] {
            let mut source = FileSource::open(&file.0)?;
            source.resume(&Offsets::from([(0, from)]), None)?;
            let got = read_all(&mut source, 3)?;
            let expected: Vec<(i64, Vec<u8>)> = (from..10)
                .map(|i| (i, format!("{{\"n\":{i}}}").into_bytes()))
                .collect();
            assert_eq!(got, expected, "resumed from {from}");
        }
        Ok(())
    }

    #[test]
    fn end_of_file_is_caught_up_and_final() -> Result<(), SourceError> {
        let file = TempFile::with(b"{\"x\":1}\n{\"x\":2}\n");
        let mut source = FileSource::open(&file.0)?;
        source.resume(&Offsets::new(), None)?;
        let mut out = Vec::new();
        // The batch that reaches the end is still a normal one...
        assert!(source.poll(&mut out, 10, Duration::ZERO)?);
        assert_eq!(out.len(), 2);
        assert_eq!(source.caught_up(), &BTreeSet::from([0]));
        // ...and every call after it says the source has ended.
        assert!(!source.poll(&mut out, 10, Duration::ZERO)?);
        assert!(!source.poll(&mut out, 10, Duration::ZERO)?);
        assert_eq!(out.len(), 2);
        assert_eq!(source.caught_up(), &BTreeSet::from([0]));
        assert_eq!(source.describe()["kind"], "file");
        Ok(())
    }

    #[test]
    fn empty_file_ends_at_once() -> Result<(), SourceError> {
        let file = TempFile::with(b"");
        let mut source = FileSource::open(&file.0)?;
        source.resume(&Offsets::new(), None)?;
        let mut out = Vec::new();
        assert!(!source.poll(&mut out, 10, Duration::ZERO)?);
        assert!(out.is_empty());
        assert!(source.caught_up().contains(&0));
        Ok(())
    }

    #[test]
    fn invalid_utf8_is_passed_through() -> Result<(), SourceError> {
        let file = TempFile::with(b"\xff\xfe{}\n");
        let mut source = FileSource::open(&file.0)?;
        source.resume(&Offsets::new(), None)?;
        assert_eq!(
            read_all(&mut source, 10)?,
            vec![(0, b"\xff\xfe{}".to_vec())]
        );
        Ok(())
    }

    #[test]
    fn missing_file_names_the_path() {
        let path = std::env::temp_dir().join("weft-source-no-such-file.jsonl");
        let spec = crate::SourceSpec::File(path.clone());
        let error = crate::open(&spec).err().map(|e| e.to_string());
        let text = error.unwrap_or_default();
        assert!(
            text.contains(&path.display().to_string()),
            "error {text:?} does not name the path"
        );
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_dropped() -> Result<(), SourceError> {
        let file = TempFile::with(b"\xef\xbb\xbf{\"a\":0}\n\xef\xbb\xbf{\"a\":1}\n");
        let mut source = FileSource::open(&file.0)?;
        source.resume(&Offsets::new(), None)?;
        // Only the first line's mark is an encoding mark; a later one is data.
        assert_eq!(
            read_all(&mut source, 10)?,
            vec![
                (0, b"{\"a\":0}".to_vec()),
                (1, b"\xef\xbb\xbf{\"a\":1}".to_vec())
            ]
        );
        Ok(())
    }

    #[test]
    fn resumes_only_on_the_same_file() -> Result<(), SourceError> {
        let text: String = (0..63).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let a = TempFile::with(text.as_bytes());
        let mut source = FileSource::open(&a.0)?;
        source.resume(&Offsets::new(), None)?;
        read_all(&mut source, 100)?;
        let recorded = source.identity();
        let at = Offsets::from([(0, 63)]);

        // The same file, appended to: it resumes after line 63.
        let mut longer = text.clone();
        longer.push_str("{\"n\":63}\n");
        std::fs::write(&a.0, &longer).expect("rewrite");
        let mut again = FileSource::open(&a.0)?;
        again.resume(&at, Some(&recorded))?;
        assert_eq!(
            read_all(&mut again, 100)?,
            vec![(63, b"{\"n\":63}".to_vec())]
        );

        // Another file at the same path: refused, saying what to do.
        let other: String = (0..100).map(|i| format!("{{\"m\":{i}}}\n")).collect();
        std::fs::write(&a.0, other).expect("rewrite");
        let mut b = FileSource::open(&a.0)?;
        let error = b.resume(&at, Some(&recorded)).err().map(|e| e.to_string());
        let text = error.unwrap_or_default();
        assert!(
            text.contains("--reset-source") && text.contains("--data-dir"),
            "{text}"
        );

        // Another kind of source: refused too.
        let mut c = FileSource::open(&a.0)?;
        assert!(matches!(
            c.resume(&at, Some(&Identity::Demo)),
            Err(SourceError::Changed { .. })
        ));
        Ok(())
    }
}
