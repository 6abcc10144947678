//! A durable, append-only journal of records with group commit, compacted
//! into a snapshot atomically. The lease store uses it so that an ACK leaves
//! only after its lease is on disk, at the cost of one fsync per batch of
//! leases rather than one per lease.
//!
//! # Files (in the state directory)
//! - `NAME.snapshot`: every live record at the last compaction.
//! - `NAME.journal`: records appended since.
//!
//! Both hold frames `[len: u32 LE][crc32 of payload: u32 LE][payload: JSON]`.
//! Replaying the snapshot and then the journal, in order, gives the state;
//! records are whole states (upserts), so replaying one twice is harmless.
//!
//! # Crash safety
//! - [`Journal::commit`] writes the pending frames and `fdatasync`s the file
//!   before returning: a record is durable when `commit` returns.
//! - A crash while writing leaves at most a torn tail: a partial header, a
//!   partial payload, or a frame whose checksum does not match *at the end of
//!   the file*. That tail was never committed (never acknowledged), so it is
//!   skipped, reported in [`Loaded::torn_bytes`], and cut off before new frames
//!   are appended. A bad frame followed by more data, or a frame whose
//!   checksum matches but whose payload does not parse, is corruption: an
//!   error naming the file and the offset. Nothing is dropped silently.
//! - [`Journal::compact`] writes `NAME.snapshot.tmp`, fsyncs it, renames it
//!   over `NAME.snapshot`, fsyncs the directory, then empties the journal. A
//!   crash after the rename but before the truncation replays the old journal
//!   over the new snapshot: harmless, since records are upserts.

#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

const HEADER: usize = 8;
/// Largest payload accepted when reading; a longer length field is corruption.
const MAX_RECORD: u32 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "{path} is corrupt at byte offset {offset}: {what}. The records before that offset are intact. \
         Move the file aside to start without the records after it (clients will ask again), or restore it from a backup"
    )]
    Corrupt { path: PathBuf, offset: u64, what: String },
}

/// What [`Journal::open`] found.
#[derive(Debug)]
pub struct Loaded<T> {
    /// Snapshot records, then journal records, in order.
    pub records: Vec<T>,
    /// Bytes of a torn tail that were skipped (a write cut short by a crash).
    pub torn_bytes: u64,
}

pub struct Journal<T> {
    dir: PathBuf,
    name: String,
    file: File,
    /// Frames appended but not yet committed.
    pending: Vec<u8>,
    /// Bytes in the journal file (committed).
    len: u64,
    /// Bytes in the snapshot file (the live records at the last compaction).
    snapshot_len: u64,
    _records: PhantomData<fn(T)>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.to_path_buf(), source }
}

/// Encodes one frame onto `out`.
fn frame<T: Serialize>(out: &mut Vec<u8>, rec: &T) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    serde_json::to_writer(&mut *out, rec).expect("records serialize to JSON");
    let len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the frames of `bytes`. Returns the records and the offset where
