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
//!
//! # Compaction in the background
//! [`Journal::compact_in_background`] takes a copy of the live records and
//! leaves the caller at once: appends go on into a fresh `NAME.journal.next`
//! (created and its directory entry fsynced before any commit lands there)
//! while a thread writes the snapshot as above and then renames
//! `NAME.journal.next` over `NAME.journal`. Rewriting 60,000 leases (10 MB)
//! took the DHCP thread away for tens of milliseconds, long enough for the
//! punt queue to overflow at 20,000 handshakes a second. What a crash leaves:
//! - before the snapshot's rename: old snapshot, journal and `.next`, which
//!   replayed in that order are the state;
//! - after it, before `.next` replaces the journal: new snapshot, old
//!   journal, `.next`: the old journal's records are upserts older than the
//!   snapshot, each key's last one equal to the snapshot's state of it, so
//!   replaying them is harmless (as above), and `.next` follows.
//!
//! [`Journal::open`] replays `.next` after the journal, appends its frames
//! to the journal, fsyncs, and removes it (a crash in between replays a
//! prefix of `.next` twice: harmless, again).

#![forbid(unsafe_code)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

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
    /// Whether `file` is `NAME.journal.next`: a background compaction runs
    /// or failed (then the next compaction is done in place, see [`Journal::compact`]).
    on_next: bool,
    /// The background compaction running, with the snapshot's length when it succeeds.
    background: Option<JoinHandle<Result<u64, JournalError>>>,
    _records: PhantomData<fn(T)>,
}

