//! Durability: write-ahead logs and a checkpoint, in `--data-dir`.
//!
//! # Files
//!
//! - `wal-<generation>.log` (the generation in 20 decimal digits): header `MDSWAL02` +
//!   generation (u64 LE), then one frame per appended batch. A batch is written and
//!   `fdatasync`ed before any of its writes is acknowledged. A clean shutdown appends a frame
//!   holding [`WalRecord::Closed`].
//! - `state.db`: header `MDSSTAT2` + the log generation it covers (u64 LE), then one frame per
//!   table (a [`WalRecord::Put`]) and per tombstone (a [`WalRecord::Drop`]): a checkpoint is the
//!   log compacted, read by the same code.
//! - A frame: payload length (u64 LE), XXH3-64 of the payload, XXH3-64 (seeded) of those 16
//!   bytes, the payload (an rkyv `Vec<WalRecord>`), zero padding to a multiple of 8. The header's
//!   own check lets a reader test any 8-byte-aligned offset for a frame cheaply, which is how it
//!   tells a torn tail from damage in the middle.

//! # Format versions
//!
//! The magic names the format: `MDSWAL` and two digits for a log ([`LOG_FORMAT`], 2), `MDSSTAT`
//! and one for a checkpoint ([`CHECKPOINT_FORMAT`], 2); release 0.1.0 wrote both. The records
//! are this module's own types ([`WalRecord`], [`LogBatch`], [`LogUpdate`], [`LogRange`],
//! [`LogNode`], [`LogPartition`]), never the wire's or the JSON's, converted from and to the
//! in-memory [`BatchEdit`]; a change to their bytes is a new format version, read beside the
//! old. Before anything else, recovery reads every header: one naming a format outside
//! `[LOG_FORMAT_OLDEST, LOG_FORMAT]` (or the checkpoint's range) stops it with
//! [`DurableError::Format`], in every [`RecoveryMode`], with nothing cut or set aside.
//!
//! # Recovery (the rules ARCHITECTURE.md states as invariants)
//!
//! Read `state.db` (any damage stops the server), then every log whose generation is above the
//! one the checkpoint covers, in order; they must follow each other without a gap, starting at
//! the next generation after the checkpoint's, and a log after generation 1 needs the checkpoint
//! it follows. In the last log written to (the last one, or one that only empty logs follow: see
//! compaction below), a frame that is incomplete or fails a checksum, with no valid frame
//! anywhere after it, is a torn write that was never acknowledged (the crash came before its
//! sync): it is cut, and the cut synced before anything is appended. Anything else (a bad frame
//! followed by a valid one, a bad frame in a log that a later log holding a frame follows, a bad
//! header, a frame whose checksums pass but whose records do not decode) is damage to
//! acknowledged data: [`Durable::open`] refuses it with [`DurableError::Corrupt`],
//! naming the file, the offset, what was found and how to proceed. In
//! [`RecoveryMode::Salvage`] the damaged files are linked aside into `damaged-<unix time>/`
//! (never deleted), recovery keeps what precedes the damage, lists every write it found after
//! it as lost, and the caller writes a fresh checkpoint at once.
//!
//! # Compaction
//!
//! When the log outgrows its bound the writer checkpoints every table, in this order: (1) create
//! the next log, empty, (2) write and sync `state.db.tmp`, covering the current log, (3) rename
//! it over `state.db` and sync the directory, (4) switch appends to the next log, (5) delete the
//! logs the checkpoint covers. A crash or an error at any step leaves files from which recovery
//! restores every acknowledged write: before (3) the old checkpoint and every log are there
//! (the new log is empty); after (3) the new checkpoint covers every write logged so far and the
//! new log is already there to follow it. A failure before (3) keeps appending to the current
//! log, which recovery reads.
//!
//! Such a failure leaves the next log behind, empty, and writes go on in the current log before
//! it; appends move to the next log only once a compaction succeeds (a retry recreates it, empty
//! again). So a crash can tear the tail of a log that an empty log follows. Recovery treats it as
//! the last log's tail: an empty log holds no write, so a bad frame with nothing after it but
//! empty logs still has no acknowledged write after it anywhere, which is all that makes a bad
//! frame a torn write rather than damage. Removing the empty log when the compaction fails would
//! not be enough: a crash before the removal, or a failed removal, leaves it all the same (and a
//! crash in the middle of compacting a poisoned log does so before any failure is seen). The
//! empty logs are never ones a checkpoint covers: recovery reads only the logs after the
//! checkpoint's generation.
//!
//! An append that fails is cut back from the log, so the failed batch is neither acknowledged
//! nor replayed. If even the cut fails, the log's tail is unknown: the log is poisoned, every
//! later append is refused ([`DurableError::Poisoned`]) until a compaction succeeds and starts a
//! fresh log.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use memds_proto::model::{BatchEdit, NodeSpec, PartitionSpec, RangeEdit};
use rkyv::rancor;
use rkyv::util::AlignedVec;

/// The log format this build writes. A log's header names its format: `MDSWAL` and two digits.
pub const LOG_FORMAT: u32 = 2;
/// The oldest log format this build reads (every one from it to [`LOG_FORMAT`]).
pub const LOG_FORMAT_OLDEST: u32 = 2;
/// The checkpoint format this build writes: `MDSSTAT` and one digit.
pub const CHECKPOINT_FORMAT: u32 = 2;
/// The oldest checkpoint format this build reads.
pub const CHECKPOINT_FORMAT_OLDEST: u32 = 2;
const WAL_MAGIC: &[u8; 8] = b"MDSWAL02";
const STATE_MAGIC: &[u8; 8] = b"MDSSTAT2";
const WAL_PREFIX: &[u8] = b"MDSWAL";
const STATE_PREFIX: &[u8] = b"MDSSTAT";
const HEADER_LEN: usize = 16;
const FRAME_HEADER_LEN: usize = 24;
/// Seed of the frame header's own check, so a run of zeros or a copy of a payload checksum is
/// not mistaken for a header.
const FRAME_SEED: u64 = 0x4d44_5346_5241_4d45;
const STATE_FILE: &str = "state.db";
const STATE_TMP: &str = "state.db.tmp";

pub use record::{LogBatch, LogNode, LogPartition, LogRange, LogUpdate, WalRecord};

/// The records of log format 2 and checkpoint format 2, the storage boundary's own types: no
/// wire or JSON type appears in them, so a protocol change never changes the log. Nothing here
/// changes a field's type or order; a change is a new format version, with this one kept for
/// reading. rkyv derives resolver types whose fields carry no docs; the allowance stays in here.
#[allow(missing_docs)]
mod record {
    /// One logged write (or, in a checkpoint, one table or tombstone). Variants are only ever
    /// added at the end: the archived tag is the declaration order, and logs outlive releases.
    #[derive(Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub enum WalRecord {
        /// A whole table, as a snapshot.
        Put {
            /// Snapshot bytes.
            snapshot: Vec<u8>,
        },
        /// A partial update of one range (written by release 0.1.0 for `update-partitions`;
        /// read, no longer written: updates are logged as [`WalRecord::Batch`]).
        Update(LogUpdate),
        /// A table removal, or a tombstone: the name is dropped at this version, and only a
        /// higher version may bring it back.
        Drop {
            /// The table.
            table: String,
            /// The version dropped.
            version: u64,
        },
        /// The server shut down cleanly here: every frame before this one was complete, so
        /// damage to any of them cannot pass for a torn tail.
        Closed,
        /// Many partial updates of one table, applied atomically at one version: one record
        /// however many ranges it replaces.
        Batch(LogBatch),
    }

    /// A partial update of one range, as logged.
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct LogUpdate {
        pub table: String,
        pub base_version: u64,
        pub version: u64,
        pub end_inclusive: u64,
        pub nodes: Vec<LogNode>,
        pub partitions: Vec<LogPartition>,
    }

    /// An atomic update of many ranges, as logged.
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct LogBatch {
        pub table: String,
        pub base_version: u64,
        pub version: u64,
        pub nodes: Vec<LogNode>,
        pub ranges: Vec<LogRange>,
    }

    /// One range of a [`LogBatch`].
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct LogRange {
        pub end_inclusive: u64,
        pub partitions: Vec<LogPartition>,
    }

    /// A storage node, as logged.
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct LogNode {
        pub id: u32,
        pub addr: String,
        pub az: String,
    }

    /// A partition, as logged.
    #[derive(Clone, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
    pub struct LogPartition {
        pub id: u64,
        pub start: u64,
        pub epoch: u64,
        pub replicas: Vec<u32>,
        pub leader: u64,
    }
}

