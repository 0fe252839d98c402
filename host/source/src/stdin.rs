//! The stdin source: JSON lines from standard input, numbered like the file source.
//!
//! Reading stdin blocks, so a background thread reads it into a bounded channel and
//! `poll` waits on the channel, which lets it honour its timeout.
//!
//! Resuming means: the first N lines of this input are taken as processed already (N from
//! the data directory's last checkpoint). The input's first bytes must be those the
//! checkpoint recorded (as for a file); the reader checks them before it hands over a line,
//! and a different input stops the source with [`SourceError::Changed`].

use std::collections::BTreeSet;
use std::io::{BufReader, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use crate::file::{Lines, Prefix, READ_BUFFER, fingerprint};
use crate::{Identity, Message, Offsets, Source, SourceError};

/// Lines read ahead of the pipeline; the reader thread blocks when this many wait.
const CHANNEL_LINES: usize = 4096;

/// What the reader thread sends: a line and the bytes read up to its end, or the error
/// that stopped it. It ends the stream by hanging up.
type Line = Result<(Message, u64), SourceError>;

pub(crate) struct StdinSource {
    /// Standard input, until the reader thread takes it.
    input: Option<Box<dyn Read + Send>>,
    /// Lines before this one are skipped; known once `resume` has been called.
    skip_before: i64,
    /// What the first bytes must be, recorded by the last checkpoint.
    expect: Option<Identity>,
    /// The input's first bytes, as far as the reader has read them.
    prefix: Prefix,
    /// Bytes read up to the end of the last line delivered.
    delivered: u64,
    /// Started by the first poll, after `resume` said where to start.
    receiver: Option<Receiver<Line>>,
    /// A line taken off the channel to learn whether more were waiting.
    peeked: Option<Line>,
    caught_up: BTreeSet<i32>,
    ended: bool,
    /// Offset of the last line delivered, for the status API.
    last_offset: Option<i64>,
}

impl StdinSource {
    pub(crate) fn new() -> Self {
        Self::reading(std::io::stdin())
    }

    /// A source reading `input` instead of standard input.
    pub(crate) fn reading(input: impl Read + Send + 'static) -> Self {
        Self {
            input: Some(Box::new(input)),
            skip_before: 0,
            expect: None,
            prefix: Prefix::default(),
            delivered: 0,
            receiver: None,
            peeked: None,
            caught_up: BTreeSet::new(),
            ended: false,
            last_offset: None,
        }
    }

    fn start_reader(&mut self) -> Result<Receiver<Line>, SourceError> {
        let (sender, receiver) = mpsc::sync_channel(CHANNEL_LINES);
        let input = self
            .input
            .take()
            .unwrap_or_else(|| Box::new(std::io::empty()));
        let mut lines = Lines::new(BufReader::with_capacity(READ_BUFFER, input));
        lines.skip_before(self.skip_before);
        self.prefix = lines.prefix();
        let mut expect = self.expect.take();
        std::thread::Builder::new()
            .name("weft-stdin".to_owned())
            .spawn(move || {
                loop {
                    let read = match lines.next_message() {
                        Ok(next) => match verify(&mut expect, &lines, next.is_none()) {
                            Err(changed) => Err(changed),
                            Ok(()) => match next {
                                Some(message) => Ok((message, lines.consumed())),
                                None => break,
                            },
                        },
                        Err(source) => Err(SourceError::StdinRead {
                            line: lines.line(),
                            source,
                        }),
                    };
                    let failed = read.is_err();
                    // A send fails only once the source is dropped: nobody is listening.
                    if sender.send(read).is_err() || failed {
                        break;
                    }
                }
                tracing::debug!(lines = lines.line(), "Stdin reader stopped.");
            })
            .map_err(SourceError::StdinThread)?;
        Ok(receiver)
    }
}

/// Checks the input's first bytes against those the checkpoint recorded, once enough are
/// read (or the input `ended`). The recorded bytes all belong to lines before the resume
/// point, so this happens before any line is handed over.
fn verify<R: std::io::BufRead>(
    expect: &mut Option<Identity>,
    lines: &Lines<R>,
    ended: bool,
) -> Result<(), SourceError> {
    let Some(last) = expect.take() else {
        return Ok(());
    };
    let Identity::Stdin {
        prefix_len,
        prefix_sha256,
    } = &last
    else {
        return Err(last.changed("stdin"));
    };
    if lines.consumed() < *prefix_len && !ended {
        *expect = Some(last);
        return Ok(());
    }
    let (len, sha256) = fingerprint(&lines.prefix(), *prefix_len);
    if len == *prefix_len && sha256 == *prefix_sha256 {
        return Ok(());
    }
    Err(last.changed(Identity::Stdin {
        prefix_len: len,
        prefix_sha256: sha256,
    }))
}

impl Source for StdinSource {
    fn resume(&mut self, offsets: &Offsets, last: Option<&Identity>) -> Result<(), SourceError> {
        self.skip_before = offsets.get(&0).copied().unwrap_or(0);
        match last {
            None => {}
            Some(Identity::Stdin { .. }) => self.expect = last.cloned(),
            Some(other) => return Err(other.changed("stdin")),
        }
        if self.skip_before > 0 {
            tracing::warn!(
                lines = self.skip_before,
                "Resuming stdin: its first {} lines are taken as processed already (this data directory's last checkpoint); a different input is refused once its first bytes are read.",
                self.skip_before
            );
        }
        Ok(())
    }

    fn identity(&self) -> Identity {
        let (prefix_len, prefix_sha256) = fingerprint(&self.prefix, self.delivered);
        Identity::Stdin {
            prefix_len,
            prefix_sha256,
        }
    }

    fn poll(
        &mut self,
        out: &mut Vec<Message>,
        max: usize,
        timeout: Duration,
    ) -> Result<bool, SourceError> {
        if self.ended {
            return Ok(false);
        }
        if self.receiver.is_none() {
            self.receiver = Some(self.start_reader()?);
        }
        let Some(receiver) = &self.receiver else {
            return Ok(true);
        };

        if max == 0 {
            return Ok(true);
        }
        let start = out.len();
        // A line left over from the previous call goes first.
        match self.peeked.take() {
            Some(Ok((message, consumed))) => {
                out.push(message);
                self.delivered = consumed;
            }
            Some(Err(error)) => return Err(error),
            None => {}
        }
        let mut hung_up = false;
        loop {
            // Wait for the first line only; take the rest while they are already there.
            let received = if out.len() == start {
                receiver.recv_timeout(timeout).map_err(|e| match e {
                    RecvTimeoutError::Timeout => false,
                    RecvTimeoutError::Disconnected => true,
                })
            } else {
                receiver.try_recv().map_err(|e| match e {
                    TryRecvError::Empty => false,
                    TryRecvError::Disconnected => true,
                })
            };
            match received {
                // One line past `max` is kept back: it shows that more are waiting.
                Ok(read) if out.len() - start >= max => {
                    self.peeked = Some(read);
                    break;
                }
                Ok(Ok((message, consumed))) => {
                    out.push(message);
                    self.delivered = consumed;
                }
                Ok(Err(error)) if out.len() == start => return Err(error),
                Ok(Err(error)) => {
                    self.peeked = Some(Err(error));
                    break;
                }
                Err(disconnected) => {
                    hung_up = disconnected;
                    break;
                }
            }
        }

        if let Some(last) = out[start..].last() {
            self.last_offset = Some(last.offset);
        }
        if self.peeked.is_some() {
            self.caught_up.remove(&0);
        } else {
            self.caught_up.insert(0);
        }
        if hung_up {
            tracing::debug!(
                last_offset = self.last_offset,
                "Stdin source reached the end of its input."
            );
            self.ended = true;
            self.receiver = None;
            return Ok(out.len() > start);
        }
        Ok(true)
    }

    fn caught_up(&self) -> &BTreeSet<i32> {
        &self.caught_up
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "stdin",
            "last_offset": self.last_offset,
            "ended": self.ended,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::time::Instant;

    /// Input that yields its lines and then blocks, like a terminal nobody types into.
    struct Stalling(Cursor<Vec<u8>>);

    impl Read for Stalling {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            match self.0.read(buf)? {
                0 => loop {
                    std::thread::park();
                },
                n => Ok(n),
            }
        }
    }

    #[test]
    fn reads_lines_until_the_end() -> Result<(), SourceError> {
        let mut source = StdinSource::reading(Cursor::new(b"{}\n\n{\"b\":1}\r\n[]".to_vec()));
        source.resume(&Offsets::from([(0, 1)]), None)?;
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while source.poll(&mut out, 1, Duration::from_millis(100))? {
            assert!(Instant::now() < deadline, "the stdin source never ended");
        }
        let got: Vec<(i64, &[u8])> = out.iter().map(|m| (m.offset, &m.payload[..])).collect();
        assert_eq!(got, vec![(2, &b"{\"b\":1}"[..]), (3, &b"[]"[..])]);
        assert!(source.caught_up().contains(&0));
        assert!(!source.poll(&mut out, 1, Duration::ZERO)?);
        Ok(())
    }

    #[test]
    fn waits_at_most_the_timeout_and_reports_caught_up() -> Result<(), SourceError> {
        let input = Stalling(Cursor::new(b"1\n2\n3\n".to_vec()));
        let mut source = StdinSource::reading(input);
        source.resume(&Offsets::new(), None)?;
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while out.len() < 3 {
            assert!(source.poll(&mut out, 2, Duration::from_millis(100))?);
            assert!(Instant::now() < deadline, "lines never arrived");
        }
        assert_eq!(out.iter().map(|m| m.offset).collect::<Vec<_>>(), [0, 1, 2]);
        // Nothing is waiting now: a poll waits out its timeout and the partition is caught up.
        let started = Instant::now();
        assert!(source.poll(&mut out, 2, Duration::from_millis(50))?);
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(40),
            "returned after {waited:?}"
        );
        assert!(waited < Duration::from_secs(2), "blocked for {waited:?}");
        assert_eq!(out.len(), 3);
        assert!(source.caught_up().contains(&0));
        assert_eq!(source.describe()["kind"], "stdin");
        Ok(())
    }

    /// Reads `input` from line `from` on, after a checkpoint that recorded `last`.
    fn read(
        input: &[u8],
        from: i64,
        last: Option<&Identity>,
    ) -> Result<(Vec<i64>, Identity), SourceError> {
        let mut source = StdinSource::reading(Cursor::new(input.to_vec()));
        source.resume(&Offsets::from([(0, from)]), last)?;
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while source.poll(&mut out, 3, Duration::from_millis(100))? {
            assert!(Instant::now() < deadline, "the stdin source never ended");
        }
        Ok((out.iter().map(|m| m.offset).collect(), source.identity()))
    }

    #[test]
    fn resumes_only_on_the_same_input() -> Result<(), SourceError> {
        let first: String = (0..20).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let (offsets, recorded) = read(first.as_bytes(), 0, None)?;
        assert_eq!(offsets, (0..20).collect::<Vec<_>>());
        // The same input, grown: the first 20 lines are skipped, the rest read.
        let grown = format!("{first}{{\"n\":20}}\n");
        assert_eq!(read(grown.as_bytes(), 20, Some(&recorded))?.0, vec![20]);
        // Another input: nothing of it is delivered, and the error says why.
        let other: String = (0..20).map(|i| format!("{{\"m\":{i}}}\n")).collect();
        let error = read(other.as_bytes(), 20, Some(&recorded)).err();
        assert!(
            matches!(error, Some(SourceError::Changed { .. })),
            "{error:?}"
        );
        // A shorter one, too.
        let error = read(b"{\"n\":0}\n", 20, Some(&recorded)).err();
        assert!(
            matches!(error, Some(SourceError::Changed { .. })),
            "{error:?}"
        );
        Ok(())
    }

    #[test]
    fn the_identity_covers_only_delivered_lines() -> Result<(), SourceError> {
        let long: String = (0..2000).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let (_, all) = read(long.as_bytes(), 0, None)?;
        let Identity::Stdin { prefix_len, .. } = all else {
            panic!("{all:?}");
        };
        assert_eq!(prefix_len, crate::file::PREFIX_LEN as u64);
        Ok(())
    }
}
