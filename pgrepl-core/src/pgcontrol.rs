//! On-disk formats pgrepl reads without a running server: `global/pg_control`, the end
//! of the WAL in `pg_wal`, and timeline history files. Pure: the caller reads the bytes
//! (through its transport) and these functions interpret them.
//!
//! Why not `pg_controldata` and `pg_waldump`? They must be of the data directory's own
//! major (a tool of another major reports a CRC mismatch, see the lab notes), and some
//! builds ship neither. These parsers work for every supported major from bytes alone and
//! validate what they read (CRC-32C of pg_control, page addresses and record CRCs of WAL),
//! so a torn or foreign file is reported rather than misread.
//!
//! Layouts (little-endian x86_64/aarch64, `MAXALIGN` 8):
//!
//! | offset | pg_control field |
//! |---|---|
//! | 0 | `system_identifier` u64 |
//! | 8 | `pg_control_version` u32 |
//! | 12 | `catalog_version_no` u32 |
//! | 16 | `state` (DBState) u32 |
//! | 24 | `time` i64 |
//! | 32 | `checkPoint` (LSN of the last checkpoint record) |
//! | 40 (11+) / 48 (≤10, after `prevCheckPoint`) | `checkPointCopy`: `redo` u64, `ThisTimeLineID` u32, `PrevTimeLineID` u32 |
//!
//! The CRC (CRC-32C from 9.5) is the last field of the struct, whose size changes between
//! majors; it is found as the offset where the CRC of everything before it matches.

use std::fmt;

use serde::Serialize;

pub use crate::lsn::Lsn;

/// Where pg_control keeps what pgrepl reads, per major (from the version table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ControlLayout {
    /// The `pg_control_version` this major writes.
    pub version: u32,
    /// Offset of `checkPointCopy` (48 while `prevCheckPoint` existed, ≤10; 40 from 11).
    pub checkpoint_copy_offset: usize,
    /// The CRC is CRC-32C (9.5+); before, a legacy CRC pgrepl does not check.
    pub crc32c: bool,
}

/// The cluster state recorded in pg_control (`DBState`, 9.2+ numbering).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DbState {
    /// Starting up.
    Startup,
    /// Shut down cleanly (a primary).
    ShutDown,
    /// Shut down cleanly while in recovery (a standby).
    ShutDownInRecovery,
    /// Shutting down.
    ShuttingDown,
    /// Crash recovery in progress.
    InCrashRecovery,
    /// Archive recovery (a standby, running).
    InArchiveRecovery,
    /// Running as a primary, or crashed while it did.
    InProduction,
    /// A value pgrepl does not know.
    Unknown(u32),
}

impl DbState {
    fn from_raw(v: u32) -> DbState {
        match v {
            0 => DbState::Startup,
            1 => DbState::ShutDown,
            2 => DbState::ShutDownInRecovery,
            3 => DbState::ShuttingDown,
            4 => DbState::InCrashRecovery,
            5 => DbState::InArchiveRecovery,
            6 => DbState::InProduction,
            other => DbState::Unknown(other),
        }
    }

    /// Shut down cleanly (as a primary or as a standby): pg_rewind accepts it as a target,
    /// and its last checkpoint is the end of its WAL.
    pub fn is_clean_shutdown(self) -> bool {
        matches!(self, DbState::ShutDown | DbState::ShutDownInRecovery)
    }
}

impl fmt::Display for DbState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DbState::Startup => f.write_str("starting up"),
            DbState::ShutDown => f.write_str("shut down"),
            DbState::ShutDownInRecovery => f.write_str("shut down in recovery"),
            DbState::ShuttingDown => f.write_str("shutting down"),
            DbState::InCrashRecovery => f.write_str("in crash recovery"),
            DbState::InArchiveRecovery => f.write_str("in archive recovery"),
            DbState::InProduction => f.write_str("in production"),
            DbState::Unknown(v) => write!(f, "unknown state {v}"),
        }
    }
}

