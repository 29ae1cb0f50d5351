//! Durability: a write-ahead log and a checkpoint, in `--data-dir`.
//!
//! # Files
//!
//! - `wal.log`: header `MDSWAL01` + generation (u64 LE), then records
//!   `[u32 len][u64 xxh3(payload)][payload]`, the payload an rkyv [`WalRecord`]. A write is
//!   appended and `fdatasync`ed before it is acknowledged.
//! - `state.db`: header `MDSSTATE` + the WAL generation it covers (u64 LE), then one record per
//!   table (same framing), the payload a table snapshot.
//!
//! # Recovery
//!
//! Load `state.db` (any damage there stops the server with the offset and reason: it holds
//! acknowledged data that cannot be silently dropped), then replay `wal.log` if its generation is
//! newer than the one the checkpoint covers. A record that is incomplete or fails its checksum
//! ends the log: it is a write that was never acknowledged (the crash came before its sync), and
//! the file is truncated there.
//!
//! # Compaction
//!
//! When the log outgrows its bound, every table is written to `state.db.tmp`, synced, renamed
//! over `state.db` (directory synced), and a fresh `wal.log` of the next generation replaces the
//! old one the same way. A crash between the two renames leaves a log whose generation the
//! checkpoint already covers, which recovery ignores: disk use stays bounded and nothing is
//! replayed twice.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use memds_proto::{TableMap, snapshot};
use rkyv::rancor;
use rkyv::util::AlignedVec;

const WAL_MAGIC: &[u8; 8] = b"MDSWAL01";
const STATE_MAGIC: &[u8; 8] = b"MDSSTATE";
const HEADER_LEN: usize = 16;
const RECORD_HEADER_LEN: usize = 12;
const WAL_FILE: &str = "wal.log";
const STATE_FILE: &str = "state.db";

pub use record::WalRecord;

/// rkyv derives resolver types whose fields carry no docs; the allowance stays in here.
#[allow(missing_docs)]
mod record {
    use memds_proto::wire::PartitionUpdate;

    /// One logged write.
    #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub enum WalRecord {
        /// A whole table, as a snapshot.
        Put {
            /// Snapshot bytes.
            snapshot: Vec<u8>,
        },
        /// A partial update.
        Update(PartitionUpdate),
        /// A table removal.
        Drop {
            /// The table.
            table: String,
        },
    }
}

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DurableError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The checkpoint is damaged.
    #[error("{path} is damaged at byte {offset}: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
}

/// What recovery found: the checkpoint's tables, then the log's records to replay in order.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Tables of the checkpoint.
    pub tables: Vec<TableMap>,
    /// Log records after the checkpoint.
    pub records: Vec<WalRecord>,
    /// Bytes cut from the end of the log (an unacknowledged, torn write).
    pub truncated_bytes: u64,
}

/// The open log of a data directory.
#[derive(Debug)]
pub struct Durable {
    dir: PathBuf,
    wal: File,
    generation: u64,
    wal_bytes: u64,
    state_bytes: u64,
    compact_min_bytes: u64,
}

