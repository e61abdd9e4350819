//! The guard's loop on virtual time (tokio's paused clock), with a fake fence.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader, DuplexStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};

use super::*;

#[derive(Debug, Default)]
struct FakeFence {
    calls: Mutex<Vec<Instant>>,
    fail: bool,
    hang: bool,
}

#[async_trait::async_trait]
impl Fence for FakeFence {
    async fn fence(&self) -> Result<FenceReport, FenceError> {
        self.calls.lock().unwrap().push(Instant::now());
        if self.hang {
            std::future::pending::<()>().await;
        }
        if self.fail {
            return Err(FenceError::NotOurPostmaster { pid: 42, reason: "fake".into() });
        }
        Ok(FenceReport::Stopped { pid: 42, took: Duration::ZERO })
    }
}

impl FakeFence {
    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().clone()
    }
}

fn start(fence: &Arc<FakeFence>, options: GuardOptions) -> (DuplexStream, JoinHandle<GuardOutcome>) {
    let (agent, guard) = tokio::io::duplex(4096);
    let fence = Arc::clone(fence);
    (agent, tokio::spawn(async move { run_guard(BufReader::new(guard), &*fence, options).await }))
}

async fn send(agent: &mut DuplexStream, text: &str) {
    agent.write_all(text.as_bytes()).await.unwrap();
}

const MS: Duration = Duration::from_millis(1);

#[test]
fn instructions_parse_and_print() {
    assert_eq!("arm 1500".parse(), Ok(Instruction::Arm(Duration::from_millis(1500))));
    assert_eq!("  arm   0 ".parse(), Ok(Instruction::Arm(Duration::ZERO)));
    assert_eq!("disarm".parse(), Ok(Instruction::Disarm));
    assert_eq!("exit".parse(), Ok(Instruction::Exit));
    for bad in ["", "arm", "arm -1", "arm +5", "arm 1.5", "arm 86400001", "arm 99999999999999999999", "arm 5 6", "ARM 5", "stop"] {
        assert!(bad.parse::<Instruction>().is_err(), "{bad:?}");
    }
    assert_eq!(Instruction::Arm(Duration::from_micros(2500)).to_string(), "arm 2");
    assert_eq!(Instruction::Arm(MAX_ARM).to_string().parse(), Ok(Instruction::Arm(MAX_ARM)));
}

#[tokio::test(start_paused = true)]
async fn arm_then_silence_fences_after_the_deadline_not_before() {
    let fence = Arc::new(FakeFence::default());
    let (mut agent, guard) = start(&fence, GuardOptions::default());
    let t0 = Instant::now();
    send(&mut agent, "arm 1000\n").await;
    sleep(999 * MS).await;
    assert!(fence.calls().is_empty(), "fenced before the deadline");
    sleep(2 * MS).await;
    let calls = fence.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0] - t0 >= 1000 * MS && calls[0] - t0 <= 1001 * MS, "{:?}", calls[0] - t0);

    // Fenced, it runs on disarmed: the end of stdin is then no second fence.
    drop(agent);
    let out = guard.await.unwrap();
    assert_eq!(out.end, GuardEnd::Eof);
    assert_eq!(out.fences.len(), 1);
    assert_eq!(out.fences[0].cause, FenceCause::DeadlinePassed);
    assert!(matches!(out.fences[0].result, Ok(FenceReport::Stopped { .. })));
}

