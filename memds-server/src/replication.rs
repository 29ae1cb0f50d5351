//! The fleet's replication decisions, with no IO: what a server holds of a table compared with
//! what a peer advertises, whether a pulled table may be installed, and when the server is
//! ready. [`crate::fleet`] feeds it summaries, pull results and round outcomes and does what it
//! answers; the deterministic simulation (`sim`, in the tests) drives the same functions with a
//! simulated network, disks and authority over many seeds.
//!
//! # The order of holdings
//!
//! A table name is, on each server, absent, held at a version, or dropped at a version (a
//! tombstone). Replication moves every server up one total order of those holdings, the order
//! the writer's rules ([`crate::store::plan`]) already follow:
//!
//! ```text
//! absent < table(0) < dropped(0) < table(1) < dropped(1) < ...
//! ```
//!
//! A drop at version `v` removes the table held at `v` (a drop names the version it removes),
//! and a table of that name comes back only at a higher version. Absent is below everything, a
//! table put at version 0 included. Equal holdings of a table must have equal content
//! (checksums, which cover the node list).

use std::collections::BTreeMap;
use std::fmt;

use memds_proto::CompactTable;
use memds_proto::wire::{ErrorCode, TableSummary};

use crate::store::Tables;

/// What a server holds of one table name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holding {
    /// Nothing: never seen here.
    Absent,
    /// The table, at a version, with its checksum.
    Table {
        /// The table's version.
        version: u64,
        /// Its checksum (name, version, node list and partitions).
        checksum: u64,
    },
    /// A tombstone: the table was dropped at this version.
    Dropped {
        /// The version dropped.
        version: u64,
    },
}

impl Holding {
    /// What `tables` holds of `name`.
    pub fn held(tables: &Tables, name: &str) -> Self {
        match (tables.get(name), tables.tombstone(name)) {
            (Some(t), _) => Holding::Table {
                version: t.version().get(),
                checksum: t.checksum(),
            },
            (None, Some(version)) => Holding::Dropped { version },
            (None, None) => Holding::Absent,
        }
    }

    /// What a peer's summary entry advertises.
    pub fn advertised(entry: &TableSummary) -> Self {
        if entry.dropped {
            Holding::Dropped {
                version: entry.version,
            }
        } else {
            Holding::Table {
                version: entry.version,
                checksum: entry.digest,
            }
        }
    }

    /// The holding's place in the order (`None` for absent, below every other).
    fn rank(&self) -> Option<(u64, bool)> {
        match *self {
            Holding::Absent => None,
            Holding::Table { version, .. } => Some((version, false)),
            Holding::Dropped { version } => Some((version, true)),
        }
    }

    /// Whether this holding is at least `other` in the order (equal tables count, whatever
    /// their content: [`decide`] reports content that differs).
    pub fn at_least(&self, other: &Holding) -> bool {
        self.rank() >= other.rank()
    }

    /// The version held or dropped, if any.
    pub fn version(&self) -> Option<u64> {
        self.rank().map(|(v, _)| v)
    }
}

impl fmt::Display for Holding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holding::Absent => f.write_str("absent"),
            Holding::Table { version, .. } => write!(f, "version {version}"),
            Holding::Dropped { version } => write!(f, "dropped at version {version}"),
        }
    }
}

/// What to do about one table a peer advertises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This server holds as much or more.
    Nothing,
    /// Both hold the same version with different content: an error to report (neither copy
    /// can replace the other; the authority's next version repairs it).
    Diverged,
    /// Record the peer's drop: a tombstone at its version (removing the table held here).
    Drop {
        /// The version the peer dropped.
        version: u64,
    },
    /// Pull the peer's table.
    Pull {
        /// The version of the older table held here, the base of a delta; `None` when no table
        /// is held (only the whole snapshot will do).
        since: Option<u64>,
    },
}

/// What to do about a table held here as `ours` that a peer holds as `theirs`.
pub fn decide(ours: Holding, theirs: Holding) -> Decision {
    if ours.at_least(&theirs) {
        return match (ours, theirs) {
            (
                Holding::Table {
                    version: a,
                    checksum: x,
                },
                Holding::Table {
                    version: b,
                    checksum: y,
                },
            ) if a == b && x != y => Decision::Diverged,
            _ => Decision::Nothing,
        };
    }
    match theirs {
        Holding::Dropped { version } => Decision::Drop { version },
        Holding::Table { .. } => Decision::Pull {
            since: match ours {
                Holding::Table { version, .. } => Some(version),
                Holding::Absent | Holding::Dropped { .. } => None,
            },
        },
        // Nothing is below absent.
        Holding::Absent => Decision::Nothing,
    }
}