impl From<LogNode> for NodeSpec {
    fn from(n: LogNode) -> Self {
        NodeSpec {
            id: n.id,
            addr: n.addr,
            az: n.az,
        }
    }
}

impl From<NodeSpec> for LogNode {
    fn from(n: NodeSpec) -> Self {
        LogNode {
            id: n.id,
            addr: n.addr,
            az: n.az,
        }
    }
}

impl From<LogPartition> for PartitionSpec {
    fn from(p: LogPartition) -> Self {
        PartitionSpec {
            id: p.id,
            start: p.start,
            epoch: p.epoch,
            replicas: p.replicas,
            leader: p.leader,
        }
    }
}

impl From<PartitionSpec> for LogPartition {
    fn from(p: PartitionSpec) -> Self {
        LogPartition {
            id: p.id,
            start: p.start,
            epoch: p.epoch,
            replicas: p.replicas,
            leader: p.leader,
        }
    }
}

impl From<BatchEdit> for LogBatch {
    fn from(b: BatchEdit) -> Self {
        LogBatch {
            table: b.table,
            base_version: b.base_version,
            version: b.version,
            nodes: b.nodes.into_iter().map(LogNode::from).collect(),
            ranges: b
                .ranges
                .into_iter()
                .map(|r| LogRange {
                    end_inclusive: r.end_inclusive,
                    partitions: r.partitions.into_iter().map(LogPartition::from).collect(),
                })
                .collect(),
        }
    }
}

impl From<LogBatch> for BatchEdit {
    fn from(b: LogBatch) -> Self {
        BatchEdit {
            table: b.table,
            base_version: b.base_version,
            version: b.version,
            nodes: b.nodes.into_iter().map(NodeSpec::from).collect(),
            ranges: b
                .ranges
                .into_iter()
                .map(|r| RangeEdit {
                    end_inclusive: r.end_inclusive,
                    partitions: r.partitions.into_iter().map(PartitionSpec::from).collect(),
                })
                .collect(),
        }
    }
}

impl From<LogUpdate> for BatchEdit {
    fn from(u: LogUpdate) -> Self {
        BatchEdit {
            table: u.table,
            base_version: u.base_version,
            version: u.version,
            nodes: u.nodes.into_iter().map(NodeSpec::from).collect(),
            ranges: vec![RangeEdit {
                end_inclusive: u.end_inclusive,
                partitions: u.partitions.into_iter().map(PartitionSpec::from).collect(),
            }],
        }
    }
}

/// How recovery treats damage to the data directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// Cut a torn tail; refuse to start on any other damage.
    #[default]
    Strict,
    /// Set damaged files aside, start from what precedes the damage, and report each write lost.
    Salvage,
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
    /// A file holding acknowledged writes is damaged.
    #[error(
        "{path} is damaged at byte {offset}: {found}. It holds acknowledged writes, so the server \
         does not start without them: restore the data directory from a backup, or start with \
         --wal-recovery salvage to set the damaged files aside (into the data directory's \
         damaged-* folder) and start from what precedes the damage; the writes after it are lost \
         on this server and are listed in its log"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Where the damage starts.
        offset: u64,
        /// What was found there.
        found: String,
    },
    /// The files do not form one history: a log or the checkpoint a log follows is missing.
    #[error(
        "{dir}: {found}. Acknowledged writes may be missing, so the server does not start: \
         restore the missing file, or start with --wal-recovery salvage to keep what is there"
    )]
    Inconsistent {
        /// The data directory.
        dir: PathBuf,
        /// What is missing or out of order.
        found: String,
    },
    /// A file is in a format version this build does not read: written by a newer release,
    /// or older than any it reads. Nothing is set aside, even in salvage: the file is whole.
    #[error(
        "{path} is in {kind} format {found}, and this build ({release}) reads {kind} formats \
         {oldest} to {newest}. {advice}"
    )]
    Format {
        /// The file.
        path: PathBuf,
        /// `log` or `checkpoint`.
        kind: &'static str,
        /// The version its header names.
        found: u32,
        /// The oldest version this build reads.
        oldest: u32,
        /// The newest version this build reads (the one it writes).
        newest: u32,
        /// This build's release.
        release: &'static str,
        /// What to do.
        advice: &'static str,
    },
    /// An earlier failure left the log's end unknown; writes wait for a compaction.
    #[error(
        "the write-ahead log is unusable after a failed write ({reason}); writes are refused until a compaction starts a new log"
    )]
    Poisoned {
        /// The failure that poisoned it.
        reason: String,
    },
}

/// Where a recovered record was read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub path: PathBuf,
    /// The offset of the frame holding the record.
    pub offset: u64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.path.display(), self.offset)
    }
}

/// What recovery found: the records to replay in order (the checkpoint's, then the logs').
#[derive(Debug, Default)]
pub struct Recovered {
    /// Each record and where it was read.
    pub records: Vec<(Origin, WalRecord)>,
    /// A torn, unacknowledged write cut from the end of the last log written to: where, and how
    /// many bytes.
    pub truncated: Option<(Origin, u64)>,
    /// Salvage only: what was set aside, and the writes it held that are not restored.
    pub salvage: Option<Salvaged>,
}

/// What a salvaging recovery set aside.
#[derive(Debug, Default)]
pub struct Salvaged {
    /// The folder the damaged files were linked into.
    pub folder: PathBuf,
    /// Each damage found.
    pub damage: Vec<String>,
    /// The writes found after the damage, which are not restored (`table version V`, or an
    /// offset where nothing more could be read).
    pub lost: Vec<String>,
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
    poisoned: Option<String>,
}

