//! The framed remote shell (pure): the loop every long-lived channel runs, the frames sent
//! to it and the parser of its answers.
//!
//! One SSH channel runs [`LOOP`] (a POSIX `sh` loop) for as long as the connection lives;
//! each command is one frame on its stdin and comes back as the command's own stdout and
//! stderr, each ended by a marker holding a fresh random nonce:
//!
//! ```text
//! → C <nonce> <length of the command line> <length of stdin, or ->\n<command line><stdin>
//! ← stdout: <the command's stdout><nonce> <exit status>\n
//! ← stderr: <the command's stderr><nonce>\n
//! → P <nonce>\n            (a ping: is the shell still there?)
//! ← stdout: P <nonce>\n
//! ```
//!
//! The command line is the one an `exec` request would carry (`cd / && exec [become]
//! [env …] timeout … program args…`); it runs in a subshell, so nothing of one command
//! (directory, variables) reaches the next. Stdin is handed over by `head -c`, which reads
//! exactly that many bytes, through a pipe that is drained to its end even when the
//! command does not read it, so the next frame always starts where it should; without
//! stdin the command reads `/dev/null`. Secrets on stdin stay on the channel and the pipe:
//! never in an argument, a file or a log. A nonce is 128 random bits, never sent to the
//! command, so output cannot end a frame early by accident; anything that arrives after a
//! marker (a background process still writing) makes the shell unusable and it is closed.

use pgrepl_core::render::shell_quote;

/// The remote loop. `read` takes the header a byte at a time (shells never read ahead on
/// a pipe), `head -c` the exact lengths (GNU head reads no further than asked). A command
/// without stdin runs beside a watcher reading the channel (nothing arrives on it while a
/// command runs): at its end of file (the connection dropped) the watcher sends SIGTERM
/// to the command (`runuser`, `sudo` and `timeout` pass it on to the program), so a
/// command cut off by a lost connection stops instead of running on unseen.
pub(crate) const LOOP: &str = r#"cd / || exit 1
exec 3<&0
while IFS=' ' read -r k n a b; do
  case $k in
    P) printf 'P %s\n' "$n" ;;
    C)
      l=$(head -c "$a"; echo x); l=${l%x}
      if [ "$b" = - ]; then
        (eval "$l") </dev/null &
        c=$!
        (IFS= read -r _ <&3; kill -TERM "$c" 2>/dev/null) &
        w=$!
        wait "$c"; s=$?
        kill "$w" 2>/dev/null; wait "$w" 2>/dev/null
      else
        head -c "$b" | { (eval "$l"); s=$?; cat >/dev/null; exit "$s"; }
        s=$?
      fi
      printf '%s %s\n' "$n" "$s"
      printf '%s\n' "$n" >&2 ;;
    *) echo "pgrepl: unexpected frame" >&2; exit 2 ;;
  esac
done"#;

/// The `exec` request that starts the loop on a new channel (through the login shell,
/// which must be POSIX-like, as for every command).
pub(crate) fn start_line() -> String {
    format!("exec /bin/sh -c {}", shell_quote(LOOP))
}

/// A fresh nonce: 32 hex digits from the OS's random source.
pub(crate) fn nonce() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS randomness: time and a counter still never repeat within this process.
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        b[..8].copy_from_slice(&(t as u64).to_le_bytes());
        b[8..].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The bytes that run `line` with `stdin` (`None`: `/dev/null`).
pub(crate) fn command_frame(nonce: &str, line: &str, stdin: Option<&[u8]>) -> Vec<u8> {
    let inlen = stdin.map(|s| s.len().to_string()).unwrap_or_else(|| "-".into());
    let mut f = format!("C {nonce} {} {inlen}\n", line.len()).into_bytes();
    f.extend_from_slice(line.as_bytes());
    f.extend_from_slice(stdin.unwrap_or_default());
    f
}

/// The bytes of a ping.
pub(crate) fn ping_frame(nonce: &str) -> Vec<u8> {
    format!("P {nonce}\n").into_bytes()
}