/// Why a pulled table may not be installed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The pulled table has another name than the one asked for.
    #[error("the peer sent table {got:?} for {asked:?}")]
    OtherTable {
        /// The table asked for.
        asked: String,
        /// The table the answer holds.
        got: String,
    },
    /// The pulled table is older than what the peer advertised.
    #[error("the peer sent version {got}, older than the version {advertised} it advertised")]
    Older {
        /// The version of the peer's summary.
        advertised: u64,
        /// The version pulled.
        got: u64,
    },
    /// A table rebuilt here from a part of the peer's (a delta or the blocks a Merkle descent
    /// found) is not the table the peer advertised: another version (the peer's table moved
    /// meanwhile, so nothing vouches for the parts not pulled, node list included) or another
    /// checksum (the copies differed outside what was pulled).
    #[error(
        "the table rebuilt from the peer's changes is not the one it advertised (version {got}, expected {advertised} with checksum {checksum:016x})"
    )]
    NotAdvertised {
        /// The version of the peer's summary.
        advertised: u64,
        /// Its checksum there.
        checksum: u64,
        /// The version rebuilt.
        got: u64,
    },
}

/// Whether a table rebuilt here by applying a peer's partial changes (a delta, or a Merkle
/// descent's blocks) to our copy may be installed: only when it is exactly the table the peer
/// advertised, the same version and checksum. A version equal to one held is never replaced,
/// so a wrong table installed here would stay wrong, and spread.
pub fn accept_rebuilt(rebuilt: &CompactTable, advertised: &TableSummary) -> Result<(), Refused> {
    let version = rebuilt.version().get();
    if rebuilt.name().as_str() != advertised.name {
        return Err(Refused::OtherTable {
            asked: advertised.name.clone(),
            got: rebuilt.name().as_str().to_owned(),
        });
    }
    if advertised.dropped
        || version != advertised.version
        || rebuilt.checksum() != advertised.digest
    {
        return Err(Refused::NotAdvertised {
            advertised: advertised.version,
            checksum: advertised.digest,
            got: version,
        });
    }
    Ok(())
}

/// Whether a whole table pulled from a peer (a snapshot: complete and checked by its own
/// checksum) may be installed: it must be the table asked for, at the advertised version or a
/// later one (the peer's table may have moved since its summary).
pub fn accept_snapshot(name: &str, version: u64, advertised: &TableSummary) -> Result<(), Refused> {
    if name != advertised.name {
        return Err(Refused::OtherTable {
            asked: advertised.name.clone(),
            got: name.to_owned(),
        });
    }
    if version < advertised.version {
        return Err(Refused::Older {
            advertised: advertised.version,
            got: version,
        });
    }
    Ok(())
}

/// What a server advertises in its summary: every table's version and checksum and every
/// tombstone, one entry per name, sorted by name.
pub fn summary_entries(tables: &Tables) -> Vec<TableSummary> {
    let mut entries: Vec<TableSummary> = tables
        .iter()
        .map(|(name, t)| TableSummary {
            name: name.clone(),
            version: t.version().get(),
            digest: t.checksum(),
            dropped: false,
        })
        .chain(tables.tombstones().map(|(name, version)| TableSummary {
            name: name.clone(),
            version,
            digest: 0,
            dropped: true,
        }))
        .collect();
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries
}

/// What a peer's refusal of a forwarded write means to the forwarder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forwarded {
    /// Delivered, nothing more to do: the peer holds something newer (`stale`), holds this
    /// version with other content (`conflict`: anti-entropy's checksum comparison reports it),
    /// or lacks the update's base (`behind`: it catches up by anti-entropy).
    Delivered,
    /// Refused: counted and logged; anti-entropy carries the table if the peer lacks it.
    Refused,
}

/// How the forwarder counts a peer's error answer to a forwarded write. Exhaustive, so that a
/// new error code is a decision here, not a silent default.
pub fn forwarded(code: ErrorCode) -> Forwarded {
    match code {
        ErrorCode::Stale | ErrorCode::Conflict | ErrorCode::Behind => Forwarded::Delivered,
        ErrorCode::UnknownTable
        | ErrorCode::Invalid
        | ErrorCode::TooLarge
        | ErrorCode::Unauthorized
        | ErrorCode::Overloaded
        | ErrorCode::Malformed
        | ErrorCode::Internal
        | ErrorCode::Unavailable => Forwarded::Refused,
    }
}

/// How a round of anti-entropy with one peer ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RoundOutcome {
    /// The peer could not be reached, or did not answer its summary.
    Unreachable(String),
    /// The peer answered its summary; the pulls it called for were tried.
    Exchanged {
        /// Whether the peer said it was ready.
        peer_ready: bool,
        /// Its summary's tables (name and holding), what a ready peer requires of us.
        advertised: Vec<(String, Holding)>,
        /// Why pulls failed, if any did.
        failures: Vec<String>,
    },
}

/// Whether a server is ready, as the readiness rule last said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Ready (for ever, once reached), and why it became so.
    Ready(String),
    /// Not ready yet, and why.
    NotReady(String),
}

/// What the peer names resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution<P> {
    /// Not resolved yet.
    Pending,
    /// Some name did not resolve (`why`): the peers behind it are unknown, not absent. `peers`
    /// are those the other names resolved to, asked as usual.
    Failed {
        /// The peers the names that resolved stand for, other than this server.
        peers: Vec<P>,
        /// Which name failed, and how.
        why: String,
    },
    /// Every name resolved; these are the peers other than this server.
    Peers(Vec<P>),
}

