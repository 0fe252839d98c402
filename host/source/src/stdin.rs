//! The stdin source: JSON lines from standard input, numbered like the file source.
//!
//! Reading stdin blocks, so a background thread reads it into a bounded channel and
//! `poll` waits on the channel, which lets it honour its timeout.

use std::collections::BTreeSet;
use std::io::{BufReader, Stdin};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::Duration;

use crate::file::{Lines, READ_BUFFER};
use crate::{Message, Offsets, Source, SourceError};

/// Lines read ahead of the pipeline; the reader thread blocks when this many wait.
const CHANNEL_LINES: usize = 4096;

/// What the reader thread sends: a line, or the error that stopped it. It ends the
/// stream by hanging up.
type Read = Result<Message, SourceError>;

pub(crate) struct StdinSource {
    /// Lines before this one are skipped; known once `resume` has been called.
    skip_before: i64,
    /// Started by the first poll, after `resume` said where to start.
    receiver: Option<Receiver<Read>>,
    /// A line taken off the channel to learn whether more were waiting.
    peeked: Option<Read>,
    caught_up: BTreeSet<i32>,
    ended: bool,
    /// Offset of the last line delivered, for the status API.
    last_offset: Option<i64>,
}

impl StdinSource {
    pub(crate) fn new() -> Self {
        Self {
            skip_before: 0,
            receiver: None,
            peeked: None,
            caught_up: BTreeSet::new(),
            ended: false,
            last_offset: None,
        }
    }

    fn start_reader(&self) -> Result<Receiver<Read>, SourceError> {
        let (sender, receiver) = mpsc::sync_channel(CHANNEL_LINES);
        let mut lines: Lines<BufReader<Stdin>> =
            Lines::new(BufReader::with_capacity(READ_BUFFER, std::io::stdin()));
        lines.skip_before(self.skip_before);
        std::thread::Builder::new()
            .name("weft-stdin".to_owned())
            .spawn(move || {
                loop {
                    let read = match lines.next_message() {
                        Ok(Some(message)) => Ok(message),
                        Ok(None) => break,
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

impl Source for StdinSource {
    fn resume(&mut self, offsets: &Offsets) -> Result<(), SourceError> {
        self.skip_before = offsets.get(&0).copied().unwrap_or(0);
        Ok(())
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
            Some(Ok(message)) => out.push(message),
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
                Ok(Ok(message)) => out.push(message),
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

    fn commit(&mut self, _offsets: &Offsets) -> Result<(), SourceError> {
        Ok(())
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "stdin",
            "last_offset": self.last_offset,
            "ended": self.ended,
        })
    }
}