/// the valid frames end (the start of a torn tail, or `bytes.len()`).
fn decode<T: DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<(Vec<T>, usize), JournalError> {
    let mut out = Vec::new();
    let mut at = 0;
    let corrupt =
        |offset: usize, what: String| JournalError::Corrupt { path: path.to_path_buf(), offset: offset as u64, what };
    while at < bytes.len() {
        let rest = &bytes[at..];
        if rest.len() < HEADER {
            return Ok((out, at)); // torn header
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len > MAX_RECORD {
            // A torn write leaves zeros or a prefix, not a huge length.
            return Err(corrupt(at, format!("record length {len} is larger than any record")));
        }
        let end = HEADER + len as usize;
        if rest.len() < end {
            return Ok((out, at)); // torn payload
        }
        let payload = &rest[HEADER..end];
        if crc32fast::hash(payload) != crc {
            if rest.len() == end {
                return Ok((out, at)); // the last frame, cut short while written
            }
            return Err(corrupt(at, "checksum mismatch in a record that is not the last one".into()));
        }
        let rec = serde_json::from_slice(payload).map_err(|e| corrupt(at, format!("record does not parse: {e}")))?;
        out.push(rec);
        at += end;
    }
    Ok((out, at))
}

fn read_all(path: &Path) -> Result<Vec<u8>, JournalError> {
    match File::open(path) {
        Ok(mut f) => {
            let mut v = Vec::new();
            f.read_to_end(&mut v).map_err(io_err(path))?;
            Ok(v)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

impl<T: Serialize + DeserializeOwned> Journal<T> {
    /// Opens (creating if needed) journal `name` in `dir` and loads its records.
    pub fn open(dir: &Path, name: &str) -> Result<(Journal<T>, Loaded<T>), JournalError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let snap_path = dir.join(format!("{name}.snapshot"));
        let snap = read_all(&snap_path)?;
        let (mut records, snap_end) = decode::<T>(&snap_path, &snap)?;
        if snap_end != snap.len() {
            // The snapshot is renamed into place only after an fsync: it is never torn.
            return Err(JournalError::Corrupt {
                path: snap_path,
                offset: snap_end as u64,
                what: "the snapshot ends in an incomplete record".into(),
            });
        }
        let path = dir.join(format!("{name}.journal"));
        let bytes = read_all(&path)?;
        let (more, end) = decode::<T>(&path, &bytes)?;
        records.extend(more);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        let torn_bytes = (bytes.len() - end) as u64;
        if torn_bytes > 0 {
            // Cut the torn tail off so new frames follow the last good one.
            file.set_len(end as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        let j = Journal {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            file,
            pending: Vec::new(),
            len: end as u64,
            snapshot_len: snap.len() as u64,
            _records: PhantomData,
        };
        Ok((j, Loaded { records, torn_bytes }))
    }

    fn path(&self) -> PathBuf {
        self.dir.join(format!("{}.journal", self.name))
    }

    /// Queues a record; durable only after the next [`Journal::commit`].
    pub fn append(&mut self, rec: &T) {
        frame(&mut self.pending, rec);
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Writes every queued record and waits until they are on disk (one
    /// `fdatasync` for all of them: group commit).
    pub fn commit(&mut self) -> Result<(), JournalError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let path = self.path();
        self.file.write_all(&self.pending).map_err(io_err(&path))?;
        self.file.sync_data().map_err(io_err(&path))?;
        self.len += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Bytes in the journal since the last compaction.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes in the snapshot: the live records at the last compaction.
    pub fn snapshot_len(&self) -> u64 {
        self.snapshot_len
    }

    /// Replaces snapshot and journal with `records` (the whole live state),
    /// atomically (see the module doc). Pending records must be committed first.
    pub fn compact<'a>(&mut self, records: impl IntoIterator<Item = &'a T>) -> Result<(), JournalError>
    where
        T: 'a,
    {
        self.commit()?;
        let mut buf = Vec::new();
        for r in records {
            frame(&mut buf, r);
        }
        let tmp = self.dir.join(format!("{}.snapshot.tmp", self.name));
        let snap = self.dir.join(format!("{}.snapshot", self.name));
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(&buf).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        fs::rename(&tmp, &snap).map_err(io_err(&snap))?;
        sync_dir(&self.dir)?;
        let path = self.path();
        self.file.set_len(0).map_err(io_err(&path))?;
        self.file.sync_all().map_err(io_err(&path))?;
        self.len = 0;
        self.snapshot_len = buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct R {
        n: u32,
        s: String,
    }

    fn r(n: u32) -> R {
        R { n, s: format!("record {n}") }
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tapyard-journal-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn load(d: &Path) -> Result<Loaded<R>, JournalError> {
        Journal::<R>::open(d, "t").map(|(_, l)| l)
    }

    #[test]
    fn commit_then_reopen_returns_every_record_in_order() {
        let d = tmpdir("order");
        let (mut j, l) = Journal::<R>::open(&d, "t").unwrap();
        assert!(l.records.is_empty());
        for i in 0..10 {
            j.append(&r(i));
        }
        j.commit().unwrap();
        j.append(&r(10));
        j.commit().unwrap();
        j.append(&r(99)); // never committed: lost, as a crash would lose it
        drop(j);
        let l = load(&d).unwrap();
        assert_eq!(l.records, (0..=10).map(r).collect::<Vec<_>>());
        assert_eq!(l.torn_bytes, 0);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_tail_is_skipped_at_every_cut_point_and_appending_continues() {
        let d = tmpdir("torn");
        let (mut j, _) = Journal::<R>::open(&d, "t").unwrap();
        for i in 0..3 {
            j.append(&r(i));
        }
        j.commit().unwrap();
        drop(j);
        let path = d.join("t.journal");
        let full = fs::read(&path).unwrap();
        let mut f = Vec::new();
        frame(&mut f, &r(0));
        let one = f.len();
        // Cut the file anywhere inside the last two frames (a crash mid-write).
        for cut in one + 1..full.len() {
            fs::write(&path, &full[..cut]).unwrap();
            let (mut j, l) = Journal::<R>::open(&d, "t").unwrap();
            assert!(l.records.len() < 3 && !l.records.is_empty(), "cut {cut}");
            assert!(l.torn_bytes > 0 || cut == 2 * one, "cut {cut}");
            j.append(&r(7));
            j.commit().unwrap();
            drop(j);
            let again = load(&d).unwrap();
            assert_eq!(again.records.last(), Some(&r(7)), "cut {cut}");
            assert_eq!(again.torn_bytes, 0);
        }
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_damaged_record_before_the_end_is_an_error_with_the_offset() {
        let d = tmpdir("corrupt");
        let (mut j, _) = Journal::<R>::open(&d, "t").unwrap();
        for i in 0..3 {
            j.append(&r(i));
        }
        j.commit().unwrap();
        drop(j);
        let path = d.join("t.journal");
        let mut bytes = fs::read(&path).unwrap();
        let mut f = Vec::new();
        frame(&mut f, &r(0));
        let second = f.len();
        bytes[second + HEADER + 3] ^= 0xff; // flip a payload byte of record 1
        fs::write(&path, &bytes).unwrap();
        let e = load(&d).unwrap_err().to_string();
        assert!(
            e.contains("t.journal") && e.contains(&format!("offset {second}")) && e.contains("Move the file aside"),
            "{e}"
        );
        // Nothing was changed by the failed open.
        assert_eq!(fs::read(&path).unwrap(), bytes);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compaction_keeps_the_state_and_empties_the_journal() {
        let d = tmpdir("compact");
        let (mut j, _) = Journal::<R>::open(&d, "t").unwrap();
        for i in 0..100 {
            j.append(&r(i % 10));
        }
        j.commit().unwrap();
        let live: Vec<R> = (0..10).map(r).collect();
        j.compact(&live).unwrap();
        assert!(j.is_empty());
        j.append(&r(42));
        j.commit().unwrap();
        drop(j);
        let l = load(&d).unwrap();
        let mut want = live.clone();
        want.push(r(42));
        assert_eq!(l.records, want);
        assert!(!d.join("t.snapshot.tmp").exists());
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_crash_between_rename_and_truncate_only_replays_upserts_again() {
        let d = tmpdir("crash");
        let (mut j, _) = Journal::<R>::open(&d, "t").unwrap();
        j.append(&r(1));
        j.commit().unwrap();
        let journal_before = fs::read(d.join("t.journal")).unwrap();
        j.compact(&[r(1)]).unwrap();
        drop(j);
        // Simulate the crash: the old journal is still there beside the new snapshot.
        fs::write(d.join("t.journal"), &journal_before).unwrap();
        let l = load(&d).unwrap();
        assert_eq!(l.records, vec![r(1), r(1)]);
        fs::remove_dir_all(&d).unwrap();
    }
}