/// What the readiness rule last heard of one peer.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Seen {
    /// Its last round failed.
    Unreachable,
    /// Its last round completed; it was not ready; whether every pull succeeded.
    NotReady { complete: bool },
    /// Its last round completed and it was ready.
    Ready,
}

/// The readiness rule, with no IO: a server with peers starts not ready and becomes ready
/// when
///
/// - a round with a ready peer ends with this server holding every table at least as that
///   peer advertised it, and as every ready peer advertised it in its last summary; or
/// - no peer has been seen ready, every known peer's last round completed (with every pull
///   done) or failed, and at least one completed: a fleet starting together, where nobody
///   holds more than what was exchanged; or
/// - every peer name resolved, and to nothing but this server.
///
/// A name that fails to resolve is not "no peer": until it resolves, only a round with a ready
/// peer makes the server ready. Each peer's state is
/// the outcome of its last round only, so a peer that was not ready once and is ready now
/// counts as ready. Readiness is never lost once reached.
#[derive(Debug)]
pub struct ReadinessRule<P: Ord> {
    ready: bool,
    resolution: Resolution<P>,
    seen: BTreeMap<P, Seen>,
    /// What ready peers advertised, the highest holding of each table: none of it may be
    /// missing here when this server becomes ready.
    required: BTreeMap<String, Holding>,
}

impl<P: Ord + Clone + fmt::Display> ReadinessRule<P> {
    /// The rule of a server with (`has_peers`) or without peers (ready at once).
    pub fn new(has_peers: bool) -> Self {
        Self {
            ready: !has_peers,
            resolution: Resolution::Pending,
            seen: BTreeMap::new(),
            required: BTreeMap::new(),
        }
    }

    /// Whether the server is ready.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// The peer names resolved (or failed to).
    pub fn on_resolution(&mut self, resolution: Resolution<P>) -> Verdict {
        if let Resolution::Peers(peers) = &resolution {
            self.seen.retain(|p, _| peers.contains(p));
        }
        self.resolution = resolution;
        match &self.resolution {
            Resolution::Peers(peers) if peers.is_empty() => self
                .become_ready("no peer address other than this server's resolves: serving alone"),
            _ => self.verdict(),
        }
    }

    /// A round with `peer` ended; `holds` says what this server holds of a table now.
    pub fn on_round(
        &mut self,
        peer: P,
        outcome: RoundOutcome,
        holds: impl Fn(&str) -> Holding,
    ) -> Verdict {
        if self.ready {
            return self.verdict();
        }
        let peer_ready = match outcome {
            RoundOutcome::Unreachable(reason) => {
                self.seen.insert(peer.clone(), Seen::Unreachable);
                return self.starting_or(format!("anti-entropy with {peer} failed: {reason}"));
            }
            RoundOutcome::Exchanged {
                peer_ready,
                advertised,
                failures,
            } => {
                if peer_ready {
                    for (name, holding) in advertised {
                        let slot = self.required.entry(name).or_insert(holding);
                        if !slot.at_least(&holding) {
                            *slot = holding;
                        }
                    }
                }
                let seen = if peer_ready {
                    Seen::Ready
                } else {
                    Seen::NotReady {
                        complete: failures.is_empty(),
                    }
                };
                self.seen.insert(peer.clone(), seen);
                if !failures.is_empty() {
                    return self.starting_or(format!(
                        "pulling from {peer} failed: {}",
                        failures.join("; ")
                    ));
                }
                peer_ready
            }
        };
        let lacking: Vec<String> = self
            .required
            .iter()
            .filter(|(name, need)| !holds(name).at_least(need))
            .map(|(name, need)| format!("{name} ({need})"))
            .collect();
        if !lacking.is_empty() {
            return self.starting_or(format!(
                "still missing what ready peers advertised: {}",
                lacking.join(", ")
            ));
        }
        if peer_ready {
            return self.become_ready(&format!("caught up with ready peer {peer}"));
        }
        self.starting_or(format!(
            "peer {peer} is not ready either; waiting for a round with a ready peer"
        ))
    }

    /// Ready if the fleet is starting together, else not ready for `why`.
    fn starting_or(&mut self, why: String) -> Verdict {
        if self.fleet_starting() {
            return self.become_ready(
                "exchanged with every reachable peer and none was ready (a fleet starting together)",
            );
        }
        Verdict::NotReady(why)
    }

    /// Whether the fleet is starting together: every peer known, none seen ready, every one's
    /// last round complete or failed, at least one complete.
    fn fleet_starting(&self) -> bool {
        let Resolution::Peers(peers) = &self.resolution else {
            return false;
        };
        let mut answered = false;
        for p in peers {
            match self.seen.get(p) {
                Some(Seen::NotReady { complete: true }) => answered = true,
                Some(Seen::Unreachable) => {}
                Some(Seen::NotReady { complete: false } | Seen::Ready) | None => return false,
            }
        }
        answered && self.required.is_empty()
    }