impl Durable {
    /// Opens (creating if needed) the data directory and recovers its contents. The log is
    /// compacted once its size passes both `compact_min_bytes` and the checkpoint's size. After
    /// a salvage ([`Recovered::salvage`]) the caller must checkpoint the recovered tables with
    /// [`Durable::compact`] before taking writes.
    pub fn open(
        dir: &Path,
        compact_min_bytes: u64,
        mode: RecoveryMode,
    ) -> Result<(Self, Recovered), DurableError> {
        fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        remove_leftovers(dir)?;
        let history = read_history(dir, mode)?;
        let mut recovered = history.recovered;
        // The cut is on disk before anything is appended, to this log or to an empty one after
        // it: once a later log holds a frame, a torn tail here would be damage.
        if let Some(torn) = history.torn {
            let path = log_path(dir, torn.generation);
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err("opening", &path))?;
            f.set_len(torn.valid).map_err(io_err("truncating", &path))?;
            f.sync_all().map_err(io_err("syncing", &path))?;
            recovered.truncated = Some((
                Origin {
                    path,
                    offset: torn.valid,
                },
                torn.cut,
            ));
        }
        let (generation, wal, wal_bytes) = match history.last_log {
            Some(last) => {
                let path = log_path(dir, last.generation);
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err("opening", &path))?;
                (last.generation, f, last.valid)
            }
            None => {
                let generation = history.covers + 1;
                (generation, create_log(dir, generation)?, HEADER_LEN as u64)
            }
        };
        let mut durable = Self {
            dir: dir.to_owned(),
            wal,
            generation,
            wal_bytes,
            state_bytes: history.state_bytes,
            compact_min_bytes,
            poisoned: None,
        };
        durable.seek_end()?;
        Ok((durable, recovered))
    }

    /// Reads back what the data directory holds (every acknowledged write, in order), changing
    /// nothing: the source a damaged resident table is rebuilt from. Damage is an error here
    /// whatever the recovery mode: a repair must not install a guess.
    pub fn read_back(&self) -> Result<Recovered, DurableError> {
        read_history(&self.dir, RecoveryMode::Strict).map(|h| h.recovered)
    }

    /// Appends a batch of records as one frame and syncs it. On failure the log is cut back to
    /// where it was, so a batch that was not acknowledged is not replayed either; if the cut
    /// fails too, the log is poisoned until the next successful [`Durable::compact`].
    pub fn append(&mut self, records: Vec<WalRecord>) -> Result<(), DurableError> {
        if let Some(reason) = &self.poisoned {
            return Err(DurableError::Poisoned {
                reason: reason.clone(),
            });
        }
        let mut buf = Vec::new();
        write_frame(&serialize(records), &mut buf);
        let path = log_path(&self.dir, self.generation);
        let result = fail_io("wal-append").and_then(|()| {
            self.wal.write_all(&buf)?;
            fail_io("wal-sync")?;
            self.wal.sync_data()
        });
        if let Err(source) = result {
            let cut = fail_io("wal-cut-back")
                .and_then(|()| self.wal.set_len(self.wal_bytes))
                .and_then(|()| self.wal.sync_all())
                .map_err(io_err("cutting back", &path))
                .and_then(|()| self.seek_end());
            if let Err(e) = cut {
                tracing::error!(error = %e, "could not cut a failed write from the log; writes are refused until a compaction starts a new log");
                self.poisoned = Some(format!("{source}; then {e}"));
            }
            return Err(DurableError::Io {
                op: "appending to",
                path,
                source,
            });
        }
        self.wal_bytes += buf.len() as u64;
        Ok(())
    }

    /// Marks a clean shutdown at the end of the log (see [`WalRecord::Closed`]).
    pub fn close(&mut self) -> Result<(), DurableError> {
        self.append(vec![WalRecord::Closed])
    }

    /// Why writes are refused, when the log is poisoned.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    /// Whether the log has outgrown its bound, or is poisoned and needs a new one.
    pub fn should_compact(&self) -> bool {
        self.poisoned.is_some() || self.wal_bytes > self.compact_min_bytes.max(self.state_bytes)
    }

    /// Current log size in bytes.
    pub fn wal_bytes(&self) -> u64 {
        self.wal_bytes
    }

    /// The current log's generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Writes a checkpoint of `records` (a [`WalRecord::Put`] per table and a
    /// [`WalRecord::Drop`] per tombstone: the whole acknowledged state) and starts a new log
    /// generation, in the order the module docs give. On error, appends go on to a log that
    /// recovery reads.
    pub fn compact(
        &mut self,
        records: impl Iterator<Item = WalRecord>,
    ) -> Result<(), DurableError> {
        let next = self.generation + 1;
        // (1) The next log, empty. A failure leaves at most an empty log after the current
        // one, which recovery reads as nothing.
        let next_wal = create_log(&self.dir, next)?;
        // (2) The checkpoint, under a temporary name.
        let tmp = self.dir.join(STATE_TMP);
        let mut buf = Vec::new();
        buf.extend_from_slice(STATE_MAGIC);
        buf.extend_from_slice(&self.generation.to_le_bytes());
        for r in records {
            write_frame(&serialize(vec![r]), &mut buf);
        }
        if let Err(e) = fail_io("compact-write-state")
            .map_err(io_err("writing", &tmp))
            .and_then(|()| write_synced(&tmp, &buf))
        {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // (3) The checkpoint replaces the old one. Once the rename is done, it covers the
        // current log, so appends must move to the next log whatever happens after.
        let path = self.dir.join(STATE_FILE);
        if let Err(source) = fail_io("compact-rename-state").and_then(|()| fs::rename(&tmp, &path))
        {
            let _ = fs::remove_file(&tmp);
            return Err(DurableError::Io {
                op: "renaming",
                path: tmp,
                source,
            });
        }
        let synced = fail_io("compact-sync-dir")
            .map_err(io_err("syncing", &self.dir))
            .and_then(|()| sync_dir(&self.dir));
        // (4) Switch.
        let old = self.generation;
        self.wal = next_wal;
        self.generation = next;
        self.wal_bytes = HEADER_LEN as u64;
        self.state_bytes = buf.len() as u64;
        self.poisoned = None;
        self.seek_end()?;
        // (5) The covered logs go, once the checkpoint that covers them is surely on disk.
        synced?;
        for g in list_logs(&self.dir)?.into_iter().filter(|&g| g <= old) {
            let p = log_path(&self.dir, g);
            if let Err(e) = fail_io("compact-remove-old").and_then(|()| fs::remove_file(&p)) {
                // Harmless: recovery skips logs the checkpoint covers, and the next start
                // removes them.
                tracing::warn!(path = %p.display(), error = %e, "removing a log the checkpoint covers");
            }
        }
        Ok(())
    }

    fn seek_end(&mut self) -> Result<(), DurableError> {
        use std::io::{Seek, SeekFrom};
        let path = log_path(&self.dir, self.generation);
        self.wal
            .seek(SeekFrom::Start(self.wal_bytes))
            .map(|_| ())
            .map_err(io_err("seeking", &path))
    }
}

/// The path of the log of a generation.
pub fn log_path(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("wal-{generation:020}.log"))
}

/// The generations of the logs in `dir`, in order.
fn list_logs(dir: &Path) -> Result<Vec<u64>, DurableError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(g) = name
            .strip_prefix("wal-")
            .and_then(|r| r.strip_suffix(".log"))
            .filter(|d| d.len() == 20 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
        {
            out.push(g);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Removes the temporary files an interrupted compaction leaves. Something else under their
/// names (a directory) is left for the operator: compaction will fail and say so, while writes
/// go on to the current log.
fn remove_leftovers(dir: &Path) -> Result<(), DurableError> {
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let leftover =
            name == STATE_TMP || (name.starts_with("wal-") && name.ends_with(".log.tmp"));
        if !leftover {
            continue;
        }
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::remove_file(&path).map_err(io_err("removing", &path))?;
        } else {
            tracing::warn!(path = %path.display(), "a leftover name is not a file; compactions will fail until it is removed");
        }
    }
    Ok(())
}

/// Everything read from the directory.
struct History {
    recovered: Recovered,
    /// The generation the checkpoint covers (0: none).
    covers: u64,
    state_bytes: u64,
    /// The log appends go on in.
    last_log: Option<LastLog>,
    /// A torn tail to cut: in the last log, or in the last one holding frames when only empty
    /// logs follow it.
    torn: Option<TornTail>,
}

struct LastLog {
    generation: u64,
    /// Length of the valid prefix.
    valid: u64,
}

struct TornTail {
    generation: u64,
    /// Length of the valid prefix, where the cut goes.
    valid: u64,
    /// Bytes cut.
    cut: u64,
}

/// How a file's frames read.
struct Scan {
    records: Vec<(Origin, WalRecord)>,
    /// End of the last good frame.
    valid: usize,
    /// The first bad frame: its offset, what is wrong, and whether a good frame follows it.
    bad: Option<Bad>,
}

struct Bad {
    offset: usize,
    found: String,
    /// Offset of a valid frame after the bad one.
    followed_at: Option<usize>,
}