/// What [`Journal::poll_background`] found.
#[derive(Debug)]
pub enum Background {
    /// None runs.
    Idle,
    /// One runs.
    Running,
    /// One ended: the snapshot holds the live records given it, `.next` is the journal.
    Done,
    /// One failed; the files are as a crash would have left them, and
    /// replay right (see the module doc). The next compaction runs in place.
    Failed(JournalError),
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
        // A background compaction's journal, left by a crash or a failure.
        let next_path = dir.join(format!("{name}.journal.next"));
        let next = read_all(&next_path)?;
        let (more, next_end) = decode::<T>(&next_path, &next)?;
        records.extend(more);
        let mut file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        let torn_bytes = (bytes.len() - end + next.len() - next_end) as u64;
        if end < bytes.len() {
            // Cut the torn tail off so new frames follow the last good one.
            file.set_len(end as u64).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))?;
        }
        if next_path.exists() {
            file.write_all(&next[..next_end]).map_err(io_err(&path))?;
            file.sync_data().map_err(io_err(&path))?;
            fs::remove_file(&next_path).map_err(io_err(&next_path))?;
            sync_dir(dir)?;
        }
        let j = Journal {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            file,
            pending: Vec::new(),
            len: (end + next_end) as u64,
            snapshot_len: snap.len() as u64,
            on_next: false,
            background: None,
            _records: PhantomData,
        };
        Ok((j, Loaded { records, torn_bytes }))
    }

    /// The file appends go to now.
    fn path(&self) -> PathBuf {
        if self.on_next {
            self.next_path()
        } else {
            self.journal_path()
        }
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join(format!("{}.journal", self.name))
    }

    fn next_path(&self) -> PathBuf {
        self.dir.join(format!("{}.journal.next", self.name))
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
    /// atomically (see the module doc), waiting for a background compaction
    /// first. Queued records are committed first.
    pub fn compact<'a>(&mut self, records: impl IntoIterator<Item = &'a T>) -> Result<(), JournalError>
    where
        T: 'a,
    {
        if let Some(h) = self.background.take() {
            // Its outcome does not matter: this one rewrites everything.
            self.finish_background(h);
        }
        self.commit()?;
        let mut buf = Vec::new();
        for r in records {
            frame(&mut buf, r);
        }
        write_snapshot(&self.dir, &self.name, &buf)?;
        let path = self.path();
        self.file.set_len(0).map_err(io_err(&path))?;
        self.file.sync_all().map_err(io_err(&path))?;
        if self.on_next {
            // Empty now, it replaces the journal the snapshot covers (unless
            // a failed background compaction got as far as that rename).
            if path.exists() {
                let journal = self.journal_path();
                fs::rename(&path, &journal).map_err(io_err(&journal))?;
                sync_dir(&self.dir)?;
            }
            self.on_next = false;
        }
        self.len = 0;
        self.snapshot_len = buf.len() as u64;
        Ok(())
    }

    /// Whether a background compaction runs.
    pub fn compacting(&self) -> bool {
        self.background.is_some()
    }

    /// Starts writing `records` (the whole live state) as the snapshot on a
    /// thread of its own, and returns at once; appends and commits go on
    /// meanwhile (module doc, "Compaction in the background"). Falls back to
    /// [`Journal::compact`] in place after a failed background compaction.
    /// Queued records are committed first. Does nothing while one runs.
    pub fn compact_in_background(&mut self, records: Vec<T>) -> Result<(), JournalError>
    where
        T: Send + 'static,
    {
        if self.background.is_some() {
            return Ok(());
        }
        if self.on_next {
            return self.compact(&records);
        }
        self.commit()?;
        let next = self.next_path();
        let file = OpenOptions::new().create(true).append(true).open(&next).map_err(io_err(&next))?;
        // Left by nothing we know of (open merges and removes it), but empty it all the same.
        file.set_len(0).map_err(io_err(&next))?;
        // The new file's name must be durable before a commit there counts.
        sync_dir(&self.dir)?;
        self.file = file;
        self.on_next = true;
        self.len = 0;
        let (dir, name) = (self.dir.clone(), self.name.clone());
        let spawned = std::thread::Builder::new().name("lease-compact".into()).spawn(move || {
            let mut buf = Vec::new();
            for r in &records {
                frame(&mut buf, r);
            }
            drop(records);
            write_snapshot(&dir, &name, &buf)?;
            let (next, journal) = (dir.join(format!("{name}.journal.next")), dir.join(format!("{name}.journal")));
            fs::rename(&next, &journal).map_err(io_err(&journal))?;
            sync_dir(&dir)?;
            Ok(buf.len() as u64)
        });
        match spawned {
            Ok(h) => self.background = Some(h),
            // No thread: the journal stays `.next`, which replays right; the
            // next compaction runs in place.
            Err(e) => return Err(io_err(&self.dir)(e)),
        }
        Ok(())
    }

    /// Collects a background compaction that ended (without waiting).
    pub fn poll_background(&mut self) -> Background {
        match &self.background {
            None => Background::Idle,
            Some(h) if !h.is_finished() => Background::Running,
            Some(_) => {
                let h = self.background.take().expect("checked above");
                self.finish_background(h)
            }
        }
    }

    /// Waits for a background compaction, if one runs, and takes its outcome.
    pub fn wait_background(&mut self) -> Background {
        match self.background.take() {
            None => Background::Idle,
            Some(h) => self.finish_background(h),
        }
    }

    /// Waits for a background compaction and takes its outcome.
    fn finish_background(&mut self, h: JoinHandle<Result<u64, JournalError>>) -> Background {
        match h.join() {
            Ok(Ok(snapshot_len)) => {
                self.on_next = false;
                self.snapshot_len = snapshot_len;
                Background::Done
            }
            Ok(Err(e)) => Background::Failed(e),
            Err(_) => Background::Failed(JournalError::Io {
                path: self.dir.clone(),
                source: io::Error::other("the compaction thread panicked"),
            }),
        }
    }
}

impl<T> Drop for Journal<T> {
    /// Waits for a background compaction, so that whoever opens the journal
    /// next finds its files settled.
    fn drop(&mut self) {
        if let Some(h) = self.background.take() {
            let _ = h.join();
        }
    }
}

