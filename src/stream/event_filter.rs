//! An event-by-event filter over a stream already in the client's protocol, for streams that
//! carry events a client must not see: what is kept goes on as the very same bytes.

use crate::error::GatewayError;
use crate::stream::{NativeStreamFilter, MAX_EVENT_BYTES};
use bytes::Bytes;
use std::borrow::Cow;

/// Decides the fate of each complete event (its lines and the blank line ending it).
pub trait EventJudge: Send + Sync {
    fn judge(&mut self, event: &[u8]) -> Judged;
    /// Whether the stream's terminal event went by.
    fn saw_terminal(&self) -> bool;
}

/// Passes a stream already in the client's protocol on event by event: each complete event is
/// kept byte for byte, dropped, or replaced, as its [`EventJudge`] says.
///
/// Holds only the event being received (bounded by [`MAX_EVENT_BYTES`]); a read that completes
/// events all kept goes on as the very same bytes.
#[derive(Debug, Default)]
pub struct SseEventFilter<J> {
    /// The bytes of the unfinished event, from its first byte.
    pending: Vec<u8>,
    /// Where the current line starts in `pending`.
    line_start: usize,
    /// The last byte seen was a CR ending a line: an LF first in the next read is part of it.
    after_cr: bool,
    /// The event that CR ended (if it ended one) was kept: its LF goes on too.
    after_cr_kept: Option<bool>,
    judge: J,
    failed: bool,
}

impl<J: EventJudge + Default> SseEventFilter<J> {
    pub fn new() -> Self {
        Self::default()
    }
}

impl<J: EventJudge> SseEventFilter<J> {
    pub fn with_judge(judge: J) -> Self {
        SseEventFilter {
            pending: Vec::new(),
            line_start: 0,
            after_cr: false,
            after_cr_kept: None,
            judge,
            failed: false,
        }
    }

    /// Upstream bytes -> the bytes the client gets for them (possibly none, until an event
    /// completes). `Err` when an event outgrows [`MAX_EVENT_BYTES`]; nothing passes after that.
    pub fn filter(&mut self, input: &Bytes) -> Result<Bytes, GatewayError> {
        if self.failed {
            return Ok(Bytes::new());
        }
        let mut data: &[u8] = input;
        let mut out: Vec<u8> = Vec::new();
        // Whether `input` can go on as it is: nothing held before it, nothing changed in it.
        let mut whole = self.pending.is_empty();
        if std::mem::take(&mut self.after_cr) {
            if let Some(rest) = data.strip_prefix(b"\n") {
                data = rest;
                match self.after_cr_kept.take() {
                    // The CR ended a line inside the event: the LF belongs to it.
                    None => {
                        self.pending.push(b'\n');
                        self.line_start = self.pending.len();
                    }
                    Some(true) => out.push(b'\n'),
                    Some(false) => {}
                }
                whole = false;
            }
        }
        self.after_cr_kept = None;
        self.pending.extend_from_slice(data);

        // `event_start..`: the event being read; `run_start..event_start`: kept bytes not yet
        // copied to `out`. Bytes before `line_start` hold no unread line end.
        let (mut event_start, mut run_start) = (0, 0);
        while let Some(offset) = memchr::memchr2(b'\n', b'\r', &self.pending[self.line_start..]) {
            let pos = self.line_start + offset;
            let mut end = pos + 1;
            let cr = self.pending[pos] == b'\r';
            if cr {
                match self.pending.get(end) {
                    Some(b'\n') => end += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let blank = pos == self.line_start;
            self.line_start = end;
            if !blank {
                continue;
            }
            // A blank line: the event is complete.
            let event = &self.pending[event_start..end];
            let judged = self.judge.judge(event);
            let kept = matches!(judged, Judged::Keep);
            if !kept {
                whole = false;
                out.extend_from_slice(&self.pending[run_start..event_start]);
                if let Judged::Replace(bytes) = judged {
                    out.extend_from_slice(&bytes);
                }
                run_start = end;
            }
            if self.after_cr {
                self.after_cr_kept = Some(kept);
            }
            event_start = end;
        }
        // What is left is the unfinished event: bounded.
        if self.pending.len() - event_start > MAX_EVENT_BYTES {
            self.failed = true;
            self.pending = Vec::new();
            return Err(GatewayError::bad_upstream(format!(
                "stream event larger than {MAX_EVENT_BYTES} bytes"
            )));
        }
        let result = if whole && event_start == self.pending.len() {
            input.clone()
        } else {
            out.extend_from_slice(&self.pending[run_start..event_start]);
            Bytes::from(out)
        };
        self.pending.drain(..event_start);
        self.line_start -= event_start;
        Ok(result)
    }

    /// The unfinished event held so far (tests check its bound).
    #[cfg(test)]
    pub fn pending(&self) -> &Vec<u8> {
        &self.pending
    }

    /// Whether the stream's terminal event went by.
    pub fn ended_properly(&self) -> bool {
        self.judge.saw_terminal()
    }

    /// Whether [`Self::filter`] failed (and the client got its error event).
    pub fn has_failed(&self) -> bool {
        self.failed
    }
}

/// What [`SseEventFilter`] does with one event.
pub enum Judged {
    Keep,
    Drop,
    Replace(Vec<u8>),
}

/// The `data` of one complete SSE event (its lines and the blank line ending it): the `data:`
/// fields joined with `\n`, or `None` if it has none.
pub fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut data: Option<Cow<'_, [u8]>> = None;
    let lines = event
        .split(|&b| b == b'\n' || b == b'\r')
        .filter(|l| !l.is_empty());
    for line in lines {
        let value = if line == b"data" {
            &b""[..]
        } else if let Some(v) = line.strip_prefix(b"data:") {
            v.strip_prefix(b" ").unwrap_or(v)
        } else {
            continue;
        };
        data = Some(match data {
            None => Cow::Borrowed(value),
            Some(joined) => {
                let mut joined = joined.into_owned();
                joined.push(b'\n');
                joined.extend_from_slice(value);
                Cow::Owned(joined)
            }
        });
    }
    data
}

impl<J: EventJudge> NativeStreamFilter for SseEventFilter<J> {
    fn filter(&mut self, input: &Bytes) -> Result<Bytes, GatewayError> {
        SseEventFilter::filter(self, input)
    }

    fn ended_properly(&self) -> bool {
        SseEventFilter::ended_properly(self)
    }

    fn has_failed(&self) -> bool {
        SseEventFilter::has_failed(self)
    }
}