/// What pgrepl reads from pg_control.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ControlFile {
    /// Database system identifier (the same on a primary and its clones).
    pub system_identifier: u64,
    /// `pg_control_version`.
    pub pg_control_version: u32,
    /// `catalog_version_no`.
    pub catalog_version: u32,
    /// Cluster state.
    pub state: DbState,
    /// Time of the last pg_control update (Unix seconds).
    pub time: i64,
    /// Location of the last checkpoint record. After a clean shutdown of a primary this is
    /// its shutdown checkpoint, the last record of its WAL.
    pub checkpoint: Lsn,
    /// The last checkpoint's REDO location.
    pub redo: Lsn,
    /// The last checkpoint's timeline.
    pub timeline: u32,
    /// The timeline before it (equal to `timeline` unless the checkpoint began one).
    pub prev_timeline: u32,
    /// The CRC was checked and matches (`None`: this major's CRC is not checked).
    pub crc_ok: Option<bool>,
    /// `pg_control_version` differs from what the layout expects (another major's file).
    pub unexpected_version: bool,
}

/// Why pg_control could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Too short to hold the fields.
    #[error("pg_control is {0} bytes, too short")]
    TooShort(usize),
    /// The CRC does not match (a torn read, or not a pg_control of this architecture).
    #[error("pg_control CRC does not match (torn read or corrupt file)")]
    BadCrc,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Parses pg_control. With `layout.crc32c` the CRC must match (else [`ControlError::BadCrc`]:
/// read again, the file may have been rewritten mid-read).
pub fn parse_control(bytes: &[u8], layout: &ControlLayout) -> Result<ControlFile, ControlError> {
    let cp = layout.checkpoint_copy_offset;
    if bytes.len() < cp + 16 || bytes.len() < 48 {
        return Err(ControlError::TooShort(bytes.len()));
    }
    let crc_ok = if layout.crc32c {
        // The CRC is the struct's last field: find the offset where it matches.
        let found = (64..=1024usize.min(bytes.len().saturating_sub(4)))
            .step_by(4)
            .any(|off| crc32c(&bytes[..off]) == u32_at(bytes, off) && u32_at(bytes, off) != 0);
        if !found {
            return Err(ControlError::BadCrc);
        }
        Some(true)
    } else {
        None
    };
    let version = u32_at(bytes, 8);
    Ok(ControlFile {
        system_identifier: u64_at(bytes, 0),
        pg_control_version: version,
        catalog_version: u32_at(bytes, 12),
        state: DbState::from_raw(u32_at(bytes, 16)),
        time: u64_at(bytes, 24) as i64,
        checkpoint: Lsn(u64_at(bytes, 32)),
        redo: Lsn(u64_at(bytes, cp)),
        timeline: u32_at(bytes, cp + 8),
        prev_timeline: u32_at(bytes, cp + 12),
        crc_ok,
        unexpected_version: version != layout.version,
    })
}

const fn crc32c_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC32C: [u32; 256] = crc32c_table();

fn crc32c_update(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc = CRC32C[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    crc
}

/// CRC-32C (Castagnoli), as PostgreSQL computes it (init and final xor `0xFFFFFFFF`).
pub fn crc32c(data: &[u8]) -> u32 {
    !crc32c_update(!0, data)
}

// ---------------------------------------------------------------------------------------
// WAL

/// Size of a WAL record header (`SizeOfXLogRecord`, 9.5+).
const RECORD_HEADER: usize = 24;
/// Page header sizes (`SizeOfXLogShortPHD`, `SizeOfXLogLongPHD`).
const SHORT_PAGE_HEADER: u64 = 24;
const LONG_PAGE_HEADER: u64 = 40;
/// `XLP_FIRST_IS_CONTRECORD`, `XLP_LONG_HEADER`, and every known page flag.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const XLP_LONG_HEADER: u16 = 0x0002;
const XLP_ALL_FLAGS: u16 = 0x000F;
/// The largest record PostgreSQL writes (1020 MB from 15; nothing larger before).
const MAX_RECORD: u32 = 1 << 30;
/// `RM_XLOG_ID` and `XLOG_SWITCH`: the rest of the segment is unused after it.
const RM_XLOG_ID: u8 = 0;
const XLOG_SWITCH: u8 = 0x40;

fn maxalign(x: u64) -> u64 {
    (x + 7) & !7
}

/// The WAL segment file name of segment `segno` on timeline `tli`.
pub fn wal_file_name(tli: u32, segno: u64, seg_size: u64) -> String {
    let per_id = 0x1_0000_0000u64 / seg_size;
    format!("{:08X}{:08X}{:08X}", tli, segno / per_id, segno % per_id)
}

/// `(timeline, segment number)` of a WAL segment file name, or `None` for other files
/// (`.history`, `.partial`, `archive_status`).
pub fn parse_wal_file_name(name: &str, seg_size: u64) -> Option<(u32, u64)> {
    if name.len() != 24 || !name.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let tli = u32::from_str_radix(&name[0..8], 16).ok()?;
    let log = u64::from_str_radix(&name[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
    let per_id = 0x1_0000_0000u64 / seg_size;
    (seg < per_id).then_some((tli, log * per_id + seg))
}

/// What [`WalScanner`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WalEnd {
    /// The end of the last valid record as PostgreSQL counts it (`EndRecPtr`): where the
    /// next record would begin, MAXALIGN'd.
    pub end: Lsn,
    /// The start of the last valid record.
    pub last_record: Lsn,
    /// The timeline of the page the last record starts on.
    pub timeline: u32,
    /// Records read.
    pub records: u64,
}

/// Finds the end of the WAL in a data directory by reading records forward from a known
/// record start (the last checkpoint, from pg_control) and validating each one (page
/// addresses, the `xl_prev` chain, CRC-32C), exactly as recovery would: the first record
/// that does not validate marks the end. Feed it whole segment files in order; it asks for
/// the next one while records continue. Record format of 9.5 and later.
#[derive(Debug, Clone)]
pub struct WalScanner {
    seg_size: u64,
    blcksz: Option<u64>,
    magic: Option<u16>,
    /// Where the next record starts (or continues being read).
    pos: u64,
    prev: Option<u64>,
    found: Option<WalEnd>,
    records: u64,
    /// A record being assembled across a segment boundary.
    partial: Option<Partial>,
    done: bool,
    page_tli: u32,
    record_tli: u32,
}

#[derive(Debug, Clone)]
struct Partial {
    start: u64,
    buf: Vec<u8>,
    /// Bytes still wanted (header first, then the rest once the length is known).
    want: usize,
    header_done: bool,
}

/// Reading stopped at a segment's end (more WAL may follow) or for good.
enum Read {
    Complete(u64),
    SegmentEnd(u64),
    Invalid,
}

impl WalScanner {
    /// A scanner starting at `start`, which must be the start of a valid record (the
    /// checkpoint location from pg_control), in segments of `seg_size` bytes.
    pub fn new(start: Lsn, seg_size: u64) -> WalScanner {
        WalScanner {
            seg_size,
            blcksz: None,
            magic: None,
            pos: start.0,
            prev: None,
            found: None,
            records: 0,
            partial: None,
            done: false,
            page_tli: 0,
            record_tli: 0,
        }
    }

    /// The segment number the scanner needs next.
    pub fn next_segment(&self) -> u64 {
        self.pos / self.seg_size
    }

    /// Whether the scan has ended (an invalid or missing record was reached).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The end found so far.
    pub fn end(&self) -> Option<WalEnd> {
        self.found
    }

    /// Marks the scan ended (the next segment does not exist).
    pub fn finish(&mut self) -> Option<WalEnd> {
        self.done = true;
        self.found
    }

    /// Reads the records of segment `segno` (its whole file). Returns whether the next
    /// segment is wanted.
    pub fn feed(&mut self, segno: u64, data: &[u8]) -> bool {
        if self.done {
            return false;
        }
        if segno != self.pos / self.seg_size || data.len() as u64 != self.seg_size {
            self.done = true;
            return false;
        }
        let seg_start = segno * self.seg_size;
        if self.blcksz.is_none() {
            // The segment's long header names the block size.
            if data.len() < LONG_PAGE_HEADER as usize || u16::from_le_bytes([data[2], data[3]]) & XLP_LONG_HEADER == 0 {
                self.done = true;
                return false;
            }
            let b = u32_at(data, 36) as u64;
            if !(1024..=65536).contains(&b) || !b.is_power_of_two() || u32_at(data, 32) as u64 != self.seg_size {
                self.done = true;
                return false;
            }
            self.blcksz = Some(b);
        }
        loop {
            let mut p = match self.partial.take() {
                Some(p) => p,
                None => match self.begin_record(data, seg_start) {
                    Some(p) => p,
                    None => {
                        self.done = true;
                        return false;
                    }
                },
            };
            match self.read_into(data, seg_start, &mut p) {
                Read::Invalid => {
                    self.done = true;
                    return false;
                }
                Read::SegmentEnd(at) => {
                    self.pos = at;
                    // Keep what was read of a record that continues in the next segment.
                    if !p.buf.is_empty() || p.header_done {
                        self.partial = Some(p);
                    }
                    return true;
                }
                Read::Complete(end) => {
                    if !self.accept(&p, end) {
                        self.done = true;
                        return false;
                    }
                    let (info, rmid) = (p.buf[16], p.buf[17]);
                    self.pos = if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
                        end.div_ceil(self.seg_size) * self.seg_size
                    } else {
                        maxalign(end)
                    };
                    if self.pos >= seg_start + self.seg_size {
                        return true;
                    }
                }
            }
        }
    }

    /// Starts reading a record at `self.pos` (skipping a page header if it is at a page start).
    fn begin_record(&mut self, data: &[u8], seg_start: u64) -> Option<Partial> {
        let blcksz = self.blcksz?;
        let mut pos = self.pos;
        if pos.is_multiple_of(blcksz) {
            let flags = self.check_page(data, seg_start, pos)?;
            if flags & XLP_FIRST_IS_CONTRECORD != 0 {
                // The page begins with the rest of a record we did not start: not our chain.
                return None;
            }
            pos += self.header_size(pos);
        }
        self.pos = pos;
        self.record_tli = self.page_tli_at(data, seg_start, pos);
        Some(Partial { start: pos, buf: Vec::with_capacity(RECORD_HEADER), want: RECORD_HEADER, header_done: false })
    }

    fn header_size(&self, page_start: u64) -> u64 {
        if page_start.is_multiple_of(self.seg_size) { LONG_PAGE_HEADER } else { SHORT_PAGE_HEADER }
    }

    fn page_tli_at(&self, data: &[u8], seg_start: u64, pos: u64) -> u32 {
        let blcksz = self.blcksz.unwrap_or(8192);
        let page = (pos - seg_start) / blcksz * blcksz;
        u32_at(data, page as usize + 4)
    }

    /// Validates the page header at `page` (an LSN at a page start); returns its flags.
    fn check_page(&mut self, data: &[u8], seg_start: u64, page: u64) -> Option<u16> {
        let off = (page - seg_start) as usize;
        if off + SHORT_PAGE_HEADER as usize > data.len() {
            return None;
        }
        let magic = u16::from_le_bytes([data[off], data[off + 1]]);
        let info = u16::from_le_bytes([data[off + 2], data[off + 3]]);
        let tli = u32_at(data, off + 4);
        let addr = u64_at(data, off + 8);
        if addr != page || info & !XLP_ALL_FLAGS != 0 || tli == 0 {
            return None;
        }
        match self.magic {
            None => self.magic = Some(magic),
            Some(m) if m != magic => return None,
            Some(_) => {}
        }
        if page.is_multiple_of(self.seg_size) != (info & XLP_LONG_HEADER != 0) {
            return None;
        }
        if tli < self.page_tli {
            // Timelines only grow along one history.
            return None;
        }
        self.page_tli = tli;
        Some(info)
    }

    /// Copies record bytes from `self.pos` onwards into `p`, crossing page headers.
    fn read_into(&mut self, data: &[u8], seg_start: u64, p: &mut Partial) -> Read {
        let Some(blcksz) = self.blcksz else { return Read::Invalid };
        let seg_end = seg_start + self.seg_size;
        let mut pos = self.pos;
        loop {
            while p.want > 0 {
                if pos >= seg_end {
                    return Read::SegmentEnd(pos);
                }
                if pos.is_multiple_of(blcksz) {
                    // A continuation page.
                    let Some(flags) = self.check_page(data, seg_start, pos) else { return Read::Invalid };
                    if flags & XLP_FIRST_IS_CONTRECORD == 0 {
                        return Read::Invalid;
                    }
                    pos += self.header_size(pos);
                    continue;
                }
                let page_end = (pos / blcksz + 1) * blcksz;
                let n = (p.want as u64).min(page_end - pos) as usize;
                let off = (pos - seg_start) as usize;
                p.buf.extend_from_slice(&data[off..off + n]);
                p.want -= n;
                pos += n as u64;
            }
            if !p.header_done {
                p.header_done = true;
                let tot = u32_at(&p.buf, 0);
                if (tot as usize) < RECORD_HEADER || tot > MAX_RECORD {
                    return Read::Invalid;
                }
                if let Some(prev) = self.prev {
                    if u64_at(&p.buf, 8) != prev {
                        return Read::Invalid;
                    }
                }
                p.want = tot as usize - RECORD_HEADER;
                p.buf.reserve(p.want);
                continue;
            }
            self.pos = pos;
            return Read::Complete(pos);
        }
    }

    /// Checks a complete record's CRC; records it as the last valid one.
    fn accept(&mut self, p: &Partial, end: u64) -> bool {
        let crc = !crc32c_update(crc32c_update(!0, &p.buf[RECORD_HEADER..]), &p.buf[..20]);
        if crc != u32_at(&p.buf, 20) {
            return false;
        }
        self.prev = Some(p.start);
        self.records += 1;
        // PostgreSQL's end of a record (`EndRecPtr`: replay positions, timeline switch
        // points) is where the next record may begin: MAXALIGN'd.
        self.found = Some(WalEnd { end: Lsn(maxalign(end)), last_record: Lsn(p.start), timeline: self.record_tli, records: self.records });
        true
    }
}

// ---------------------------------------------------------------------------------------
// Timeline history

/// One line of a timeline history file: timeline `parent` ended at `switchpoint`, where
/// its child began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The parent timeline.
    pub parent: u32,
    /// Where it ended.
    pub switchpoint: Lsn,
}

/// Parses `<tli>.history` (`parentTLI<TAB>switchpoint<TAB>reason` lines; `#` comments).
pub fn parse_history(text: &str) -> Vec<HistoryEntry> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let parent = f.next()?.parse().ok()?;
            let switchpoint = f.next()?.parse().ok()?;
            Some(HistoryEntry { parent, switchpoint })
        })
        .collect()
}