impl Durable {
    /// Opens (creating if needed) the data directory and recovers its contents. The log is
    /// compacted once its size passes both `compact_min_bytes` and the checkpoint's size.
    pub fn open(dir: &Path, compact_min_bytes: u64) -> Result<(Self, Recovered), DurableError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        for leftover in ["state.db.tmp", "wal.log.tmp"] {
            let p = dir.join(leftover);
            if p.exists() {
                fs::remove_file(&p).map_err(io_err("removing", &p))?;
            }
        }
        let OnDisk {
            recovered,
            covers,
            state_bytes,
            wal: on_disk_wal,
        } = read_on_disk(dir)?;
        let wal_path = dir.join(WAL_FILE);
        let (generation, wal_bytes, replayable) = match on_disk_wal {
            Some((generation, valid)) => (generation, valid, true),
            None => (covers + 1, HEADER_LEN as u64, false),
        };
        let wal = if replayable {
            let f = OpenOptions::new()
                .write(true)
                .open(&wal_path)
                .map_err(io_err("opening", &wal_path))?;
            if recovered.truncated_bytes > 0 {
                f.set_len(wal_bytes)
                    .map_err(io_err("truncating", &wal_path))?;
                f.sync_all().map_err(io_err("syncing", &wal_path))?;
            }
            f
        } else {
            // No log, a log the checkpoint already covers, or a log whose header never made it
            // to disk: start a fresh one.
            create_wal(dir, generation)?
        };
        let mut durable = Self {
            dir: dir.to_owned(),
            wal,
            generation,
            wal_bytes,
            state_bytes,
            compact_min_bytes,
        };
        durable.seek_end()?;
        Ok((durable, recovered))
    }

    /// Reads back what the data directory holds (the checkpoint's tables and the log's records
    /// after it), changing nothing: the source a damaged resident table is rebuilt from.
    pub fn read_back(&self) -> Result<Recovered, DurableError> {
        read_on_disk(&self.dir).map(|d| d.recovered)
    }

    /// Appends records and syncs them to disk. On failure the log is cut back to where it was,
    /// so a write that was not acknowledged is not replayed either.
    pub fn append(&mut self, records: &[WalRecord]) -> Result<(), DurableError> {
        let mut buf = Vec::new();
        for r in records {
            let payload = rkyv::to_bytes::<rancor::Error>(r)
                .expect("serializing a log record into memory cannot fail");
            frame(&payload, &mut buf);
        }
        let path = self.dir.join(WAL_FILE);
        let result = self.wal.write_all(&buf).and_then(|()| self.wal.sync_data());
        if let Err(source) = result {
            let _ = self.wal.set_len(self.wal_bytes);
            let _ = self.wal.sync_all();
            let _ = self.seek_end();
            return Err(DurableError::Io {
                op: "appending to",
                path,
                source,
            });
        }
        self.wal_bytes += buf.len() as u64;
        Ok(())
    }

    /// Whether the log has outgrown its bound.
    pub fn should_compact(&self) -> bool {
        self.wal_bytes > self.compact_min_bytes.max(self.state_bytes)
    }

    /// Current log size in bytes.
    pub fn wal_bytes(&self) -> u64 {
        self.wal_bytes
    }

    /// Writes a checkpoint of `tables` and starts a new log generation.
    pub fn compact<'a>(
        &mut self,
        tables: impl Iterator<Item = &'a memds_proto::CompactTable>,
    ) -> Result<(), DurableError> {
        let tmp = self.dir.join("state.db.tmp");
        let path = self.dir.join(STATE_FILE);
        let mut buf = Vec::new();
        buf.extend_from_slice(STATE_MAGIC);
        buf.extend_from_slice(&self.generation.to_le_bytes());
        for t in tables {
            frame(&snapshot::encode(&t.to_map()), &mut buf);
        }
        write_synced(&tmp, &buf)?;
        fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
        sync_dir(&self.dir)?;
        self.state_bytes = buf.len() as u64;
        self.generation += 1;
        self.wal = create_wal(&self.dir, self.generation)?;
        self.wal_bytes = HEADER_LEN as u64;
        self.seek_end()
    }

    fn seek_end(&mut self) -> Result<(), DurableError> {
        use std::io::{Seek, SeekFrom};
        self.wal
            .seek(SeekFrom::Start(self.wal_bytes))
            .map(|_| ())
            .map_err(io_err("seeking", &self.dir.join(WAL_FILE)))
    }
}

/// What the data directory holds.
struct OnDisk {
    recovered: Recovered,
    /// The log generation the checkpoint covers (0: no checkpoint).
    covers: u64,
    state_bytes: u64,
    /// The log's generation and valid length, when it holds records the checkpoint lacks.
    wal: Option<(u64, u64)>,
}