    fn become_ready(&mut self, why: &str) -> Verdict {
        self.ready = true;
        Verdict::Ready(why.to_owned())
    }

    fn verdict(&self) -> Verdict {
        match (&self.resolution, self.ready) {
            (_, true) => Verdict::Ready("ready".into()),
            (Resolution::Pending, false) => {
                Verdict::NotReady("the peer names have not been resolved yet".into())
            }
            (Resolution::Failed { why, .. }, false) => {
                Verdict::NotReady(format!("a peer name does not resolve: {why}"))
            }
            (Resolution::Peers(_), false) => {
                Verdict::NotReady("no anti-entropy round with a peer has completed yet".into())
            }
        }
    }
}

/// How pulling (or dropping) one table of a round ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableResult {
    /// Done: the table is held as advertised, or something newer arrived meanwhile.
    Done,
    /// This way of pulling did not work or would not pay (no delta from our version, too much
    /// differs for a Merkle descent, the rebuilt table is not the advertised one, the writer
    /// refused the batch): the machine answers the next way.
    Next,
    /// This table could not be brought up (the writer refused it, every way of pulling failed).
    Failed(String),
    /// The connection to the peer broke: the round ends here, the rest waits for the next.
    Broken(String),
}

/// What a [`Replicator`] asks its shell to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<P> {
    /// Ask `peer` for its summary; answer with [`Replicator::on_summary`].
    AskSummary {
        /// The round.
        round: u64,
        /// The peer.
        peer: P,
    },
    /// Bring the table of `entry` up to what the peer advertised, this way (the result
    /// checked with [`accept_rebuilt`] or [`accept_snapshot`]); answer with
    /// [`Replicator::on_table`], which may answer the next way.
    Pull {
        /// The round.
        round: u64,
        /// What the peer advertised.
        entry: TableSummary,
        /// How.
        way: Way,
    },
    /// Submit a drop of `table` at `version` to the writer; answer with
    /// [`Replicator::on_table`].
    Drop {
        /// The round.
        round: u64,
        /// The table.
        table: String,
        /// The version the peer dropped.
        version: u64,
    },
    /// Report that the peer holds `table` at the version held here with other content.
    Diverged {
        /// The table.
        table: String,
        /// The version.
        version: u64,
    },
}

/// A way of pulling a table, cheapest first: a table held here at an older version is pulled
/// by delta, else by Merkle descent, else whole; one not held, whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Way {
    /// The peer's delta since the version held here, from its bounded history of changes.
    Delta,
    /// A Merkle descent: the partitions of the blocks whose digests differ.
    Merkle,
    /// The whole snapshot.
    Snapshot,
}

impl Way {
    /// The way to try after this one, if any.
    fn next(self) -> Option<Way> {
        match self {
            Way::Delta => Some(Way::Merkle),
            Way::Merkle => Some(Way::Snapshot),
            Way::Snapshot => None,
        }
    }
}

/// What a table's result called for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfterTable<P> {
    /// The next way of pulling the table, if the last did not work.
    pub action: Option<Action<P>>,
    /// The round's verdict if it ended.
    pub verdict: Option<Verdict>,
}

/// What a summary called for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundPlan<P> {
    /// The pulls and drops to do, and divergences to report.
    pub actions: Vec<Action<P>>,
    /// How many versions this server lacked, summed over the tables the peer holds newer.
    pub lag_versions: u64,
    /// The round's verdict if it ended already (nothing to pull).
    pub verdict: Option<Verdict>,
}

/// The round in progress.
#[derive(Debug)]
struct Active<P> {
    id: u64,
    peer: P,
    /// The peer's readiness and summary, once answered.
    summary: Option<(bool, Vec<TableSummary>)>,
    /// Tables whose pull (what the peer advertised, and the way being tried) or drop (`None`)
    /// has not ended.
    pending: BTreeMap<String, Option<(TableSummary, Way)>>,
    failures: Vec<String>,
}

/// Anti-entropy and readiness as a state machine with no IO: one round at a time, with the
/// next peer (round robin); the peer's summary goes in, pulls and drops come out, their results
/// go in, and the round's outcome feeds the [`ReadinessRule`]. The server's async shell
/// ([`crate::fleet`]) and the deterministic simulation (`sim`) drive the same machine.
#[derive(Debug)]
pub struct Replicator<P: Ord> {
    rule: ReadinessRule<P>,
    peers: Vec<P>,
    next: usize,
    rounds: u64,
    round: Option<Active<P>>,
}

impl<P: Ord + Clone + fmt::Display> Replicator<P> {
    /// The machine of a server with (`has_peers`) or without peers.
    pub fn new(has_peers: bool) -> Self {
        Self {
            rule: ReadinessRule::new(has_peers),
            peers: Vec::new(),
            next: 0,
            rounds: 0,
            round: None,
        }
    }