/// The name of timeline `tli`'s history file in `pg_wal`.
pub fn history_file_name(tli: u32) -> String {
    format!("{tli:08X}.history")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trip() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn(0x3000060).to_string(), "0/3000060");
        assert!("junk".parse::<Lsn>().is_err());
        assert_eq!(Lsn(10).bytes_after(Lsn(4)), 6);
        assert_eq!(Lsn(4).bytes_after(Lsn(10)), 0);
    }

    #[test]
    fn crc32c_known_vector() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    fn control_bytes(cp_off: usize, crc_at: usize) -> Vec<u8> {
        let mut b = vec![0u8; 8192];
        b[0..8].copy_from_slice(&0x1234_5678_9abc_def0u64.to_le_bytes());
        b[8..12].copy_from_slice(&1300u32.to_le_bytes());
        b[12..16].copy_from_slice(&202_307_071u32.to_le_bytes());
        b[16..20].copy_from_slice(&1u32.to_le_bytes());
        b[32..40].copy_from_slice(&0x0300_0028u64.to_le_bytes());
        b[cp_off..cp_off + 8].copy_from_slice(&0x0300_0028u64.to_le_bytes());
        b[cp_off + 8..cp_off + 12].copy_from_slice(&3u32.to_le_bytes());
        b[cp_off + 12..cp_off + 16].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c(&b[..crc_at]);
        b[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    #[test]
    fn control_fields_and_crc() {
        let layout = ControlLayout { version: 1300, checkpoint_copy_offset: 40, crc32c: true };
        let b = control_bytes(40, 296);
        let c = parse_control(&b, &layout).unwrap();
        assert_eq!(c.state, DbState::ShutDown);
        assert!(c.state.is_clean_shutdown());
        assert_eq!(c.checkpoint, Lsn(0x0300_0028));
        assert_eq!(c.timeline, 3);
        assert_eq!(c.prev_timeline, 2);
        assert_eq!(c.crc_ok, Some(true));
        assert!(!c.unexpected_version);
        let mut torn = b.clone();
        torn[33] ^= 0xFF;
        assert_eq!(parse_control(&torn, &layout), Err(ControlError::BadCrc));
        let old = ControlLayout { version: 1002, checkpoint_copy_offset: 48, crc32c: true };
        let c = parse_control(&control_bytes(48, 304), &old).unwrap();
        assert_eq!(c.timeline, 3);
        assert!(c.unexpected_version, "1300 is not 10's version");
        assert_eq!(parse_control(&b[..30], &layout), Err(ControlError::TooShort(30)));
    }

    #[test]
    fn wal_file_names() {
        let seg = 16 * 1024 * 1024;
        assert_eq!(wal_file_name(1, 1, seg), "000000010000000000000001");
        assert_eq!(wal_file_name(2, 0x1_23, seg), "000000020000000100000023");
        assert_eq!(parse_wal_file_name("000000020000000100000023", seg), Some((2, 0x123)));
        assert_eq!(parse_wal_file_name("00000002.history", seg), None);
        assert_eq!(parse_wal_file_name("000000010000000000000001.partial", seg), None);
    }

    #[test]
    fn history_lines() {
        let h = parse_history("1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tat restore point \"x\"\n");
        assert_eq!(
            h,
            vec![HistoryEntry { parent: 1, switchpoint: Lsn(0x3000158) }, HistoryEntry { parent: 2, switchpoint: Lsn(0x5000000) }]
        );
        assert_eq!(history_file_name(10), "0000000A.history");
    }

    /// Builds WAL the way PostgreSQL lays it out: page headers, records at MAXALIGN'd
    /// positions crossing pages and segments, CRC-32C over data then header.
    struct WalWriter {
        seg_size: u64,
        blcksz: u64,
        tli: u32,
        segs: std::collections::BTreeMap<u64, Vec<u8>>,
        pos: u64,
        prev: u64,
    }

    impl WalWriter {
        fn new(seg_size: u64, blcksz: u64, start: u64) -> Self {
            WalWriter { seg_size, blcksz, tli: 1, segs: Default::default(), pos: start, prev: 0 }
        }

        fn byte(&mut self, at: u64, v: u8) {
            let seg = at / self.seg_size;
            let size = self.seg_size as usize;
            let s = self.segs.entry(seg).or_insert_with(|| vec![0; size]);
            s[(at % self.seg_size) as usize] = v;
        }

        fn page_header(&mut self, page: u64, contrecord: bool, rem: u32) {
            let long = page.is_multiple_of(self.seg_size);
            let mut info: u16 = if contrecord { XLP_FIRST_IS_CONTRECORD } else { 0 };
            if long {
                info |= XLP_LONG_HEADER;
            }
            let mut h = Vec::new();
            h.extend_from_slice(&0xD110u16.to_le_bytes());
            h.extend_from_slice(&info.to_le_bytes());
            h.extend_from_slice(&self.tli.to_le_bytes());
            h.extend_from_slice(&page.to_le_bytes());
            h.extend_from_slice(&rem.to_le_bytes());
            h.extend_from_slice(&[0; 4]);
            if long {
                h.extend_from_slice(&7u64.to_le_bytes());
                h.extend_from_slice(&(self.seg_size as u32).to_le_bytes());
                h.extend_from_slice(&(self.blcksz as u32).to_le_bytes());
            }
            for (i, v) in h.into_iter().enumerate() {
                self.byte(page + i as u64, v);
            }
        }

        fn hdr(&self, page: u64) -> u64 {
            if page.is_multiple_of(self.seg_size) { LONG_PAGE_HEADER } else { SHORT_PAGE_HEADER }
        }

        /// Writes a record with `len` payload bytes; returns (start, end).
        fn record(&mut self, len: usize, rmid: u8, info: u8) -> (u64, u64) {
            if self.pos.is_multiple_of(self.blcksz) {
                self.page_header(self.pos, false, 0);
                self.pos += self.hdr(self.pos);
            }
            let start = self.pos;
            let tot = (RECORD_HEADER + len) as u32;
            let payload: Vec<u8> = (0..len).map(|i| (i * 7 + start as usize) as u8).collect();
            let mut header = Vec::new();
            header.extend_from_slice(&tot.to_le_bytes());
            header.extend_from_slice(&42u32.to_le_bytes());
            header.extend_from_slice(&self.prev.to_le_bytes());
            header.push(info);
            header.push(rmid);
            header.extend_from_slice(&[0, 0]);
            let crc = !crc32c_update(crc32c_update(!0, &payload), &header[..20]);
            header.extend_from_slice(&crc.to_le_bytes());
            let bytes: Vec<u8> = header.into_iter().chain(payload).collect();
            let mut remaining = bytes.len() as u32;
            for v in bytes {
                if self.pos.is_multiple_of(self.blcksz) {
                    self.page_header(self.pos, true, remaining);
                    self.pos += self.hdr(self.pos);
                }
                self.byte(self.pos, v);
                self.pos += 1;
                remaining -= 1;
            }
            let end = self.pos;
            self.prev = start;
            self.pos = maxalign(end);
            if rmid == RM_XLOG_ID && info == XLOG_SWITCH {
                self.pos = (end / self.seg_size + 1) * self.seg_size;
            }
            // Make sure the page the next record would start on has a header when it is new.
            (start, end)
        }
    }

    fn scan(w: &WalWriter, start: u64) -> Option<WalEnd> {
        let mut s = WalScanner::new(Lsn(start), w.seg_size);
        loop {
            let seg = s.next_segment();
            match w.segs.get(&seg) {
                Some(data) => {
                    if !s.feed(seg, data) {
                        return s.end();
                    }
                }
                None => return s.finish(),
            }
        }
    }

    #[test]
    fn wal_end_across_pages_and_segments() {
        let (seg, blk) = (64 * 1024, 1024);
        let mut w = WalWriter::new(seg, blk, 0);
        w.page_header(0, false, 0);
        w.pos = LONG_PAGE_HEADER;
        let (first, _) = w.record(50, 1, 0);
        let mut last = (0, 0);
        for i in 0..400 {
            // Sizes that cross page boundaries and, eventually, the segment boundary.
            last = w.record(30 + (i * 37) % 900, 10, 0);
        }
        assert!(w.segs.len() >= 3, "the WAL spans segments");
        let end = scan(&w, first).expect("records found");
        assert_eq!(end.end, Lsn(maxalign(last.1)));
        assert_eq!(end.last_record, Lsn(last.0));
        assert_eq!(end.records, 401);
        assert_eq!(end.timeline, 1);
    }

    #[test]
    fn wal_end_stops_at_corruption_and_stale_pages() {
        let (seg, blk) = (64 * 1024, 1024);
        let mut w = WalWriter::new(seg, blk, 0);
        w.page_header(0, false, 0);
        w.pos = LONG_PAGE_HEADER;
        let (first, _) = w.record(40, 1, 0);
        let mut ends = Vec::new();
        for _ in 0..30 {
            ends.push(w.record(100, 10, 0));
        }
        // Corrupt one byte of the 20th record's payload: the end is the 19th's end.
        let (s20, _) = ends[19];
        let at = s20 + RECORD_HEADER as u64 + 3;
        let at = if at % blk < SHORT_PAGE_HEADER { at + SHORT_PAGE_HEADER } else { at };
        let seg_no = at / seg;
        w.segs.get_mut(&seg_no).unwrap()[(at % seg) as usize] ^= 0x55;
        let end = scan(&w, first).unwrap();
        assert_eq!(end.end, Lsn(maxalign(ends[18].1)));

        // A zeroed page after the last record: the end is that record's end.
        let mut w = WalWriter::new(seg, blk, 0);
        w.page_header(0, false, 0);
        w.pos = LONG_PAGE_HEADER;
        let (first, _) = w.record(40, 1, 0);
        let (_, e) = w.record(2000, 10, 0);
        assert_eq!(scan(&w, first).unwrap().end, Lsn(maxalign(e)));
    }

    #[test]
    fn wal_switch_continues_in_the_next_segment() {
        let (seg, blk) = (16 * 1024, 1024);
        let mut w = WalWriter::new(seg, blk, 0);
        w.page_header(0, false, 0);
        w.pos = LONG_PAGE_HEADER;
        let (first, _) = w.record(40, 1, 0);
        w.record(0, RM_XLOG_ID, XLOG_SWITCH);
        let (_, e) = w.record(60, 10, 0);
        assert!(e > seg);
        assert_eq!(scan(&w, first).unwrap().end, Lsn(maxalign(e)));
    }

    #[test]
    fn a_missing_next_segment_ends_the_scan() {
        let (seg, blk) = (16 * 1024, 1024);
        let mut w = WalWriter::new(seg, blk, 0);
        w.page_header(0, false, 0);
        w.pos = LONG_PAGE_HEADER;
        let (first, _) = w.record(40, 1, 0);
        let mut last_in_first = 0;
        loop {
            let (s, e) = w.record(700, 10, 0);
            if e > seg {
                let _ = s;
                break;
            }
            last_in_first = e;
        }
        w.segs.remove(&1);
        assert_eq!(
            scan(&w, first).unwrap().end,
            Lsn(maxalign(last_in_first)),
            "the record crossing into the missing segment does not count"
        );
    }
}