/// Reads the checkpoint and the log (the log's valid prefix, if its generation is newer than
/// the checkpoint's), changing nothing.
fn read_on_disk(dir: &Path) -> Result<OnDisk, DurableError> {
    let mut recovered = Recovered::default();
    let state_path = dir.join(STATE_FILE);
    let (covers, state_bytes) = if state_path.exists() {
        let bytes = fs::read(&state_path).map_err(io_err("reading", &state_path))?;
        let covers = read_state(&state_path, &bytes, &mut recovered.tables)?;
        (covers, bytes.len() as u64)
    } else {
        (0, 0)
    };
    let wal_path = dir.join(WAL_FILE);
    let mut wal = None;
    if wal_path.exists() {
        let bytes = fs::read(&wal_path).map_err(io_err("reading", &wal_path))?;
        if let Some(g) = parse_header(&bytes, WAL_MAGIC).filter(|&g| g > covers) {
            let valid = read_wal(&bytes, &mut recovered.records);
            recovered.truncated_bytes = (bytes.len() - valid) as u64;
            wal = Some((g, valid as u64));
        }
    }
    Ok(OnDisk {
        recovered,
        covers,
        state_bytes,
        wal,
    })
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("records are below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The next record at `at`: its payload and the offset after it, or `None` if what is there is
/// incomplete or fails its checksum.
fn next_record(bytes: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let header = bytes.get(at..at + RECORD_HEADER_LEN)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let sum = u64::from_le_bytes(header[4..12].try_into().ok()?);
    let payload = bytes.get(at + RECORD_HEADER_LEN..at + RECORD_HEADER_LEN + len)?;
    (xxhash_rust::xxh3::xxh3_64(payload) == sum).then_some((payload, at + RECORD_HEADER_LEN + len))
}

fn parse_header(bytes: &[u8], magic: &[u8; 8]) -> Option<u64> {
    let header = bytes.get(..HEADER_LEN)?;
    (&header[..8] == magic)
        .then(|| u64::from_le_bytes(header[8..16].try_into().unwrap_or_default()))
}

/// Reads log records up to the first invalid one; answers the length of the valid prefix.
fn read_wal(bytes: &[u8], out: &mut Vec<WalRecord>) -> usize {
    let mut at = HEADER_LEN;
    let mut aligned = AlignedVec::<16>::new();
    while let Some((payload, next)) = next_record(bytes, at) {
        aligned.clear();
        aligned.extend_from_slice(payload);
        match rkyv::from_bytes::<WalRecord, rancor::Error>(&aligned) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        at = next;
    }
    at
}

fn read_state(path: &Path, bytes: &[u8], out: &mut Vec<TableMap>) -> Result<u64, DurableError> {
    let damaged = |offset: usize, reason: String| DurableError::Damaged {
        path: path.to_owned(),
        offset: offset as u64,
        reason,
    };
    let covers = parse_header(bytes, STATE_MAGIC).ok_or_else(|| damaged(0, "bad header".into()))?;
    let mut at = HEADER_LEN;
    while at < bytes.len() {
        let (payload, next) = next_record(bytes, at)
            .ok_or_else(|| damaged(at, "record incomplete or checksum mismatch".into()))?;
        let map = snapshot::decode(payload, u64::MAX).map_err(|e| damaged(at, e.to_string()))?;
        out.push(map);
        at = next;
    }
    Ok(covers)
}

fn create_wal(dir: &Path, generation: u64) -> Result<File, DurableError> {
    let tmp = dir.join("wal.log.tmp");
    let path = dir.join(WAL_FILE);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(WAL_MAGIC);
    header.extend_from_slice(&generation.to_le_bytes());
    write_synced(&tmp, &header)?;
    fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
    sync_dir(dir)?;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(io_err("opening", &path))
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), DurableError> {
    let mut f = File::create(path).map_err(io_err("creating", path))?;
    f.write_all(bytes).map_err(io_err("writing", path))?;
    f.sync_all().map_err(io_err("syncing", path))
}

fn sync_dir(dir: &Path) -> Result<(), DurableError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DurableError {
    let path = path.to_owned();
    move |source| DurableError::Io { op, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memds_proto::NodeInterner;
    use memds_proto::synth::{self, SynthConfig};

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("memds-durable-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn table(index: usize) -> TableMap {
        synth::generate_table(
            &SynthConfig {
                partitions: 200,
                tables: 4,
                ..SynthConfig::default()
            },
            index,
        )
    }

    fn put(m: &TableMap) -> WalRecord {
        WalRecord::Put {
            snapshot: snapshot::encode(m),
        }
    }

    #[test]
    fn appended_records_come_back_and_a_torn_tail_is_cut() {
        let dir = tmpdir("torn");
        let (mut d, rec) = Durable::open(&dir, 1 << 20).expect("open");
        assert!(rec.tables.is_empty() && rec.records.is_empty());
        d.append(&[put(&table(0))]).expect("append");
        d.append(&[put(&table(1)), WalRecord::Drop { table: "x".into() }])
            .expect("append");
        let good_len = d.wal_bytes();
        drop(d);
        // A torn write: half a record at the end.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join(WAL_FILE))
            .expect("open");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).expect("write");
        drop(f);
        let (d, rec) = Durable::open(&dir, 1 << 20).expect("reopen");
        assert_eq!(rec.records.len(), 3);
        assert_eq!(rec.records[0], put(&table(0)));
        assert_eq!(rec.truncated_bytes, 7);
        assert_eq!(d.wal_bytes(), good_len);
        assert_eq!(
            fs::metadata(dir.join(WAL_FILE)).expect("stat").len(),
            good_len
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn compaction_bounds_the_log_and_keeps_every_table() {
        let dir = tmpdir("compact");
        let (mut d, _) = Durable::open(&dir, 1).expect("open");
        let mut interner = NodeInterner::default();
        let maps: Vec<TableMap> = (0..3).map(table).collect();
        for m in &maps {
            d.append(&[put(m)]).expect("append");
        }
        assert!(d.should_compact());
        let tables: Vec<memds_proto::CompactTable> = maps
            .iter()
            .map(|m| memds_proto::CompactTable::new(m, &mut interner))
            .collect();
        d.compact(tables.iter()).expect("compact");
        assert_eq!(d.wal_bytes(), HEADER_LEN as u64);
        d.append(&[WalRecord::Drop {
            table: "table-0001".into(),
        }])
        .expect("append");
        drop(d);
        let (_, rec) = Durable::open(&dir, 1).expect("reopen");
        assert_eq!(rec.tables, maps);
        assert_eq!(
            rec.records,
            vec![WalRecord::Drop {
                table: "table-0001".into()
            }]
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_log_the_checkpoint_covers_is_not_replayed() {
        let dir = tmpdir("covered");
        let (mut d, _) = Durable::open(&dir, 1).expect("open");
        d.append(&[put(&table(0))]).expect("append");
        let old_log = fs::read(dir.join(WAL_FILE)).expect("read");
        let mut interner = NodeInterner::default();
        let t = memds_proto::CompactTable::new(&table(0), &mut interner);
        d.compact(std::iter::once(&t)).expect("compact");
        drop(d);
        // Simulate a crash between the checkpoint rename and the new log's rename.
        fs::write(dir.join(WAL_FILE), &old_log).expect("restore old log");
        let (_, rec) = Durable::open(&dir, 1).expect("reopen");
        assert_eq!(rec.tables.len(), 1);
        assert!(rec.records.is_empty(), "the covered log was replayed");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_damaged_checkpoint_stops_recovery_with_its_offset() {
        let dir = tmpdir("damaged");
        let (mut d, _) = Durable::open(&dir, 1).expect("open");
        let mut interner = NodeInterner::default();
        let t = memds_proto::CompactTable::new(&table(0), &mut interner);
        d.compact(std::iter::once(&t)).expect("compact");
        drop(d);
        let path = dir.join(STATE_FILE);
        let mut bytes = fs::read(&path).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0xFF;
        fs::write(&path, &bytes).expect("write");
        match Durable::open(&dir, 1) {
            Err(DurableError::Damaged { offset, .. }) => assert_eq!(offset, HEADER_LEN as u64),
            other => panic!("expected damage, got {other:?}"),
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