/// Reads the checkpoint and the logs after it, changing nothing on disk (salvage links damaged
/// files aside, which changes no file recovery reads).
fn read_history(dir: &Path, mode: RecoveryMode) -> Result<History, DurableError> {
    let mut recovered = Recovered::default();
    let mut salvaged = Salvaged::default();
    let mut set_aside: Vec<PathBuf> = Vec::new();
    let state_path = dir.join(STATE_FILE);
    let (covers, state_bytes) = match fs::read(&state_path) {
        Ok(bytes) => {
            check_format(
                &state_path,
                &bytes,
                "checkpoint",
                STATE_PREFIX,
                (CHECKPOINT_FORMAT_OLDEST, CHECKPOINT_FORMAT),
            )?;
            let (covers, damaged) = read_checkpoint(
                &state_path,
                &bytes,
                mode,
                &mut recovered.records,
                &mut salvaged,
            )?;
            if damaged {
                set_aside.push(state_path.clone());
            }
            (covers, bytes.len() as u64)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => (0, 0),
        Err(e) => return Err(io_err("reading", &state_path)(e)),
    };

    let logs: Vec<u64> = list_logs(dir)?
        .into_iter()
        .filter(|&g| g > covers)
        .collect();
    // A log in a format this build does not read stops recovery before anything is judged or
    // set aside: it is a whole file of another release, not damage.
    for &g in &logs {
        let path = log_path(dir, g);
        let mut head = [0u8; 8];
        let read = File::open(&path).and_then(|mut f| {
            use std::io::Read as _;
            f.read(&mut head)
        });
        let n = read.map_err(io_err("reading", &path))?;
        check_format(
            &path,
            &head[..n],
            "log",
            WAL_PREFIX,
            (LOG_FORMAT_OLDEST, LOG_FORMAT),
        )?;
    }
    let inconsistent = |found: String| DurableError::Inconsistent {
        dir: dir.to_owned(),
        found,
    };
    let problem = match logs.first() {
        None if covers > 0 => Some(format!(
            "{STATE_FILE} covers log generation {covers} but {} is missing",
            log_path(dir, covers + 1).display()
        )),
        Some(&first) if first != covers + 1 => Some(if covers == 0 {
            format!(
                "the oldest log is generation {first}, which follows a checkpoint, but there is no {STATE_FILE}"
            )
        } else {
            format!("{STATE_FILE} covers log generation {covers} but the next log is {first}")
        }),
        _ => logs
            .windows(2)
            .find(|w| w[1] != w[0] + 1)
            .map(|w| format!("log generation {} follows {}", w[1], w[0])),
    };
    let mut usable = logs.clone();
    if let Some(found) = problem {
        match mode {
            RecoveryMode::Strict => return Err(inconsistent(found)),
            RecoveryMode::Salvage => {
                salvaged.damage.push(found);
                // Keep the run of logs that follows the checkpoint; the rest are set aside.
                let run = logs
                    .iter()
                    .enumerate()
                    .take_while(|&(i, &g)| g == covers + 1 + i as u64)
                    .count();
                for &g in &logs[run..] {
                    let p = log_path(dir, g);
                    note_lost_file(&p, &mut salvaged);
                    set_aside.push(p);
                }
                usable.truncate(run);
            }
        }
    }

    // Which logs hold anything past their header: a log that only empty ones follow is the last
    // one written to (see the module docs on compaction).
    let mut holds_frames = Vec::with_capacity(usable.len());
    for &g in &usable {
        let path = log_path(dir, g);
        let len = fs::metadata(&path).map_err(io_err("reading", &path))?.len();
        holds_frames.push(len != HEADER_LEN as u64);
    }
    let mut last_log = None;
    let mut torn = None;
    for (i, &g) in usable.iter().enumerate() {
        let path = log_path(dir, g);
        let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
        let last_written = !holds_frames[i + 1..].contains(&true);
        let read = read_log(&path, &bytes, g, last_written);
        recovered.records.extend(read.records);
        match judge_log(&path, &bytes, read.verdict, mode, &mut salvaged)? {
            LogOutcome::Kept(None) => {}
            LogOutcome::Kept(Some(cut)) => {
                torn = Some(TornTail {
                    generation: g,
                    valid: read.valid.max(HEADER_LEN) as u64,
                    cut,
                })
            }
            LogOutcome::Damaged => {
                set_aside.push(path.clone());
                for &later in &usable[i + 1..] {
                    let p = log_path(dir, later);
                    note_lost_file(&p, &mut salvaged);
                    set_aside.push(p);
                }
                break;
            }
        }
        last_log = Some(LastLog {
            generation: g,
            valid: read.valid.max(HEADER_LEN) as u64,
        });
    }

    if !set_aside.is_empty() {
        salvaged.folder = link_aside(dir, &set_aside)?;
        recovered.salvage = Some(salvaged);
        // The damaged files stay where they are until the caller's checkpoint covers what was
        // kept; appends go to a fresh log after every generation seen. So a torn tail in a kept
        // log is not cut either: that checkpoint covers it too.
        let next = logs.last().copied().unwrap_or(covers).max(covers) + 1;
        return Ok(History {
            recovered,
            covers: next - 1,
            state_bytes: 0,
            last_log: None,
            torn: None,
        });
    }
    Ok(History {
        recovered,
        covers,
        state_bytes,
        last_log,
        torn,
    })
}

/// Reads a checkpoint's bytes, appending its records to `records`: the log generation it
/// covers, and whether it is damaged (and so to be set aside). Damage is an error in
/// [`RecoveryMode::Strict`]; in [`RecoveryMode::Salvage`] it is noted in `salvaged` and what
/// precedes it is kept.
fn read_checkpoint(
    path: &Path,
    bytes: &[u8],
    mode: RecoveryMode,
    records: &mut Vec<(Origin, WalRecord)>,
    salvaged: &mut Salvaged,
) -> Result<(u64, bool), DurableError> {
    let Some(covers) = parse_header(bytes, STATE_MAGIC) else {
        let e = DurableError::Corrupt {
            path: path.to_owned(),
            offset: 0,
            found: "the file does not start with a checkpoint header".into(),
        };
        return match mode {
            RecoveryMode::Strict => Err(e),
            RecoveryMode::Salvage => {
                // Without its header nothing says which logs the checkpoint covers: keep none
                // of it, and replay every log there is.
                salvaged.damage.push(e.to_string());
                salvaged.lost.push(format!(
                    "every table of {} (its header is damaged)",
                    path.display()
                ));
                Ok((0, true))
            }
        };
    };
    let scan = scan_frames(path, bytes);
    records.extend(scan.records);
    let Some(bad) = scan.bad else {
        return Ok((covers, false));
    };
    let e = DurableError::Corrupt {
        path: path.to_owned(),
        offset: bad.offset as u64,
        found: bad.found,
    };
    match mode {
        RecoveryMode::Strict => Err(e),
        RecoveryMode::Salvage => {
            salvaged.damage.push(e.to_string());
            salvaged.lost.push(format!(
                "the tables of {} from byte {} on",
                path.display(),
                bad.offset
            ));
            Ok((covers, true))
        }
    }
}

/// One log's bytes, read as recovery reads them.
struct LogRead {
    records: Vec<(Origin, WalRecord)>,
    /// End of the last good frame.
    valid: usize,
    verdict: Verdict,
}

/// What follows a log's valid prefix.
enum Verdict {
    /// Nothing: the log ends with its last good frame.
    Clean,
    /// A torn write that was never acknowledged, this many bytes long: it is cut.
    Torn(u64),
    /// Damage to acknowledged data.
    Damaged {
        /// Where it starts.
        offset: usize,
        /// What was found there.
        found: String,
        /// Where valid frames resume after it (their writes are lost), if they do.
        lost_from: Option<usize>,
    },
}

/// Reads the log of `generation` (`last_written`: no later log holds a frame) and judges what
/// follows its valid prefix: a bad frame with no valid frame after it, at the end of the last
/// log written to, is a torn tail; anything else is damage (see the module docs).
fn read_log(path: &Path, bytes: &[u8], generation: u64, last_written: bool) -> LogRead {
    let header_ok = parse_header(bytes, WAL_MAGIC) == Some(generation);
    let scan = if header_ok {
        scan_frames(path, bytes)
    } else {
        Scan {
            records: Vec::new(),
            valid: 0,
            bad: Some(Bad {
                offset: 0,
                found: format!(
                    "the file does not start with the header of log generation {generation}"
                ),
                followed_at: Some(0),
            }),
        }
    };
    let verdict = match scan.bad {
        None => Verdict::Clean,
        Some(bad) if last_written && header_ok && bad.followed_at.is_none() => {
            Verdict::Torn((bytes.len() - bad.offset) as u64)
        }
        Some(bad) => {
            let found = match bad.followed_at {
                Some(at) if header_ok => {
                    format!("{}, with a valid frame after it at byte {at}", bad.found)
                }
                _ if !last_written => format!(
                    "{}, in a log that a later log holding writes follows",
                    bad.found
                ),
                _ => bad.found,
            };
            Verdict::Damaged {
                offset: bad.offset,
                found,
                lost_from: bad.followed_at.filter(|_| header_ok),
            }
        }
    };
    LogRead {
        records: scan.records,
        valid: scan.valid,
        verdict,
    }
}

/// How recovery goes on after reading one log.
enum LogOutcome {
    /// Its records are kept, with the torn tail cut (bytes), if any.
    Kept(Option<u64>),
    /// Salvage found damage: it and the later logs are set aside.
    Damaged,
}

/// What recovery in `mode` does with a log read as `verdict`: damage stops a strict recovery
/// with its file and offset; salvage notes it and the writes lost after it.
fn judge_log(
    path: &Path,
    bytes: &[u8],
    verdict: Verdict,
    mode: RecoveryMode,
    salvaged: &mut Salvaged,
) -> Result<LogOutcome, DurableError> {
    match verdict {
        Verdict::Clean => Ok(LogOutcome::Kept(None)),
        Verdict::Torn(cut) => Ok(LogOutcome::Kept(Some(cut))),
        Verdict::Damaged {
            offset,
            found,
            lost_from,
        } => {
            let e = DurableError::Corrupt {
                path: path.to_owned(),
                offset: offset as u64,
                found,
            };
            match mode {
                RecoveryMode::Strict => Err(e),
                RecoveryMode::Salvage => {
                    salvaged.damage.push(e.to_string());
                    if let Some(at) = lost_from {
                        note_lost_frames(path, &bytes[at..], at, salvaged);
                    }
                    Ok(LogOutcome::Damaged)
                }
            }
        }
    }
}

/// Reads frames from the start of `bytes` (after the 16-byte header) up to the end or the first
/// bad frame, which it describes.
fn scan_frames(path: &Path, bytes: &[u8]) -> Scan {
    let mut scan = Scan {
        records: Vec::new(),
        valid: HEADER_LEN.min(bytes.len()),
        bad: None,
    };
    let mut at = HEADER_LEN;
    let mut aligned = AlignedVec::<16>::new();
    while at < bytes.len() {
        let (payload, next) = match frame_at(bytes, at) {
            Ok(f) => f,
            Err(found) => {
                scan.bad = Some(Bad {
                    offset: at,
                    found: found.into(),
                    followed_at: valid_frame_after(bytes, at),
                });
                return scan;
            }
        };
        aligned.clear();
        aligned.extend_from_slice(payload);
        match rkyv::from_bytes::<Vec<WalRecord>, rancor::Error>(&aligned) {
            Ok(records) => {
                let origin = Origin {
                    path: path.to_owned(),
                    offset: at as u64,
                };
                scan.records.extend(
                    records
                        .into_iter()
                        .filter(|r| !matches!(r, WalRecord::Closed))
                        .map(|r| (origin.clone(), r)),
                );
            }
            Err(e) => {
                // The checksums passed, so these are the bytes that were written: not a torn
                // write but records this code cannot read.
                scan.bad = Some(Bad {
                    offset: at,
                    found: format!(
                        "a frame whose checksums pass holds records that do not decode ({e})"
                    ),
                    followed_at: Some(at),
                });
                return scan;
            }
        }
        at = next;
        scan.valid = at;
    }
    scan
}

/// The frame at `at`: its payload and the offset after it (padding included), or what is wrong.
fn frame_at(bytes: &[u8], at: usize) -> Result<(&[u8], usize), &'static str> {
    let header = bytes
        .get(at..at + FRAME_HEADER_LEN)
        .ok_or("an incomplete frame header")?;
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&header[i * 8..i * 8 + 8]);
        u64::from_le_bytes(w)
    };
    if xxhash_rust::xxh3::xxh3_64_with_seed(&header[..16], FRAME_SEED) != word(2) {
        return Err("a frame header that fails its checksum");
    }
    let start = at + FRAME_HEADER_LEN;
    let end = usize::try_from(word(0))
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|&end| end <= bytes.len())
        .ok_or("a frame that runs past the end of the file")?;
    let payload = &bytes[start..end];
    if xxhash_rust::xxh3::xxh3_64(payload) != word(1) {
        return Err("a frame whose payload fails its checksum");
    }
    let next = end.next_multiple_of(8);
    match bytes.get(end..next) {
        None => return Err("a frame whose padding is incomplete"),
        Some(pad) if pad.iter().any(|&b| b != 0) => {
            return Err("a frame whose padding is not zero");
        }
        Some(_) => {}
    }
    Ok((payload, next))
}