/// Writes `buf` as `NAME.snapshot` atomically: a temporary file, fsynced,
/// renamed into place, the directory fsynced.
fn write_snapshot(dir: &Path, name: &str, buf: &[u8]) -> Result<(), JournalError> {
    let tmp = dir.join(format!("{name}.snapshot.tmp"));
    let snap = dir.join(format!("{name}.snapshot"));
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(buf).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &snap).map_err(io_err(&snap))?;
    sync_dir(dir)
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

    #[test]
    fn a_background_compaction_keeps_the_state_and_what_was_committed_meanwhile() {
        let d = tmpdir("bg");
        let (mut j, _) = Journal::<R>::open(&d, "t").unwrap();
        for i in 0..100 {
            j.append(&r(i % 10));
        }
        j.commit().unwrap();
        let live: Vec<R> = (0..10).map(r).collect();
        j.compact_in_background(live.clone()).unwrap();
        // Whether or not the thread has finished, these land after the snapshot.
        for i in 40..45 {
            j.append(&r(i));
            j.commit().unwrap();
        }
        // A second request while one runs does nothing.
        j.compact_in_background(vec![r(99)]).unwrap();
        while matches!(j.poll_background(), Background::Running) {
            std::thread::yield_now();
        }
        assert!(!j.compacting());
        j.append(&r(45));
        j.commit().unwrap();
        assert!(!d.join("t.journal.next").exists(), "the new journal replaced the old");
        assert_eq!(j.len(), fs::metadata(d.join("t.journal")).unwrap().len());
        drop(j);
        let l = load(&d).unwrap();
        let mut want = live;
        want.extend((40..46).map(r));
        assert_eq!(l.records, want);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dropping_the_journal_waits_for_its_background_compaction() {
        let d = tmpdir("bgdrop");
        let (mut j, _) = Journal::<R>::open(&d, "t").unwrap();
        j.append(&r(1));
        j.commit().unwrap();
        j.compact_in_background(vec![r(1)]).unwrap();
        j.append(&r(2));
        j.commit().unwrap();
        drop(j);
        assert!(!d.join("t.journal.next").exists());
        assert!(!d.join("t.snapshot.tmp").exists());
        assert_eq!(load(&d).unwrap().records, vec![r(1), r(2)]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compacting_in_place_waits_for_the_background_one_and_wins() {
        let d = tmpdir("bgplace");
        let (mut j, _) = Journal::<R>::open(&d, "t").unwrap();
        j.append(&r(1));
        j.commit().unwrap();
        j.compact_in_background(vec![r(1)]).unwrap();
        j.append(&r(2));
        j.compact(&[r(2)]).unwrap();
        assert!(j.is_empty() && !j.compacting());
        j.append(&r(3));
        j.commit().unwrap();
        drop(j);
        assert!(!d.join("t.journal.next").exists());
        assert_eq!(load(&d).unwrap().records, vec![r(2), r(3)]);
        fs::remove_dir_all(&d).unwrap();
    }

    /// The files a crash can leave mid-compaction in the background, at
    /// every step (module doc): each opens to the records in replay order,
    /// `.next` (torn tail included) is folded into the journal, and
    /// appending goes on.
    #[test]
    fn a_crash_during_a_background_compaction_replays_every_file_in_order() {
        let frames = |recs: &[R]| {
            let mut b = Vec::new();
            for x in recs {
                frame(&mut b, x);
            }
            b
        };
        let old_snap = frames(&[r(1)]);
        let journal = frames(&[r(2), r(3)]);
        let new_snap = frames(&[r(1), r(2), r(3)]);
        let mut next = frames(&[r(4), r(5)]);
        let torn = 5;
        next.extend_from_slice(&frames(&[r(6)])[..torn]);
        // (snapshot, whether the snapshot is the new one)
        for (snap, new) in [(&old_snap, false), (&new_snap, true)] {
            let d = tmpdir(if new { "bgcrash-new" } else { "bgcrash-old" });
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("t.snapshot"), snap).unwrap();
            fs::write(d.join("t.journal"), &journal).unwrap();
            fs::write(d.join("t.journal.next"), &next).unwrap();
            if new {
                fs::write(d.join("t.snapshot.tmp"), b"half a snapshot").unwrap();
            }
            let (mut j, l) = Journal::<R>::open(&d, "t").unwrap();
            let mut want: Vec<R> = if new { vec![r(1), r(2), r(3)] } else { vec![r(1)] };
            want.extend([r(2), r(3), r(4), r(5)]);
            assert_eq!(l.records, want, "new snapshot: {new}");
            assert_eq!(l.torn_bytes, torn as u64);
            assert!(!d.join("t.journal.next").exists());
            j.append(&r(7));
            j.commit().unwrap();
            drop(j);
            want.push(r(7));
            let again = load(&d).unwrap();
            assert_eq!(again.records, want);
            assert_eq!(again.torn_bytes, 0);
            fs::remove_dir_all(&d).unwrap();
        }
    }
}