    /// Whether the server is ready.
    pub fn is_ready(&self) -> bool {
        self.rule.is_ready()
    }

    /// The peer names resolved (or some failed to); the peers they stand for, other than this
    /// server, are asked in turn.
    pub fn on_resolution(&mut self, resolution: Resolution<P>) -> Verdict {
        match &resolution {
            Resolution::Peers(peers) | Resolution::Failed { peers, .. } => {
                self.peers = peers.clone();
            }
            Resolution::Pending => {}
        }
        self.rule.on_resolution(resolution)
    }

    /// A timer tick (or a catch-up): starts a round with the next peer, unless one is running
    /// or no peer is known.
    pub fn start_round(&mut self) -> Option<Action<P>> {
        if self.round.is_some() || self.peers.is_empty() {
            return None;
        }
        let peer = self.peers[self.next % self.peers.len()].clone();
        self.next = self.next.wrapping_add(1);
        self.rounds += 1;
        self.round = Some(Active {
            id: self.rounds,
            peer: peer.clone(),
            summary: None,
            pending: BTreeMap::new(),
            failures: Vec::new(),
        });
        Some(Action::AskSummary {
            round: self.rounds,
            peer,
        })
    }

    /// Whether `round` is the round in progress (answers to others are ignored).
    pub fn is_current(&self, round: u64) -> bool {
        self.round.as_ref().is_some_and(|r| r.id == round)
    }

    /// The peer of `round` turned out to be this server itself: the round ends, counting for
    /// nothing (the shell stops asking that address).
    pub fn abandon(&mut self, round: u64) {
        if self.is_current(round) {
            self.round = None;
        }
    }

    /// The peer's summary (its readiness and tables), or why it did not answer. `holds` says
    /// what this server holds of a table now.
    pub fn on_summary(
        &mut self,
        round: u64,
        answer: Result<(bool, Vec<TableSummary>), String>,
        holds: impl Fn(&str) -> Holding,
    ) -> RoundPlan<P> {
        let mut plan = RoundPlan {
            actions: Vec::new(),
            lag_versions: 0,
            verdict: None,
        };
        let Some(active) = self
            .round
            .as_mut()
            .filter(|r| r.id == round && r.summary.is_none())
        else {
            return plan;
        };
        let (ready, tables) = match answer {
            Ok(summary) => summary,
            Err(reason) => {
                let peer = active.peer.clone();
                self.round = None;
                plan.verdict = Some(self.rule.on_round(
                    peer,
                    RoundOutcome::Unreachable(reason),
                    holds,
                ));
                return plan;
            }
        };
        for entry in &tables {
            let ours = holds(&entry.name);
            let lag = |plan: &mut RoundPlan<P>| {
                plan.lag_versions += entry
                    .version
                    .saturating_sub(ours.version().unwrap_or(0))
                    .max(1);
            };
            match decide(ours, Holding::advertised(entry)) {
                Decision::Nothing => {}
                Decision::Diverged => plan.actions.push(Action::Diverged {
                    table: entry.name.clone(),
                    version: entry.version,
                }),
                Decision::Drop { version } => {
                    lag(&mut plan);
                    active.pending.insert(entry.name.clone(), None);
                    plan.actions.push(Action::Drop {
                        round,
                        table: entry.name.clone(),
                        version,
                    });
                }
                Decision::Pull { since } => {
                    lag(&mut plan);
                    let way = if since.is_some() {
                        Way::Delta
                    } else {
                        Way::Snapshot
                    };
                    active
                        .pending
                        .insert(entry.name.clone(), Some((entry.clone(), way)));
                    plan.actions.push(Action::Pull {
                        round,
                        entry: entry.clone(),
                        way,
                    });
                }
            }
        }
        active.summary = Some((ready, tables));
        if active.pending.is_empty() {
            plan.verdict = Some(self.finish(holds));
        }
        plan
    }

    /// How the pull (this way) or drop of `table` in `round` ended: the next way to pull it,
    /// if this one did not work, and the round's verdict once it ends.
    pub fn on_table(
        &mut self,
        round: u64,
        table: &str,
        result: TableResult,
        holds: impl Fn(&str) -> Holding,
    ) -> AfterTable<P> {
        let mut next = AfterTable {
            action: None,
            verdict: None,
        };
        let Some(active) = self.round.as_mut().filter(|r| r.id == round) else {
            return next;
        };
        let Some(pulling) = active.pending.remove(table) else {
            return next;
        };
        match result {
            TableResult::Done => {}
            TableResult::Next => match pulling {
                Some((entry, way)) => match way.next() {
                    Some(way) => {
                        active
                            .pending
                            .insert(table.to_owned(), Some((entry.clone(), way)));
                        next.action = Some(Action::Pull { round, entry, way });
                        return next;
                    }
                    None => active
                        .failures
                        .push(format!("{table}: no way of pulling it worked")),
                },
                None => active
                    .failures
                    .push(format!("{table}: the drop was refused")),
            },
            TableResult::Failed(why) => active.failures.push(format!("{table}: {why}")),
            TableResult::Broken(why) => {
                active.failures.push(format!("{table}: {why}"));
                // The rest waits for the next round.
                let rest = std::mem::take(&mut active.pending);
                active
                    .failures
                    .extend(rest.keys().map(|t| format!("{t}: not pulled")));
            }
        }
        if active.pending.is_empty() {
            next.verdict = Some(self.finish(holds));
        }
        next
    }