/// The offset of the first valid frame after `bad`, trying every 8-byte-aligned offset (the
/// header's own check makes each try cheap).
fn valid_frame_after(bytes: &[u8], bad: usize) -> Option<usize> {
    let mut at = (bad + 1).next_multiple_of(8);
    while at + FRAME_HEADER_LEN <= bytes.len() {
        if frame_at(bytes, at).is_ok() {
            return Some(at);
        }
        at += 8;
    }
    None
}

/// Lists the writes in the valid frames of `bytes` (which starts at offset `base` of `path`) as
/// lost.
fn note_lost_frames(path: &Path, bytes: &[u8], base: usize, salvaged: &mut Salvaged) {
    let mut at = 0;
    let mut aligned = AlignedVec::<16>::new();
    while at + FRAME_HEADER_LEN <= bytes.len() {
        let Ok((payload, next)) = frame_at(bytes, at) else {
            at += 8;
            continue;
        };
        aligned.clear();
        aligned.extend_from_slice(payload);
        match rkyv::from_bytes::<Vec<WalRecord>, rancor::Error>(&aligned) {
            Ok(records) => salvaged
                .lost
                .extend(records.iter().filter_map(describe_record)),
            Err(_) => salvaged.lost.push(format!(
                "an unreadable frame in {} at byte {}",
                path.display(),
                base + at
            )),
        }
        at = next;
    }
}

fn note_lost_file(path: &Path, salvaged: &mut Salvaged) {
    match fs::read(path) {
        Ok(bytes) if bytes.len() >= HEADER_LEN => {
            note_lost_frames(path, &bytes[HEADER_LEN..], HEADER_LEN, salvaged)
        }
        _ => salvaged
            .lost
            .push(format!("whatever {} held (unreadable)", path.display())),
    }
}

/// "table T version V" for a logged write.
fn describe_record(r: &WalRecord) -> Option<String> {
    match r {
        WalRecord::Put { snapshot } => Some(
            match memds_proto::snapshot::decode(
                snapshot,
                memds_proto::snapshot::DEFAULT_MAX_ARCHIVE_BYTES,
            ) {
                Ok(map) => format!(
                    "put of table {} version {}",
                    map.name(),
                    map.version().get()
                ),
                Err(e) => format!("a put whose snapshot does not decode ({e})"),
            },
        ),
        WalRecord::Update(u) => Some(format!(
            "update of table {} to version {}",
            u.table, u.version
        )),
        WalRecord::Batch(u) => Some(format!(
            "batch update of table {} to version {} ({} ranges)",
            u.table,
            u.version,
            u.ranges.len()
        )),
        WalRecord::Drop { table, version } => {
            Some(format!("drop of table {table} at version {version}"))
        }
        WalRecord::Closed => None,
    }
}

/// Hard-links (or, across file systems, copies) the damaged files into a new folder of the data
/// directory, so nothing is lost however recovery proceeds.
fn link_aside(dir: &Path, files: &[PathBuf]) -> Result<PathBuf, DurableError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut folder = dir.join(format!("damaged-{stamp}"));
    let mut n = 1;
    while folder.exists() {
        folder = dir.join(format!("damaged-{stamp}-{n}"));
        n += 1;
    }
    fs::create_dir(&folder).map_err(io_err("creating", &folder))?;
    for f in files {
        let Some(name) = f.file_name() else { continue };
        let to = folder.join(name);
        if fs::hard_link(f, &to).is_err() {
            fs::copy(f, &to).map_err(io_err("copying aside", f))?;
        }
    }
    sync_dir(&folder)?;
    sync_dir(dir)?;
    Ok(folder)
}

