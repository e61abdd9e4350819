//! The guard's protocol (one instruction per line on its stdin) and its loop.
//!
//! | line | meaning |
//! |---|---|
//! | `arm <ms>` | PostgreSQL may accept writes for at most `<ms>` more milliseconds: deadline = now + ms on the guard's monotonic clock, replacing any earlier one |
//! | `disarm` | nothing to enforce (the node is not a writable primary) |
//! | `exit` | leave, stopping nothing |
//!
//! Each instruction ends with a newline. When armed, a deadline that passes without a new
//! `arm`, or the end of stdin (or a read error: the agent died), fences: PostgreSQL is
//! stopped at once and the guard goes on disarmed (until stdin ends, or for good when it
//! already has). A passed deadline is enforced before any later line is read, so an `arm`
//! that arrives late does not cancel a fence that is due. Malformed lines are ignored
//! (and counted): the deadline in force stays, so garbage never postpones a fence.
//!
//! With a [`Watchdog`] ([`GuardOptions::watchdog`]): each `arm` is a keepalive when the
//! watchdog can honour its deadline; `disarm`, `exit`, the end of stdin while disarmed and
//! a fence that worked stand it down; after a fence that failed it is left running
//! without keepalives, so the machine resets.
//!
//! The deadline starts when the guard reads the line, a little after the agent wrote it:
//! the agent sends the lease time it has left minus a margin, counted from before its
//! renewal request went out.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::time::Instant;

use super::fence::{Fence, FenceError, FenceReport};
use super::watchdog::{Watchdog, WatchdogUse};

/// The longest `arm` accepted (a day); a longer one is a malformed line.
pub const MAX_ARM: Duration = Duration::from_secs(24 * 3600);

/// The longest line accepted, in bytes; longer ones are skipped up to their newline.
const MAX_LINE: usize = 128;

/// One line of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instruction {
    /// `arm <ms>`: writes may go on for at most this long from now.
    Arm(Duration),
    /// `disarm`: nothing to enforce.
    Disarm,
    /// `exit`: leave without stopping anything.
    Exit,
}

/// A line that is not an [`Instruction`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a guard instruction ({reason}): {line:?}")]
pub struct ParseError {
    /// The line (without its newline).
    pub line: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Instruction {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Instruction, ParseError> {
        let err = |reason| ParseError { line: line.to_string(), reason };
        let mut words = line.split_ascii_whitespace();
        let instruction = match words.next() {
            Some("arm") => {
                let ms = words.next().ok_or_else(|| err("arm needs milliseconds"))?;
                if !ms.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(err("milliseconds must be digits"));
                }
                let ms: u64 = ms.parse().map_err(|_| err("milliseconds out of range"))?;
                let d = Duration::from_millis(ms);
                if d > MAX_ARM {
                    return Err(err("longer than a day"));
                }
                Instruction::Arm(d)
            }
            Some("disarm") => Instruction::Disarm,
            Some("exit") => Instruction::Exit,
            Some(_) => return Err(err("unknown instruction")),
            None => return Err(err("empty line")),
        };
        if words.next().is_some() {
            return Err(err("trailing words"));
        }
        Ok(instruction)
    }
}

impl fmt::Display for Instruction {
    /// The line as the guard reads it (without the newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Instruction::Arm(d) => write!(f, "arm {}", d.as_millis()),
            Instruction::Disarm => f.write_str("disarm"),
            Instruction::Exit => f.write_str("exit"),
        }
    }
}

/// Settings of [`run_guard`].
#[derive(Debug)]
pub struct GuardOptions {
    /// A hardware watchdog kept alive on each `arm` it can honour (see [`Watchdog`]).
    pub watchdog: Option<Watchdog>,
    /// The longest one fence may take before the guard records it as failed and goes on
    /// (default 10 s; [`StopPostmaster`](super::StopPostmaster) bounds itself well below).
    pub fence_timeout: Duration,
}

impl Default for GuardOptions {
    fn default() -> GuardOptions {
        GuardOptions { watchdog: None, fence_timeout: Duration::from_secs(10) }
    }
}

/// Why the guard fenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceCause {
    /// The deadline of the last `arm` passed.
    DeadlinePassed,
    /// stdin ended while armed.
    InputClosed,
    /// Reading stdin failed while armed.
    InputError(String),
}

/// One fence the guard ran.
#[derive(Debug)]
pub struct Fenced {
    /// Why.
    pub cause: FenceCause,
    /// How long after the deadline it started (zero when stdin ended first).
    pub late_by: Duration,
    /// What the fence did.
    pub result: Result<FenceReport, FenceError>,
}

/// How [`run_guard`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardEnd {
    /// An `exit` line.
    Exit,
    /// stdin ended.
    Eof,
    /// Reading stdin failed.
    InputError(String),
}

/// What [`run_guard`] did.
#[derive(Debug)]
pub struct GuardOutcome {
    /// How it ended.
    pub end: GuardEnd,
    /// Every fence it ran, in order.
    pub fences: Vec<Fenced>,
    /// Lines that were not instructions (ignored).
    pub ignored_lines: u64,
    /// Why the watchdog was not relied upon at the last `arm` (or could not be driven), if
    /// it was not.
    pub watchdog_note: Option<String>,
}

/// What the loop waits for next.
enum Event {
    Line(String),
    TooLong,
    Eof,
    Error(std::io::Error),
    Deadline,
}