    /// `round`'s deadline passed: whatever has not ended failed.
    pub fn on_deadline(&mut self, round: u64, holds: impl Fn(&str) -> Holding) -> Option<Verdict> {
        let active = self.round.as_mut().filter(|r| r.id == round)?;
        if active.summary.is_none() {
            let peer = active.peer.clone();
            self.round = None;
            return Some(self.rule.on_round(
                peer,
                RoundOutcome::Unreachable("no summary before the deadline".into()),
                holds,
            ));
        }
        let rest = std::mem::take(&mut active.pending);
        active
            .failures
            .extend(rest.keys().map(|t| format!("{t}: timed out")));
        Some(self.finish(holds))
    }

    fn finish(&mut self, holds: impl Fn(&str) -> Holding) -> Verdict {
        let active = self
            .round
            .take()
            .expect("finish is called on the round in progress");
        let (peer_ready, tables) = active.summary.unwrap_or_default();
        self.rule.on_round(
            active.peer,
            RoundOutcome::Exchanged {
                peer_ready,
                advertised: tables
                    .iter()
                    .map(|e| (e.name.clone(), Holding::advertised(e)))
                    .collect(),
                failures: active.failures,
            },
            holds,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(version: u64, checksum: u64) -> Holding {
        Holding::Table { version, checksum }
    }

    fn dropped(version: u64) -> Holding {
        Holding::Dropped { version }
    }

    #[test]
    fn holdings_are_ordered_absent_then_by_version_a_drop_above_its_table() {
        let order = [
            Holding::Absent,
            table(0, 1),
            dropped(0),
            table(1, 1),
            dropped(1),
            table(5, 9),
            dropped(5),
            table(6, 2),
        ];
        for (i, a) in order.iter().enumerate() {
            for (j, b) in order.iter().enumerate() {
                assert_eq!(a.at_least(b), i >= j, "{a} against {b}");
            }
        }
    }

    #[test]
    fn a_peer_newer_in_the_order_is_followed() {
        // A drop at the version held removes the table (divergence 1).
        assert_eq!(
            decide(table(5, 1), dropped(5)),
            Decision::Drop { version: 5 }
        );
        // A table put at version 0 is pulled by a server that never saw it (divergence 2).
        assert_eq!(
            decide(Holding::Absent, table(0, 1)),
            Decision::Pull { since: None }
        );
        assert_eq!(
            decide(table(3, 1), table(7, 2)),
            Decision::Pull { since: Some(3) }
        );
        assert_eq!(
            decide(dropped(3), table(7, 2)),
            Decision::Pull { since: None }
        );
        // Nothing comes back at or below its tombstone; equal content is nothing to do.
        assert_eq!(decide(dropped(5), table(5, 1)), Decision::Nothing);
        assert_eq!(decide(dropped(5), table(4, 1)), Decision::Nothing);
        assert_eq!(decide(table(5, 1), table(5, 1)), Decision::Nothing);
        assert_eq!(decide(table(5, 1), table(5, 2)), Decision::Diverged);
        assert_eq!(decide(table(6, 1), dropped(5)), Decision::Nothing);
        assert_eq!(decide(Holding::Absent, Holding::Absent), Decision::Nothing);
    }

    fn exchanged(ready: bool, advertised: &[(&str, Holding)], failures: &[&str]) -> RoundOutcome {
        RoundOutcome::Exchanged {
            peer_ready: ready,
            advertised: advertised
                .iter()
                .map(|(n, h)| ((*n).to_owned(), *h))
                .collect(),
            failures: failures.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    fn ready(v: &Verdict) -> bool {
        matches!(v, Verdict::Ready(_))
    }

    #[test]
    fn a_failed_pull_from_a_ready_peer_never_makes_a_server_ready() {
        // Divergence 5: a pull that timed out made the ready peer count as unreachable, and
        // with the other peer not ready the server declared the fleet to be starting.
        let mut rule = ReadinessRule::new(true);
        rule.on_resolution(Resolution::Peers(vec![1u32, 2]));
        let nothing = |_: &str| Holding::Absent;
        let v = rule.on_round(
            1,
            exchanged(true, &[("t", table(4, 1))], &["t: timed out"]),
            nothing,
        );
        assert!(!ready(&v), "{v:?}");
        let v = rule.on_round(2, exchanged(false, &[], &[]), nothing);
        assert!(!ready(&v), "{v:?}");
        // The ready peer, unreachable now: still not ready without its table.
        let v = rule.on_round(1, RoundOutcome::Unreachable("down".into()), nothing);
        assert!(!ready(&v), "{v:?}");
        let v = rule.on_round(2, exchanged(false, &[], &[]), nothing);
        assert!(!ready(&v), "{v:?}");
        // Holding it (pulled from the other peer, say), a round with a ready peer does it.
        let holds = |name: &str| {
            if name == "t" {
                table(4, 1)
            } else {
                Holding::Absent
            }
        };
        let v = rule.on_round(1, exchanged(true, &[("t", table(4, 1))], &[]), holds);
        assert!(ready(&v), "{v:?}");
    }

    #[test]
    fn a_peer_not_ready_once_and_ready_later_counts_as_ready() {
        let mut rule = ReadinessRule::new(true);
        rule.on_resolution(Resolution::Peers(vec![1u32, 2]));
        let nothing = |_: &str| Holding::Absent;
        assert!(!ready(&rule.on_round(
            1,
            exchanged(false, &[], &[]),
            nothing
        )));
        // Peer 1 became ready with a table; peer 2 unreachable: not a fleet starting.
        let v = rule.on_round(
            1,
            exchanged(true, &[("t", table(1, 1))], &["t: refused"]),
            nothing,
        );
        assert!(!ready(&v));
        let v = rule.on_round(2, RoundOutcome::Unreachable("down".into()), nothing);
        assert!(!ready(&v), "{v:?}");
    }

    #[test]
    fn a_fleet_starting_together_becomes_ready_and_a_name_that_fails_to_resolve_holds_it_back() {
        let nothing = |_: &str| Holding::Absent;
        let mut rule = ReadinessRule::new(true);
        rule.on_resolution(Resolution::Peers(vec![1u32, 2]));
        assert!(!ready(&rule.on_round(
            1,
            exchanged(false, &[], &[]),
            nothing
        )));
        let v = rule.on_round(2, RoundOutcome::Unreachable("down".into()), nothing);
        assert!(ready(&v), "{v:?}");

        // Divergence 5: a DNS failure is not "resolves to nothing".
        let mut rule = ReadinessRule::<u32>::new(true);
        let v = rule.on_resolution(failed(&[], "memds-peers: no such host"));
        assert!(!ready(&v), "{v:?}");
        let v = rule.on_resolution(Resolution::Peers(Vec::new()));
        assert!(ready(&v), "{v:?}");

        // Nor does a peer whose name failed to resolve let the others decide alone.
        let mut rule = ReadinessRule::new(true);
        rule.on_resolution(failed(&[1], "a name"));
        assert!(!ready(&rule.on_round(
            1u32,
            exchanged(false, &[], &[]),
            nothing
        )));
    }

    #[test]
    fn a_server_without_peers_is_ready_and_readiness_is_never_lost() {
        assert!(ReadinessRule::<u32>::new(false).is_ready());
        let mut rule = ReadinessRule::new(true);
        rule.on_resolution(Resolution::Peers(vec![1u32]));
        assert!(ready(
            &rule.on_round(1, exchanged(true, &[], &[]), |_| Holding::Absent)
        ));
        let v = rule.on_round(1, RoundOutcome::Unreachable("gone".into()), |_| {
            Holding::Absent
        });
        assert!(ready(&v));
        assert!(ready(&rule.on_resolution(failed(&[], "x"))));
    }

    fn summary(name: &str, version: u64, digest: u64, dropped: bool) -> TableSummary {
        TableSummary {
            name: name.into(),
            version,
            digest,
            dropped,
        }
    }

    #[test]
    fn a_snapshot_must_be_the_table_asked_for_at_the_advertised_version_or_later() {
        let advertised = summary("orders", 5, 9, false);
        assert_eq!(accept_snapshot("orders", 5, &advertised), Ok(()));
        assert_eq!(accept_snapshot("orders", 6, &advertised), Ok(()));
        assert!(matches!(
            accept_snapshot("users", 5, &advertised),
            Err(Refused::OtherTable { .. })
        ));
        assert_eq!(
            accept_snapshot("orders", 4, &advertised),
            Err(Refused::Older {
                advertised: 5,
                got: 4
            })
        );
    }

    #[test]
    fn a_round_pulls_and_drops_what_the_peer_holds_higher_and_a_broken_pull_ends_it_not_ready() {
        let mut m = Replicator::new(true);
        assert_eq!(m.start_round(), None, "no peer known yet");
        m.on_resolution(Resolution::Peers(vec![7u32]));
        let Some(Action::AskSummary { round, peer: 7 }) = m.start_round() else {
            panic!("a round with the only peer");
        };
        assert_eq!(m.start_round(), None, "one round at a time");
        let held = |name: &str| match name {
            "a" => table(3, 1),
            "b" => table(5, 2),
            _ => Holding::Absent,
        };
        let tables = vec![
            summary("a", 4, 1, false),
            summary("b", 5, 0, true),
            summary("c", 0, 3, false),
            summary("d", 0, 0, true),
        ];
        let plan = m.on_summary(round, Ok((true, tables)), held);
        assert_eq!(plan.verdict, None);
        let pulled: Vec<(String, Way)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Pull { entry, way, .. } => Some((entry.name.clone(), *way)),
                _ => None,
            })
            .collect();
        assert_eq!(
            pulled,
            [("a".into(), Way::Delta), ("c".into(), Way::Snapshot)]
        );
        let drops: Vec<(&str, u64)> = plan
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Drop { table, version, .. } => Some((table.as_str(), *version)),
                _ => None,
            })
            .collect();
        assert_eq!(drops, [("b", 5), ("d", 0)]);
        // No delta, then too much differs for a Merkle descent: the snapshot, which works.
        let ways: Vec<Option<Way>> = [TableResult::Next, TableResult::Next]
            .into_iter()
            .map(|r| match m.on_table(round, "a", r, held).action {
                Some(Action::Pull { way, .. }) => Some(way),
                _ => None,
            })
            .collect();
        assert_eq!(ways, [Some(Way::Merkle), Some(Way::Snapshot)]);
        let next = m.on_table(round, "a", TableResult::Done, held);
        assert_eq!((next.action, next.verdict), (None, None));
        // The connection breaks: the round ends, not ready (the ready peer's tables are not
        // all here), and later results of that round are ignored.
        let verdict = m
            .on_table(round, "b", TableResult::Broken("reset".into()), held)
            .verdict;
        assert!(matches!(verdict, Some(Verdict::NotReady(_))), "{verdict:?}");
        assert!(!m.is_current(round));
        let late = m.on_table(round, "c", TableResult::Done, held);
        assert_eq!((late.action, late.verdict), (None, None));
        // The next round, with everything held, makes it ready.
        let Some(Action::AskSummary { round, .. }) = m.start_round() else {
            panic!("the next round");
        };
        let all = |name: &str| match name {
            "a" => table(4, 1),
            "b" => dropped(5),
            "c" => table(0, 3),
            "d" => dropped(0),
            _ => Holding::Absent,
        };
        let plan = m.on_summary(round, Ok((true, vec![summary("a", 4, 1, false)])), all);
        assert!(plan.actions.is_empty());
        assert!(matches!(plan.verdict, Some(Verdict::Ready(_))), "{plan:?}");
        assert!(m.is_ready());
    }