fn serialize(records: Vec<WalRecord>) -> AlignedVec {
    rkyv::to_bytes::<rancor::Error>(&records)
        .expect("serializing log records into memory cannot fail")
}

fn write_frame(payload: &[u8], out: &mut Vec<u8>) {
    let mut header = [0u8; FRAME_HEADER_LEN];
    header[..8].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    header[8..16].copy_from_slice(&xxhash_rust::xxh3::xxh3_64(payload).to_le_bytes());
    let check = xxhash_rust::xxh3::xxh3_64_with_seed(&header[..16], FRAME_SEED);
    header[16..].copy_from_slice(&check.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(payload);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// Refuses a file whose header names a format version outside `[oldest, newest]`: a newer
/// release's file (roll this server forward, or start it on an empty data directory to pull
/// every table from its peers), or one older than any this build reads. A header that names no
/// version at all is left to the frame checks, which call it damage.
fn check_format(
    path: &Path,
    bytes: &[u8],
    kind: &'static str,
    prefix: &[u8],
    (oldest, newest): (u32, u32),
) -> Result<(), DurableError> {
    let Some(rest) = bytes.strip_prefix(prefix) else {
        return Ok(());
    };
    let digits = &rest[..rest.len().min(8 - prefix.len())];
    let Some(found) = std::str::from_utf8(digits)
        .ok()
        .filter(|d| d.len() == 8 - prefix.len() && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u32>().ok())
    else {
        return Ok(());
    };
    if (oldest..=newest).contains(&found) {
        return Ok(());
    }
    Err(DurableError::Format {
        path: path.to_owned(),
        kind,
        found,
        oldest,
        newest,
        release: memds_proto::versions::RELEASE,
        advice: if found > newest {
            "A newer release wrote it: run that release (or a later one) on this data \
             directory, or start this server on an empty data directory to pull every table \
             from its peers (see README, Upgrading). Nothing was changed."
        } else {
            "It predates the formats this build reads: start a release that reads it, or start \
             on an empty data directory to pull every table from the peers. Nothing was changed."
        },
    })
}

fn parse_header(bytes: &[u8], magic: &[u8; 8]) -> Option<u64> {
    let header = bytes.get(..HEADER_LEN)?;
    let mut g = [0u8; 8];
    g.copy_from_slice(&header[8..16]);
    (&header[..8] == magic).then_some(u64::from_le_bytes(g))
}

/// Creates an empty log of `generation` atomically (a temporary file, synced, renamed, the
/// directory synced) and opens it for appending.
fn create_log(dir: &Path, generation: u64) -> Result<File, DurableError> {
    let path = log_path(dir, generation);
    let tmp = path.with_extension("log.tmp");
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(WAL_MAGIC);
    header.extend_from_slice(&generation.to_le_bytes());
    let created = fail_io("create-log")
        .map_err(io_err("creating", &tmp))
        .and_then(|()| write_synced(&tmp, &header))
        .and_then(|()| fs::rename(&tmp, &path).map_err(io_err("renaming", &tmp)))
        .and_then(|()| sync_dir(dir));
    if let Err(e) = created {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
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

/// A failpoint that fails a file operation: inert unless a test configures it (`fail::cfg(name,
/// "return")`), and compiled to nothing outside test builds.
fn fail_io(name: &str) -> io::Result<()> {
    fail::fail_point!(name, |_| Err(io::Error::other(format!(
        "failpoint {name} injected an error"
    ))));
    let _ = name;
    Ok(())
}

/// Recovery's reading of file bytes, without the file system, for the fuzz targets of
/// [`crate::fuzzing`]: the same functions [`Durable::open`] runs on each file it reads.
#[doc(hidden)]
pub mod fuzz_support {
    use std::path::Path;

    use super::{
        DurableError, HEADER_LEN, LogOutcome, RecoveryMode, Salvaged, WAL_MAGIC, WalRecord,
        judge_log, read_checkpoint, read_log, serialize, write_frame,
    };

    /// The part a file plays in a data directory.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Role {
        /// The last log written to (generation 1; any later log is empty), where a torn tail
        /// is cut.
        LastLog,
        /// A log (generation 1) that a later log holding a frame follows.
        EarlierLog,
        /// `state.db`.
        Checkpoint,
    }

    /// What recovery made of one file in one role and mode.
    #[derive(Debug)]
    pub struct Reading {
        /// The records kept, in order, or strict recovery's refusal.
        pub records: Result<Vec<WalRecord>, DurableError>,
        /// A torn tail: the length of the valid prefix, and the bytes cut after it.
        pub cut: Option<(u64, u64)>,
        /// Salvage only: the damage found and the writes listed as lost.
        pub salvaged: Salvaged,
    }

    /// Reads `bytes` as recovery reads a file playing `role`, in `mode`.
    pub fn read(bytes: &[u8], role: Role, mode: RecoveryMode) -> Reading {
        let path = Path::new(match role {
            Role::Checkpoint => "state.db",
            _ => "wal-00000000000000000001.log",
        });
        let mut salvaged = Salvaged::default();
        let mut records = Vec::new();
        let mut cut = None;
        let outcome = match role {
            Role::Checkpoint => {
                read_checkpoint(path, bytes, mode, &mut records, &mut salvaged).map(|_| ())
            }
            Role::LastLog | Role::EarlierLog => {
                let read = read_log(path, bytes, 1, role == Role::LastLog);
                records = read.records;
                match judge_log(path, bytes, read.verdict, mode, &mut salvaged) {
                    Ok(LogOutcome::Kept(Some(bytes_cut))) => {
                        cut = Some((read.valid.max(HEADER_LEN) as u64, bytes_cut));
                        Ok(())
                    }
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        };
        Reading {
            records: outcome.map(|()| records.into_iter().map(|(_, r)| r).collect()),
            cut,
            salvaged,
        }
    }

    /// A log of generation 1 holding one frame per payload (with correct checksums), then
    /// `tail` as it is: how a fuzzer reaches the record decoder past the checksums.
    pub fn log_of_payloads<'a>(
        payloads: impl IntoIterator<Item = &'a [u8]>,
        tail: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(WAL_MAGIC);
        out.extend_from_slice(&1u64.to_le_bytes());
        for p in payloads {
            write_frame(p, &mut out);
        }
        out.extend_from_slice(tail);
        out
    }

    /// The payload of a frame holding `records`, as an append writes it.
    pub fn payload_of(records: Vec<WalRecord>) -> Vec<u8> {
        serialize(records).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memds_proto::TableMap;
    use memds_proto::snapshot;
    use memds_proto::synth::{self, SynthConfig};

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

    fn drop_of(name: &str, version: u64) -> WalRecord {
        WalRecord::Drop {
            table: name.into(),
            version,
        }
    }

    fn records(r: &Recovered) -> Vec<WalRecord> {
        r.records.iter().map(|(_, r)| r.clone()).collect()
    }

    fn open(dir: &Path) -> Result<(Durable, Recovered), DurableError> {
        Durable::open(dir, 1 << 20, RecoveryMode::Strict)
    }

    /// Offsets of every frame in a log file.
    fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut at = HEADER_LEN;
        let mut out = Vec::new();
        while let Ok((_, next)) = frame_at(bytes, at) {
            out.push(at);
            at = next;
        }
        out
    }

    fn only_log(dir: &Path) -> PathBuf {
        let logs = list_logs(dir).expect("list");
        assert_eq!(logs.len(), 1, "{logs:?}");
        log_path(dir, logs[0])
    }

    #[test]
    fn appended_records_come_back_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, rec) = open(dir.path()).expect("open");
        assert!(rec.records.is_empty());
        d.append(vec![put(&table(0))]).expect("append");
        d.append(vec![put(&table(1)), drop_of("x", 3)])
            .expect("append");
        let good_len = d.wal_bytes();
        drop(d);
        // A torn write: the start of a frame at the end.
        let mut f = OpenOptions::new()
            .append(true)
            .open(only_log(dir.path()))
            .expect("open");
        f.write_all(&[200, 0, 0, 0, 1, 2, 3]).expect("write");
        drop(f);
        let (d, rec) = open(dir.path()).expect("reopen");
        assert_eq!(
            records(&rec),
            vec![put(&table(0)), put(&table(1)), drop_of("x", 3)]
        );
        assert_eq!(rec.truncated.as_ref().map(|t| t.1), Some(7));
        assert_eq!(d.wal_bytes(), good_len);
        assert_eq!(
            fs::metadata(only_log(dir.path())).expect("stat").len(),
            good_len
        );
    }

    #[test]
    fn a_damaged_last_frame_with_nothing_after_it_is_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = open(dir.path()).expect("open");
        d.append(vec![put(&table(0))]).expect("append");
        d.append(vec![put(&table(1))]).expect("append");
        drop(d);
        let path = only_log(dir.path());
        let mut bytes = fs::read(&path).expect("read");
        let last = *frame_offsets(&bytes).last().expect("frames");
        // The pages of the last batch never reached the disk: zeros where its payload was.
        let end = bytes.len();
        bytes[last + 40..end - 8].fill(0);
        fs::write(&path, &bytes).expect("write");
        let (_, rec) = open(dir.path()).expect("reopen");
        assert_eq!(records(&rec), vec![put(&table(0))]);
        assert_eq!(
            rec.truncated.as_ref().map(|t| t.0.offset),
            Some(last as u64)
        );
    }

    #[test]
    fn a_damaged_frame_followed_by_a_valid_one_stops_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = open(dir.path()).expect("open");
        for i in 0..3 {
            d.append(vec![put(&table(i))]).expect("append");
        }
        drop(d);
        let path = only_log(dir.path());
        let clean = fs::read(&path).expect("read");
        let frames = frame_offsets(&clean);
        // Every byte of the second frame, header and payload: each flip is refused.
        for at in (frames[1]..frames[2]).step_by(97) {
            let mut bytes = clean.clone();
            bytes[at] ^= 0x20;
            fs::write(&path, &bytes).expect("write");
            match open(dir.path()) {
                Err(DurableError::Corrupt { offset, found, .. }) => {
                    assert_eq!(offset, frames[1] as u64, "{found}");
                    assert!(found.contains("valid frame after it"), "{found}");
                }
                other => panic!("byte {at}: expected corruption, got {other:?}"),
            }
            // Nothing was cut: the file is as damaged as it was.
            assert_eq!(fs::read(&path).expect("read"), bytes);
        }
    }

    #[test]
    fn after_a_clean_close_damage_to_the_last_write_is_not_a_torn_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = open(dir.path()).expect("open");
        d.append(vec![put(&table(0))]).expect("append");
        d.append(vec![put(&table(1))]).expect("append");
        d.close().expect("close");
        drop(d);
        let path = only_log(dir.path());
        let mut bytes = fs::read(&path).expect("read");
        let frames = frame_offsets(&bytes);
        bytes[frames[1] + 100] ^= 1;
        fs::write(&path, &bytes).expect("write");
        assert!(matches!(
            open(dir.path()),
            Err(DurableError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_torn_tail_is_cut_from_a_log_that_only_empty_logs_follow_and_is_damage_before_a_write() {
        // As a compaction that failed after creating log 2 leaves the directory, after a crash
        // tore the write that went on in log 1.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = open(dir.path()).expect("open");
        d.append(vec![put(&table(0))]).expect("append");
        let torn_at = d.wal_bytes();
        d.append(vec![put(&table(1))]).expect("append");
        drop(d);
        let log1 = log_path(dir.path(), 1);
        let len = fs::metadata(&log1).expect("stat").len();
        OpenOptions::new()
            .write(true)
            .open(&log1)
            .and_then(|f| f.set_len(len - 3))
            .expect("tear");
        let torn = fs::read(&log1).expect("read");
        let mut written = Vec::new();
        written.extend_from_slice(WAL_MAGIC);
        written.extend_from_slice(&2u64.to_le_bytes());
        write_frame(&serialize(vec![drop_of("x", 1)]), &mut written);

        // Log 2 holds a write: whatever log 1's tail is, writes were logged after it.
        fs::write(log_path(dir.path(), 2), &written).expect("write");
        match open(dir.path()) {
            Err(DurableError::Corrupt {
                path,
                offset,
                found,
            }) => {
                assert_eq!((path, offset), (log1.clone(), torn_at));
                assert!(found.contains("later log holding writes"), "{found}");
            }
            other => panic!("expected damage, got {other:?}"),
        }
        assert_eq!(fs::read(&log1).expect("read"), torn, "nothing was cut");

        // Log 2 is empty: the torn write is the last one anywhere, and is cut.
        drop(create_log(dir.path(), 2).expect("empty log"));
        let (mut d, rec) = open(dir.path()).expect("recovery");
        assert_eq!(records(&rec), vec![put(&table(0))]);
        let (origin, cut) = rec.truncated.expect("a cut");
        assert_eq!(
            (origin.path, origin.offset, cut),
            (log1.clone(), torn_at, len - 3 - torn_at)
        );
        assert_eq!(fs::metadata(&log1).expect("stat").len(), torn_at);
        assert_eq!(d.generation(), 2, "appends go to the last log");
        d.append(vec![put(&table(2))]).expect("append");
        drop(d);
        let (_, rec) = open(dir.path()).expect("reopen");
        assert_eq!(records(&rec), vec![put(&table(0)), put(&table(2))]);
        assert!(rec.truncated.is_none());
    }

    #[test]
    fn a_damaged_log_header_stops_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = open(dir.path()).expect("open");
        d.append(vec![put(&table(0))]).expect("append");
        drop(d);
        let path = only_log(dir.path());
        let mut bytes = fs::read(&path).expect("read");
        bytes[2] ^= 0xFF;
        fs::write(&path, &bytes).expect("write");
        match open(dir.path()) {
            Err(DurableError::Corrupt { offset, found, .. }) => {
                assert_eq!(offset, 0);
                assert!(found.contains("header"), "{found}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    /// Every file of a data directory, with its bytes.
    fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_file())
            .map(|p| {
                let bytes = fs::read(&p).expect("read");
                (p, bytes)
            })
            .collect();
        out.sort();
        out
    }

    /// A log or checkpoint whose header names a format this build does not read (a newer
    /// release's, or one older than any it reads) is refused in both modes with a message naming
    /// both versions, and nothing in the directory is cut, moved or set aside: the file is whole,
    /// only not ours to read.
    #[test]
    fn a_file_in_a_format_not_read_here_is_refused_whole_in_both_modes() {
        for (file, magic, kind, found) in [
            ("log", &b"MDSWAL03"[..], "log", 3),
            ("log", b"MDSWAL01", "log", 1),
            ("checkpoint", b"MDSSTAT3", "checkpoint", 3),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (mut d, _) = open(dir.path()).expect("open");
            d.append(vec![put(&table(0))]).expect("append");
            d.compact(std::iter::once(put(&table(0)))).expect("compact");
            d.append(vec![put(&table(1))]).expect("append");
            drop(d);
            let path = if file == "log" {
                only_log(dir.path())
            } else {
                dir.path().join(STATE_FILE)
            };
            let mut bytes = fs::read(&path).expect("read");
            bytes[..8].copy_from_slice(magic);
            // A newer format's frames need not be ours either: garbage after the header must
            // not turn the refusal into a torn tail to cut.
            bytes.extend_from_slice(&[0x5A; 13]);
            fs::write(&path, &bytes).expect("write");
            let before = snapshot_dir(dir.path());
            for mode in [RecoveryMode::Strict, RecoveryMode::Salvage] {
                match Durable::open(dir.path(), 1 << 20, mode) {
                    Err(e @ DurableError::Format { .. }) => {
                        let DurableError::Format {
                            kind: k,
                            found: f,
                            oldest,
                            newest,
                            ..
                        } = &e
                        else {
                            unreachable!()
                        };
                        assert_eq!((*k, *f), (kind, found), "{e}");
                        assert_eq!(
                            (*oldest, *newest),
                            if kind == "log" {
                                (LOG_FORMAT_OLDEST, LOG_FORMAT)
                            } else {
                                (CHECKPOINT_FORMAT_OLDEST, CHECKPOINT_FORMAT)
                            }
                        );
                        let text = e.to_string();
                        assert!(
                            text.contains(&format!("{kind} format {found}"))
                                && text.contains(&format!("reads {kind} formats 2 to 2")),
                            "{text}"
                        );
                        let advice = if found > 2 {
                            "newer release"
                        } else {
                            "predates"
                        };
                        assert!(text.contains(advice), "{text}");
                    }
                    other => panic!(
                        "{file} {found} in {mode:?}: expected a format refusal, got {other:?}"
                    ),
                }
                assert_eq!(snapshot_dir(dir.path()), before, "{file} {found} {mode:?}");
                assert!(
                    !fs::read_dir(dir.path()).expect("list").any(|e| e
                        .expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .starts_with("damaged-")),
                    "nothing is set aside"
                );
            }
        }
    }

    #[test]
    fn records_that_pass_their_checksums_but_do_not_decode_stop_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (d, _) = open(dir.path()).expect("open");
        drop(d);
        let path = only_log(dir.path());
        let mut bytes = fs::read(&path).expect("read");
        write_frame(&[0xAB; 40], &mut bytes);
        fs::write(&path, &bytes).expect("write");
        match open(dir.path()) {
            Err(DurableError::Corrupt { found, .. }) => {
                assert!(found.contains("do not decode"), "{found}")
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    #[test]
    fn compaction_bounds_the_log_and_keeps_every_table_and_tombstone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = Durable::open(dir.path(), 1, RecoveryMode::Strict).expect("open");
        let maps: Vec<TableMap> = (0..3).map(table).collect();
        for m in &maps {
            d.append(vec![put(m)]).expect("append");
        }
        assert!(d.should_compact());
        let mut state: Vec<WalRecord> = maps.iter().map(put).collect();
        state.push(drop_of("gone", 9));
        d.compact(state.clone().into_iter()).expect("compact");
        assert_eq!(d.wal_bytes(), HEADER_LEN as u64);
        assert_eq!(list_logs(dir.path()).expect("list"), vec![2]);
        d.append(vec![drop_of("table-0001", 4)]).expect("append");
        drop(d);
        let (_, rec) = Durable::open(dir.path(), 1, RecoveryMode::Strict).expect("reopen");
        state.push(drop_of("table-0001", 4));
        assert_eq!(records(&rec), state);
    }

    #[test]
    fn a_log_the_checkpoint_covers_is_not_replayed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = open(dir.path()).expect("open");
        d.append(vec![put(&table(0))]).expect("append");
        let old_log = fs::read(log_path(dir.path(), 1)).expect("read");
        d.compact(std::iter::once(put(&table(0)))).expect("compact");
        drop(d);
        // As a crash between the checkpoint's rename and the old log's removal leaves it.
        fs::write(log_path(dir.path(), 1), &old_log).expect("restore old log");
        let (_, rec) = open(dir.path()).expect("reopen");
        assert_eq!(
            records(&rec),
            vec![put(&table(0))],
            "the covered log was replayed"
        );
        assert_eq!(list_logs(dir.path()).expect("list"), vec![1, 2]);
    }

    #[test]
    fn missing_files_and_generation_gaps_stop_recovery() {
        // A log after generation 1 without the checkpoint it follows.
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = open(dir.path()).expect("open");
        d.append(vec![put(&table(0))]).expect("append");
        d.compact(std::iter::once(put(&table(0)))).expect("compact");
        d.append(vec![put(&table(1))]).expect("append");
        drop(d);
        let state = fs::read(dir.path().join(STATE_FILE)).expect("read");
        fs::remove_file(dir.path().join(STATE_FILE)).expect("rm");
        match open(dir.path()) {
            Err(DurableError::Inconsistent { found, .. }) => {
                assert!(found.contains("no state.db"), "{found}")
            }
            other => panic!("expected a missing checkpoint, got {other:?}"),
        }
        fs::write(dir.path().join(STATE_FILE), &state).expect("restore");
        // The log after the checkpoint is gone.
        let log2 = fs::read(log_path(dir.path(), 2)).expect("read");
        fs::remove_file(log_path(dir.path(), 2)).expect("rm");
        match open(dir.path()) {
            Err(DurableError::Inconsistent { found, .. }) => {
                assert!(found.contains("is missing"), "{found}")
            }
            other => panic!("expected a missing log, got {other:?}"),
        }
        // A gap: generation 2 missing, 3 present.
        let mut log3 = log2.clone();
        log3[8..16].copy_from_slice(&3u64.to_le_bytes());
        fs::write(log_path(dir.path(), 3), &log3).expect("write");
        match open(dir.path()) {
            Err(DurableError::Inconsistent { found, .. }) => {
                assert!(found.contains("next log is 3"), "{found}")
            }
            other => panic!("expected a gap, got {other:?}"),
        }
        fs::write(log_path(dir.path(), 2), &log2).expect("restore");
        fs::write(log_path(dir.path(), 3), &log3[..HEADER_LEN]).expect("write");
        let (_, rec) = open(dir.path()).expect("a contiguous history opens");
        assert_eq!(records(&rec), vec![put(&table(0)), put(&table(1))]);
    }

    #[test]
    fn a_damaged_checkpoint_stops_recovery_with_its_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = open(dir.path()).expect("open");
        d.compact(std::iter::once(put(&table(0)))).expect("compact");
        drop(d);
        let path = dir.path().join(STATE_FILE);
        let mut bytes = fs::read(&path).expect("read");
        let at = bytes.len() / 2;
        bytes[at] ^= 0xFF;
        fs::write(&path, &bytes).expect("write");
        match open(dir.path()) {
            Err(DurableError::Corrupt { offset, .. }) => assert_eq!(offset, HEADER_LEN as u64),
            other => panic!("expected damage, got {other:?}"),
        }
    }

    #[test]
    fn salvage_keeps_the_prefix_sets_the_files_aside_and_lists_what_is_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut d, _) = open(dir.path()).expect("open");
        let maps: Vec<TableMap> = (0..3).map(table).collect();
        for m in &maps {
            d.append(vec![put(m)]).expect("append");
        }
        drop(d);
        let path = only_log(dir.path());
        let mut bytes = fs::read(&path).expect("read");
        let frames = frame_offsets(&bytes);
        bytes[frames[1] + 60] ^= 4;
        fs::write(&path, &bytes).expect("write");
        assert!(open(dir.path()).is_err());
        let (mut d, rec) =
            Durable::open(dir.path(), 1 << 20, RecoveryMode::Salvage).expect("salvage");
        assert_eq!(records(&rec), vec![put(&maps[0])]);
        let s = rec.salvage.expect("salvaged");
        assert_eq!(
            s.lost,
            vec![format!(
                "put of table {} version {}",
                maps[2].name(),
                maps[2].version().get()
            )]
        );
        assert_eq!(
            fs::read(s.folder.join(path.file_name().expect("name"))).expect("set aside"),
            bytes,
            "the damaged log is kept as it was"
        );
        // The caller checkpoints what was kept; then the directory opens strictly.
        d.compact(std::iter::once(put(&maps[0]))).expect("compact");
        d.append(vec![put(&maps[1])]).expect("append");
        drop(d);
        let (_, rec) = open(dir.path()).expect("strict open after salvage");
        assert_eq!(records(&rec), vec![put(&maps[0]), put(&maps[1])]);
    }
}