#[tokio::test(start_paused = true)]
async fn each_arm_replaces_the_deadline() {
    let fence = Arc::new(FakeFence::default());
    let (mut agent, guard) = start(&fence, GuardOptions::default());
    let t0 = Instant::now();
    send(&mut agent, "arm 1000\n").await;
    sleep(800 * MS).await;
    send(&mut agent, "arm 1000\n").await;
    sleep(999 * MS).await;
    assert!(fence.calls().is_empty(), "the second arm did not extend the deadline");
    sleep(2 * MS).await;
    assert_eq!(fence.calls().len(), 1);
    assert!(fence.calls()[0] - t0 >= 1800 * MS);

    // A shorter arm shortens it too.
    send(&mut agent, "arm 5000\n").await;
    sleep(100 * MS).await;
    let t1 = Instant::now();
    send(&mut agent, "arm 200\n").await;
    sleep(300 * MS).await;
    assert_eq!(fence.calls().len(), 2);
    assert!(fence.calls()[1] - t1 >= 200 * MS && fence.calls()[1] - t1 < 300 * MS);
    drop(agent);
    assert_eq!(guard.await.unwrap().fences.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn disarm_means_never_fenced() {
    let fence = Arc::new(FakeFence::default());
    let (mut agent, guard) = start(&fence, GuardOptions::default());
    send(&mut agent, "arm 500\n").await;
    sleep(100 * MS).await;
    send(&mut agent, "disarm\n").await;
    sleep(Duration::from_secs(3600)).await;
    assert!(fence.calls().is_empty());
    drop(agent);
    let out = guard.await.unwrap();
    assert_eq!(out.end, GuardEnd::Eof);
    assert!(out.fences.is_empty() && fence.calls().is_empty(), "EOF while disarmed fenced");
}

#[tokio::test(start_paused = true)]
async fn eof_while_armed_fences_at_once() {
    let fence = Arc::new(FakeFence::default());
    let (mut agent, guard) = start(&fence, GuardOptions::default());
    send(&mut agent, "arm 60000\n").await;
    sleep(10 * MS).await;
    let died = Instant::now();
    drop(agent);
    let out = guard.await.unwrap();
    assert_eq!(out.end, GuardEnd::Eof);
    assert_eq!(out.fences.len(), 1);
    assert_eq!(out.fences[0].cause, FenceCause::InputClosed);
    assert_eq!(fence.calls()[0] - died, Duration::ZERO, "not at once");
}

#[tokio::test(start_paused = true)]
async fn eof_while_disarmed_exits_without_fencing() {
    let fence = Arc::new(FakeFence::default());
    let (agent, guard) = start(&fence, GuardOptions::default());
    drop(agent);
    let out = guard.await.unwrap();
    assert_eq!((out.end, out.fences.len(), out.ignored_lines), (GuardEnd::Eof, 0, 0));
    assert!(fence.calls().is_empty());
}

#[tokio::test(start_paused = true)]
async fn exit_leaves_without_fencing_even_when_armed() {
    let fence = Arc::new(FakeFence::default());
    let (mut agent, guard) = start(&fence, GuardOptions::default());
    send(&mut agent, "arm 100\nexit\n").await;
    let out = guard.await.unwrap();
    assert_eq!(out.end, GuardEnd::Exit);
    sleep(Duration::from_secs(1)).await;
    assert!(out.fences.is_empty() && fence.calls().is_empty());
    drop(agent);
}

#[tokio::test(start_paused = true)]
async fn malformed_lines_are_ignored_and_never_postpone_a_fence() {
    let fence = Arc::new(FakeFence::default());
    let (mut agent, guard) = start(&fence, GuardOptions::default());
    send(&mut agent, "arm 1000\n").await;
    sleep(500 * MS).await;
    let long = "arm 9".repeat(100);
    send(&mut agent, &format!("arm abc\nhello\n{long}\narm 99999999999\n\n")).await;
    sleep(501 * MS).await;
    assert_eq!(fence.calls().len(), 1, "the deadline of the last good arm holds");
    // A partial line at the end of stdin is no instruction: `exit` without its newline
    // does not stand a later arm down.
    send(&mut agent, "arm 1000\nexit").await;
    sleep(10 * MS).await;
    drop(agent);
    let out = guard.await.unwrap();
    assert_eq!(out.ignored_lines, 5);
    assert_eq!(out.end, GuardEnd::Eof);
    assert_eq!(out.fences.iter().map(|f| f.cause.clone()).collect::<Vec<_>>(), [FenceCause::DeadlinePassed, FenceCause::InputClosed]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_fence_is_recorded_and_the_guard_goes_on() {
    let fence = Arc::new(FakeFence { fail: true, ..Default::default() });
    let (mut agent, guard) = start(&fence, GuardOptions::default());
    send(&mut agent, "arm 10\n").await;
    sleep(20 * MS).await;
    send(&mut agent, "arm 10\n").await;
    sleep(20 * MS).await;
    send(&mut agent, "disarm\n").await;
    drop(agent);
    let out = guard.await.unwrap();
    assert_eq!(out.fences.len(), 2);
    assert!(out.fences.iter().all(|f| matches!(f.result, Err(FenceError::NotOurPostmaster { .. }))));
}

#[tokio::test(start_paused = true)]
async fn a_hung_fence_is_cut_off_by_the_fence_timeout() {
    let fence = Arc::new(FakeFence { hang: true, ..Default::default() });
    let (mut agent, guard) = start(&fence, GuardOptions { fence_timeout: Duration::from_secs(3), ..Default::default() });
    send(&mut agent, "arm 10\n").await;
    drop(agent);
    let out = guard.await.unwrap();
    assert_eq!(out.fences.len(), 1);
    assert!(matches!(out.fences[0].result, Err(FenceError::TimedOut(d)) if d == Duration::from_secs(3)));
}

/// A reader whose first read fails.
#[derive(Debug)]
struct Broken;

impl tokio::io::AsyncRead for Broken {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::Error::other("pipe broke")))
    }
}

#[tokio::test(start_paused = true)]
async fn a_read_error_while_armed_fences_and_while_disarmed_does_not() {
    use tokio::io::AsyncReadExt;
    let fence = FakeFence::default();
    let input = BufReader::new((&b"arm 1000\n"[..]).chain(Broken));
    let out = run_guard(input, &fence, GuardOptions::default()).await;
    assert_eq!(out.end, GuardEnd::InputError("pipe broke".into()));
    assert_eq!(out.fences.len(), 1);
    assert_eq!(out.fences[0].cause, FenceCause::InputError("pipe broke".into()));

    let fence = FakeFence::default();
    let out = run_guard(BufReader::new(Broken), &fence, GuardOptions::default()).await;
    assert_eq!(out.end, GuardEnd::InputError("pipe broke".into()));
    assert!(out.fences.is_empty() && fence.calls().is_empty());
}

/// The watchdog in the loop: kept alive on arms it can honour, stood down on disarm, on
/// exit and after a fence that worked; left running (to reset the machine) after one
/// that failed.
#[tokio::test(start_paused = true)]
async fn the_watchdog_follows_the_guard() {
    let d = tempfile::tempdir().unwrap();
    let dev = d.path().join("watchdog");
    std::fs::write(&dev, "").unwrap();
    std::fs::create_dir_all(d.path().join("class/watchdog0")).unwrap();
    std::fs::write(d.path().join("class/watchdog0/timeout"), "2\n").unwrap();
    let watchdog = || Some(Watchdog::open_with_sysfs(&dev, d.path().join("class")).unwrap());
    let contents = || std::fs::read_to_string(&dev).unwrap();

    let fence = Arc::new(FakeFence::default());
    let (mut agent, guard) = start(&fence, GuardOptions { watchdog: watchdog(), ..Default::default() });
    send(&mut agent, "arm 3000\narm 2000\n").await;
    sleep(10 * MS).await;
    assert_eq!(contents(), "11");
    send(&mut agent, "arm 1000\n").await;
    sleep(10 * MS).await;
    assert_eq!(contents(), "11V", "a deadline shorter than its timeout stands it down");
    send(&mut agent, "arm 3000\n").await;
    sleep(10 * MS).await;
    send(&mut agent, "disarm\narm 3000\n").await;
    sleep(3001 * MS).await;
    assert_eq!(fence.calls().len(), 1);
    assert_eq!(contents(), "11V1V1V", "kept alive, stood down on disarm, then after the fence");
    send(&mut agent, "arm 2500\nexit\n").await;
    let out = guard.await.unwrap();
    assert_eq!(contents(), "11V1V1V1V");
    assert_eq!(out.watchdog_note, None);

    std::fs::write(&dev, "").unwrap();
    let fence = Arc::new(FakeFence { fail: true, ..Default::default() });
    let (mut agent, guard) = start(&fence, GuardOptions { watchdog: watchdog(), ..Default::default() });
    send(&mut agent, "arm 1000\n").await;
    sleep(10 * MS).await;
    send(&mut agent, "arm 2000\n").await;
    sleep(2001 * MS).await;
    drop(agent);
    let out = guard.await.unwrap();
    assert_eq!(contents(), "1", "a failed fence leaves the watchdog running");
    assert_eq!(out.watchdog_note, None);
    assert_eq!(out.fences.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_note_says_why_it_is_not_used() {
    let d = tempfile::tempdir().unwrap();
    let dev = d.path().join("watchdog3");
    std::fs::write(&dev, "").unwrap();
    std::fs::create_dir_all(d.path().join("class/watchdog3")).unwrap();
    std::fs::write(d.path().join("class/watchdog3/timeout"), "60\n").unwrap();
    let fence = FakeFence::default();
    let options = GuardOptions { watchdog: Some(Watchdog::open_with_sysfs(&dev, d.path().join("class")).unwrap()), ..Default::default() };
    let out = run_guard(&b"arm 5000\ndisarm\n"[..], &fence, options).await;
    assert!(out.watchdog_note.as_deref().is_some_and(|n| n.contains("60 s") && n.contains("5000 ms")), "{:?}", out.watchdog_note);
    assert_eq!(std::fs::read_to_string(&dev).unwrap(), "");
}