    #[test]
    fn a_round_whose_summary_never_comes_counts_the_peer_unreachable() {
        let mut m = Replicator::new(true);
        m.on_resolution(Resolution::Peers(vec![1u32, 2]));
        let nothing = |_: &str| Holding::Absent;
        let Some(Action::AskSummary { round, peer: 1 }) = m.start_round() else {
            panic!("peer 1 first");
        };
        let v = m.on_deadline(round, nothing);
        assert!(matches!(v, Some(Verdict::NotReady(_))), "{v:?}");
        let Some(Action::AskSummary { round, peer: 2 }) = m.start_round() else {
            panic!("then peer 2");
        };
        // Peer 2 is not ready and holds nothing: a fleet starting together.
        let plan = m.on_summary(round, Ok((false, Vec::new())), nothing);
        assert!(matches!(plan.verdict, Some(Verdict::Ready(_))), "{plan:?}");
    }

    #[test]
    fn a_forward_answered_stale_conflict_or_behind_is_delivered() {
        for code in [ErrorCode::Stale, ErrorCode::Conflict, ErrorCode::Behind] {
            assert_eq!(forwarded(code), Forwarded::Delivered, "{code:?}");
        }
        for code in [
            ErrorCode::UnknownTable,
            ErrorCode::Invalid,
            ErrorCode::Overloaded,
            ErrorCode::Unavailable,
        ] {
            assert_eq!(forwarded(code), Forwarded::Refused, "{code:?}");
        }
    }

    fn failed(peers: &[u32], why: &str) -> Resolution<u32> {
        Resolution::Failed {
            peers: peers.to_vec(),
            why: why.into(),
        }
    }

    #[test]
    fn peers_behind_the_names_that_resolve_are_asked_while_another_name_fails() {
        let mut m = Replicator::new(true);
        m.on_resolution(failed(&[1], "memds-b.invalid: no such host"));
        let nothing = |_: &str| Holding::Absent;
        // Not ready with a peer that is not ready either: the unresolved name may hide a ready
        // one.
        let Some(Action::AskSummary { round, peer: 1 }) = m.start_round() else {
            panic!("the resolved peer is asked");
        };
        let plan = m.on_summary(round, Ok((false, Vec::new())), nothing);
        assert!(
            matches!(plan.verdict, Some(Verdict::NotReady(_))),
            "{plan:?}"
        );
        // Caught up with a ready one: ready.
        let Some(Action::AskSummary { round, peer: 1 }) = m.start_round() else {
            panic!("asked again");
        };
        let plan = m.on_summary(round, Ok((true, Vec::new())), nothing);
        assert!(matches!(plan.verdict, Some(Verdict::Ready(_))), "{plan:?}");
    }
}