/// What went wrong with the shell's answer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Bytes that cannot belong to the answer (a ping's).
    Trailing(&'static str),
    /// The end marker does not hold an exit status.
    BadStatus(String),
    /// More than the limit on one stream.
    TooMuch(&'static str),
}

/// Collects one command's answer from the two streams of the shell's channel.
#[derive(Debug)]
pub(crate) struct Reply {
    nonce: Vec<u8>,
    limit: usize,
    /// Everything received on stdout, marker included until it is cut off.
    pub(crate) stdout: Vec<u8>,
    pub(crate) stderr: Vec<u8>,
    status: Option<i32>,
    stderr_done: bool,
    /// Bytes arrived after a marker: something (a background process) still writes on the
    /// shell's output, so the shell must not serve another command.
    pub(crate) dirty: bool,
}

impl Reply {
    /// An answer to the frame sent with `nonce`; at most `limit` bytes per stream.
    pub(crate) fn new(nonce: &str, limit: usize) -> Self {
        Reply {
            nonce: nonce.as_bytes().to_vec(),
            limit,
            stdout: Vec::new(),
            stderr: Vec::new(),
            status: None,
            stderr_done: false,
            dirty: false,
        }
    }

    /// Whether both markers arrived.
    pub(crate) fn complete(&self) -> bool {
        self.status.is_some() && self.stderr_done
    }

    /// The exit status, once stdout's marker arrived.
    pub(crate) fn status(&self) -> Option<i32> {
        self.status
    }

    /// Bytes read from stdout.
    pub(crate) fn push_stdout(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if self.status.is_some() {
            self.dirty |= !bytes.is_empty();
            return Ok(());
        }
        let from = self.stdout.len().saturating_sub(self.nonce.len() + 16);
        self.stdout.extend_from_slice(bytes);
        if let Some(at) = find(&self.stdout[from..], &self.nonce).map(|i| i + from) {
            let rest = &self.stdout[at + self.nonce.len()..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                return Ok(()); // the status is still on its way
            };
            self.dirty |= nl + 1 != rest.len();
            let text = String::from_utf8_lossy(&rest[..nl]).into_owned();
            let status = text.strip_prefix(' ').and_then(|s| s.parse::<i32>().ok()).ok_or(FrameError::BadStatus(text))?;
            self.stdout.truncate(at);
            self.status = Some(status);
        } else if self.stdout.len() > self.limit + self.nonce.len() + 16 {
            return Err(FrameError::TooMuch("stdout"));
        }
        Ok(())
    }

    /// Bytes read from stderr.
    pub(crate) fn push_stderr(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        if self.stderr_done {
            self.dirty |= !bytes.is_empty();
            return Ok(());
        }
        let from = self.stderr.len().saturating_sub(self.nonce.len() + 1);
        self.stderr.extend_from_slice(bytes);
        if let Some(at) = find(&self.stderr[from..], &self.nonce).map(|i| i + from) {
            let rest = &self.stderr[at + self.nonce.len()..];
            if rest.is_empty() {
                return Ok(());
            }
            if rest[0] != b'\n' {
                return Err(FrameError::BadStatus(String::from_utf8_lossy(rest).into_owned()));
            }
            self.dirty |= rest.len() > 1;
            self.stderr.truncate(at);
            self.stderr_done = true;
        } else if self.stderr.len() > self.limit + self.nonce.len() + 1 {
            return Err(FrameError::TooMuch("stderr"));
        }
        Ok(())
    }
}

/// Whether `got` (all of stdout so far) is the full answer to a ping with `nonce`;
/// `Err` when it cannot become one.
pub(crate) fn ping_answered(got: &[u8], nonce: &str) -> Result<bool, FrameError> {
    let want = ping_frame(nonce);
    if got.len() > want.len() || !want.starts_with(got) {
        return Err(FrameError::Trailing("stdout"));
    }
    Ok(got.len() == want.len())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn frames_carry_exact_lengths() {
        assert_eq!(command_frame(N, "cd / && exec true", None), format!("C {N} 17 -\ncd / && exec true").into_bytes());
        assert_eq!(command_frame(N, "x\ny", Some(b"secret")), format!("C {N} 3 6\nx\nysecret").into_bytes());
        assert_eq!(ping_frame(N), format!("P {N}\n").into_bytes());
    }

    #[test]
    fn nonces_are_fresh_hex() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn reply_splits_at_the_markers_even_across_reads() {
        let mut r = Reply::new(N, 1 << 20);
        let out = format!("no newline at the end{N} 3\n");
        for chunk in out.as_bytes().chunks(5) {
            assert!(!r.complete());
            r.push_stdout(chunk).unwrap();
        }
        assert_eq!(r.status(), Some(3));
        assert!(!r.complete(), "stderr's marker is still missing");
        r.push_stderr(b"warn\n").unwrap();
        r.push_stderr(&format!("{N}\n").into_bytes()[..10]).unwrap();
        r.push_stderr(&format!("{N}\n").into_bytes()[10..]).unwrap();
        assert!(r.complete());
        assert_eq!(r.stdout, b"no newline at the end");
        assert_eq!(r.stderr, b"warn\n");
    }

    #[test]
    fn what_follows_a_marker_makes_the_shell_dirty() {
        let mut r = Reply::new(N, 1 << 20);
        r.push_stdout(format!("x{N} 0\nlate").as_bytes()).unwrap();
        assert_eq!((r.status(), r.dirty, r.stdout.as_slice()), (Some(0), true, &b"x"[..]));
        let mut r = Reply::new(N, 1 << 20);
        r.push_stdout(format!("{N} 0\n").as_bytes()).unwrap();
        assert!(!r.dirty);
        r.push_stdout(b"late").unwrap();
        assert!(r.dirty);
        let mut r = Reply::new(N, 1 << 20);
        r.push_stderr(format!("{N}\nlate").as_bytes()).unwrap();
        assert!(r.dirty);
        let mut r = Reply::new(N, 1 << 20);
        assert!(matches!(r.push_stdout(format!("{N} x\n").as_bytes()), Err(FrameError::BadStatus(_))));
    }

    #[test]
    fn reply_is_bounded() {
        let mut r = Reply::new(N, 10);
        assert_eq!(r.push_stdout(&[b'a'; 100]), Err(FrameError::TooMuch("stdout")));
        let mut r = Reply::new(N, 10);
        assert_eq!(r.push_stderr(&[b'a'; 100]), Err(FrameError::TooMuch("stderr")));
    }

    #[test]
    fn ping_answer_is_exact() {
        assert_eq!(ping_answered(b"", N), Ok(false));
        assert_eq!(ping_answered(b"P 0123", N), Ok(false));
        assert_eq!(ping_answered(format!("P {N}\n").as_bytes(), N), Ok(true));
        assert!(ping_answered(b"junk", N).is_err());
    }

    #[test]
    fn the_loop_is_quoted_into_one_exec_line() {
        let l = start_line();
        assert!(l.starts_with("exec /bin/sh -c '"), "{l}");
        assert!(LOOP.contains("head -c \"$b\" |"));
    }
}