/// Reads the next line into `buf`, at most [`MAX_LINE`] bytes at a time. Cancel-safe:
/// a partial line stays in `buf` for the next call.
async fn next_line<R: AsyncBufRead + Unpin>(input: &mut R, buf: &mut Vec<u8>) -> Event {
    let limit = (MAX_LINE + 1).saturating_sub(buf.len()).max(1) as u64;
    match (&mut *input).take(limit).read_until(b'\n', buf).await {
        Err(e) => Event::Error(e),
        Ok(_) if buf.last() == Some(&b'\n') => {
            buf.pop();
            let line = String::from_utf8_lossy(buf).trim_end_matches('\r').to_string();
            buf.clear();
            Event::Line(line)
        }
        Ok(_) if buf.len() > MAX_LINE => {
            buf.clear();
            Event::TooLong
        }
        // No newline and under the limit: stdin ended (a partial last line is dropped).
        Ok(_) => Event::Eof,
    }
}

/// Runs the guard on `input` (the agent's pipe) until `exit` or the end of the input,
/// fencing with `fence` as the protocol says (see the [module](self) documentation).
///
/// Every wait is bounded: by the armed deadline, by `options.fence_timeout` for a fence,
/// and otherwise by the input itself (a disarmed guard waits for the next line or the
/// end of stdin, which comes when the agent dies).
pub async fn run_guard<R: AsyncBufRead + Unpin>(mut input: R, fence: &dyn Fence, options: GuardOptions) -> GuardOutcome {
    let GuardOptions { mut watchdog, fence_timeout } = options;
    let mut out = GuardOutcome { end: GuardEnd::Eof, fences: Vec::new(), ignored_lines: 0, watchdog_note: None };
    let mut deadline: Option<Instant> = None;
    let mut buf = Vec::with_capacity(MAX_LINE + 1);
    let mut skipping = false;
    // A fence failed and no instruction came since: a running watchdog is left to fire.
    let mut fence_failed = false;
    loop {
        let event = match deadline {
            Some(d) => tokio::select! {
                biased;
                () = tokio::time::sleep_until(d) => Event::Deadline,
                e = next_line(&mut input, &mut buf) => e,
            },
            None => next_line(&mut input, &mut buf).await,
        };
        match event {
            Event::Deadline => {
                let late_by = deadline.map(|d| Instant::now().saturating_duration_since(d)).unwrap_or_default();
                deadline = None;
                fence_failed = !do_fence(fence, fence_timeout, FenceCause::DeadlinePassed, late_by, &mut watchdog, &mut out).await;
            }
            Event::TooLong => {
                if !skipping {
                    out.ignored_lines += 1;
                    tracing::warn!(max = MAX_LINE, "guard: skipping an overlong line");
                }
                skipping = true;
            }
            Event::Line(_) if skipping => skipping = false,
            Event::Line(line) => match line.parse::<Instruction>() {
                Ok(Instruction::Arm(d)) => {
                    fence_failed = false;
                    // Instant + a day cannot overflow; `None` only on a broken clock, where
                    // the old deadline stays.
                    if let Some(at) = Instant::now().checked_add(d) {
                        deadline = Some(at);
                    }
                    if let Some(w) = watchdog.as_mut() {
                        let note = match w.arm(d) {
                            Ok(WatchdogUse::Relied { .. }) => None,
                            Ok(WatchdogUse::NotUsed { reason }) => Some(reason),
                            Err(e) => Some(e.to_string()),
                        };
                        if note.is_some() && note != out.watchdog_note {
                            tracing::warn!(note = note.as_deref().unwrap_or_default(), "guard: watchdog not relied upon");
                        }
                        out.watchdog_note = note;
                    }
                }
                Ok(Instruction::Disarm) => {
                    fence_failed = false;
                    deadline = None;
                    disarm_watchdog(&mut watchdog, &mut out);
                }
                Ok(Instruction::Exit) => {
                    disarm_watchdog(&mut watchdog, &mut out);
                    out.end = GuardEnd::Exit;
                    return out;
                }
                Err(e) => {
                    out.ignored_lines += 1;
                    tracing::warn!(error = %e, "guard: ignored a line");
                }
            },
            Event::Eof | Event::Error(_) => {
                let (end, cause) = match event {
                    Event::Error(e) => (GuardEnd::InputError(e.to_string()), FenceCause::InputError(e.to_string())),
                    _ => (GuardEnd::Eof, FenceCause::InputClosed),
                };
                if deadline.is_some() {
                    do_fence(fence, fence_timeout, cause, Duration::ZERO, &mut watchdog, &mut out).await;
                } else if !fence_failed {
                    disarm_watchdog(&mut watchdog, &mut out);
                }
                out.end = end;
                return out;
            }
        }
    }
}

/// Runs one fence (bounded by `timeout`); whether it worked. A fence that worked stands
/// the watchdog down; one that failed leaves it running without keepalives, to reset the
/// machine.
async fn do_fence(
    fence: &dyn Fence,
    timeout: Duration,
    cause: FenceCause,
    late_by: Duration,
    watchdog: &mut Option<Watchdog>,
    out: &mut GuardOutcome,
) -> bool {
    let result = match tokio::time::timeout(timeout, fence.fence()).await {
        Ok(r) => r,
        Err(_) => Err(FenceError::TimedOut(timeout)),
    };
    match &result {
        Ok(report) => {
            tracing::warn!(?cause, ?late_by, %report, "guard: fenced PostgreSQL");
            disarm_watchdog(watchdog, out);
        }
        Err(e) => tracing::error!(?cause, error = %e, "guard: the fence failed"),
    }
    let worked = result.is_ok();
    out.fences.push(Fenced { cause, late_by, result });
    worked
}

fn disarm_watchdog(watchdog: &mut Option<Watchdog>, out: &mut GuardOutcome) {
    if let Some(w) = watchdog.as_mut() {
        if let Err(e) = w.disarm() {
            tracing::error!(error = %e, "guard: could not stand the watchdog down");
            out.watchdog_note = Some(e.to_string());
        }
    }
}
