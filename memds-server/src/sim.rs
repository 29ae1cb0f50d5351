//! Deterministic simulation of the fleet's replication, in the manner of FoundationDB's and
//! TigerBeetle's: one seed drives several servers' replication decisions ([`replication`]),
//! their writers and disks, a faulty network, crashes and restarts, an authority and routers,
//! and checkers run after every event.
//!
//! What is real and what is simulated: the servers' tables are the real [`Tables`] and
//! [`CompactTable`]s, every write goes through the real planning rules ([`store::plan_decoded`]),
//! deltas are the real [`CompactTable::delta_since`], and every decision is [`replication`]'s.
//! Simulated: time (virtual milliseconds), the network (loss, delay and so reordering,
//! duplication, partitions), the disk (a write is durable, and only then acknowledged, when its
//! server's writer syncs; a crash loses what was not synced), peer name resolution (which may
//! fail for a while), the authority and the routers.
//!
//! Run more seeds: `MEMDS_SIM_SEEDS=5000 cargo test -p memds-server --lib sim -- --nocapture`;
//! replay one: `MEMDS_SIM_SEED=1234 cargo test -p memds-server --lib sim -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};

use memds_proto::model::BatchEdit;
use memds_proto::model::TableSpec;
use memds_proto::synth::{self, SynthConfig};
use memds_proto::wire::{ErrorCode, TableSummary};
use memds_proto::{CompactTable, NodeInterner, TableMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::replication::{self, Action, Holding, Replicator, Resolution, TableResult, Way};
use crate::store::{self, Decoded, Plan, Tables};

/// Virtual time, in milliseconds.
type Time = u64;
type ServerId = usize;

/// The knobs of one simulated run.
#[derive(Clone, Debug)]
struct SimConfig {
    servers: usize,
    tables: usize,
    routers: usize,
    /// How long faults and the authority's writes go on.
    fault_time: Time,
    /// How long, after the faults stop, every server has to converge.
    settle_time: Time,
    period: Time,
    loss: f64,
    duplicate: f64,
    max_delay: Time,
}

impl SimConfig {
    fn from_seed(rng: &mut ChaCha8Rng) -> Self {
        Self {
            servers: rng.random_range(2..=4),
            tables: rng.random_range(1..=3),
            routers: 2,
            fault_time: 30_000,
            settle_time: 60_000,
            period: 500,
            loss: [0.0, 0.02, 0.1, 0.3][rng.random_range(0..4)],
            duplicate: [0.0, 0.05][rng.random_range(0..2)],
            max_delay: [5, 50, 400][rng.random_range(0..3)],
        }
    }
}

/// A write as the simulated servers carry it.
#[derive(Clone, Debug)]
enum SimWrite {
    Put(TableMap),
    Batch(BatchEdit),
    Drop { table: String, version: u64 },
}

impl SimWrite {
    fn decoded(&self) -> Decoded<'_> {
        match self {
            SimWrite::Put(map) => Decoded::Put(map.clone()),
            SimWrite::Batch(u) => Decoded::Batch(u),
            SimWrite::Drop { table, version } => Decoded::Drop {
                table,
                version: Some(*version),
            },
        }
    }
}

/// What a pull answers.
#[derive(Clone, Debug)]
enum PullAnswer {
    Delta(BatchEdit),
    /// What a Merkle descent brings: the partitions of the blocks that differ, with only the
    /// nodes they name, at the peer's current version.
    Blocks(BatchEdit),
    Snapshot(TableMap),
    /// No delta from that version (the history is bounded), or too much differs for a Merkle
    /// descent: the next way.
    Cannot,
    Gone,
}

#[derive(Clone, Debug)]
enum Msg {
    Summary {
        round: u64,
    },
    SummaryIs {
        round: u64,
        ready: bool,
        tables: Vec<TableSummary>,
    },
    /// `base`: the puller's table, standing for the tree digests a Merkle descent compares.
    Pull {
        round: u64,
        table: String,
        way: Way,
        since: Option<u64>,
        base: Option<TableMap>,
    },
    Pulled {
        round: u64,
        table: String,
        answer: PullAnswer,
    },
    Write {
        op: u64,
        write: SimWrite,
    },
    Written {
        op: u64,
        result: Result<(), ErrorCode>,
    },
    Forward(SimWrite),
    Lookup {
        router: usize,
        table: String,
        min_version: u64,
    },
    Looked {
        router: usize,
        table: String,
        answer: Result<(u64, u64), ErrorCode>,
    },
}

/// Who a message comes from or goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Addr {
    Server(ServerId),
    Authority,
    Router(usize),
}

#[derive(Debug)]
enum Event {
    Deliver {
        from: Addr,
        to: Addr,
        msg: Msg,
    },
    /// The server's writer makes its queued writes durable and answers them.
    Sync(ServerId, u64),
    /// An anti-entropy round starts (if none is running); `u64` is the incarnation.
    Tick(ServerId, u64),
    /// A round's deadline.
    RoundDeadline(ServerId, u64),
    Crash(ServerId),
    Restart(ServerId),
    Partition {
        a: ServerId,
        b: ServerId,
        until: Time,
    },
    Authority,
    RouterLookup(usize),
    ResolveOk(ServerId, u64),
    /// A write found this server behind: a round soon (if none is running).
    CatchUp(ServerId, u64),
}

/// Who waits for a queued write.
#[derive(Clone, Debug)]
enum Waiter {
    Authority {
        op: u64,
    },
    Peer,
    Pull {
        round: u64,
        table: String,
        way: Option<Way>,
    },
}

#[derive(Debug)]
/// The round in progress, as the simulation tracks it beside the machine.
struct Round {
    /// The id messages carry.
    id: u64,
    /// The machine's round.
    machine: u64,
    peer: ServerId,
    /// What the peer advertised of each table being pulled, and the way being tried.
    pulls: BTreeMap<String, (TableSummary, Way)>,
    /// Whether its summary came (a duplicated request is answered twice, perhaps
    /// differently; only the first answer counts, for the machine as for the checker).
    answered: bool,
}

#[derive(Debug)]
struct Server {
    up: bool,
    incarnation: u64,
    /// What is on the disk, which is also what is published (the writer publishes only what
    /// is durable).
    tables: Tables,
    interner: NodeInterner,
    /// Writes queued for the writer, not yet durable.
    queued: Vec<(SimWrite, Waiter)>,
    sync_scheduled: bool,
    machine: Replicator<ServerId>,
    round: Option<Round>,
    /// What ready peers advertised to this server in this incarnation (the checker's record,
    /// kept apart from the rule's).
    advertised_by_ready: BTreeMap<String, Holding>,
}

/// The authority: the source of every table's versions.
#[derive(Debug)]
struct TableTruth {
    name: String,
    index: usize,
    /// The current state: a map, or dropped at a version; `None` before the first put.
    current: Option<Result<TableMap, u64>>,
    /// Every version's checksum.
    checksums: BTreeMap<u64, u64>,
    /// The write in flight: sent until a server acknowledges it.
    pending: Option<(u64, SimWrite, Result<TableMap, u64>)>,
    used_version_zero: bool,
    contents: u64,
}

#[derive(Debug, Default)]
struct Router {
    /// Per table: the newest version seen and its checksum.
    seen: BTreeMap<String, (u64, u64)>,
}

/// Counts of what a run did, for the report.
#[derive(Debug, Default, Clone)]
pub(crate) struct Stats {
    pub events: u64,
    pub simulated_ms: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub dropped_messages: u64,
    pub duplicated_messages: u64,
    pub writes_acknowledged: u64,
    pub lookups: u64,
}

struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    now: Time,
    seq: u64,
    events: BTreeMap<(Time, u64), Event>,
    servers: Vec<Server>,
    truth: Vec<TableTruth>,
    routers: Vec<Router>,
    cut: BTreeMap<(ServerId, ServerId), Time>,
    next_op: u64,
    stats: Stats,
    /// Every holding each server has had of each table (restarts included): never goes back.
    high_water: BTreeMap<(ServerId, String), Holding>,
    faults: bool,
    /// `MEMDS_SIM_TRACE` is set: replication's steps are printed.
    trace: bool,
}

/// Runs one seed; an error names the broken invariant.
pub(crate) fn run(seed: u64) -> Result<Stats, String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let cfg = SimConfig::from_seed(&mut rng);
    let mut sim = Sim::new(cfg, rng);
    sim.go().map_err(|e| format!("t={} ms: {e}", sim.now))?;
    Ok(sim.stats)
}

impl Sim {
    fn new(cfg: SimConfig, rng: ChaCha8Rng) -> Self {
        let servers = (0..cfg.servers)
            .map(|_| Server::fresh(0, cfg.servers > 1))
            .collect();
        let truth = (0..cfg.tables)
            .map(|index| TableTruth {
                name: synth::table_name(index),
                index,
                current: None,
                checksums: BTreeMap::new(),
                pending: None,
                used_version_zero: false,
                contents: 0,
            })
            .collect();
        let routers = (0..cfg.routers).map(|_| Router::default()).collect();
        Self {
            cfg,
            rng,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            servers,
            truth,
            routers,
            cut: BTreeMap::new(),
            next_op: 0,
            stats: Stats::default(),
            high_water: BTreeMap::new(),
            faults: true,
            trace: std::env::var_os("MEMDS_SIM_TRACE").is_some(),
        }
    }

    fn at(&mut self, delay: Time, event: Event) {
        self.seq += 1;
        self.events.insert((self.now + delay, self.seq), event);
    }

    fn go(&mut self) -> Result<(), String> {
        for s in 0..self.cfg.servers {
            self.start_server(s);
        }
        self.at(10, Event::Authority);
        for r in 0..self.cfg.routers {
            self.at(20, Event::RouterLookup(r));
        }
        let end = self.cfg.fault_time + self.cfg.settle_time;
        while let Some(((time, _), event)) = self.events.pop_first() {
            if time > end {
                break;
            }
            self.now = time;
            if self.faults && self.now >= self.cfg.fault_time {
                self.stop_faults();
            }
            self.stats.events += 1;
            self.step(event)?;
            self.check()?;
        }
        self.stats.simulated_ms = end;
        self.check_converged()
    }

    /// The faults stop: links heal, crashed servers come back, messages are no longer lost.
    fn stop_faults(&mut self) {
        self.faults = false;
        self.cut.clear();
        for s in 0..self.cfg.servers {
            if !self.servers[s].up {
                self.at(1, Event::Restart(s));
            }
        }
    }

    fn start_server(&mut self, s: ServerId) {
        let incarnation = self.servers[s].incarnation + 1;
        let tables = std::mem::take(&mut self.servers[s].tables);
        let mut server = Server::fresh(incarnation, self.cfg.servers > 1);
        // Recovery rebuilds the interner from the tables on disk.
        let mut interner = NodeInterner::default();
        let mut recovered = Tables::new();
        for (name, t) in tables.iter() {
            recovered.insert(
                name.clone(),
                std::sync::Arc::new(CompactTable::new(&t.to_map(), &mut interner)),
            );
        }
        for (name, v) in tables.tombstones() {
            if recovered.get(name).is_none() {
                recovered.remove(name, v);
            }
        }
        server.tables = recovered;
        server.interner = interner;
        self.servers[s] = server;
        // Name resolution: at once, or failing for a while first, some names (so some peers)
        // resolving meanwhile.
        let resolve_after = if self.faults && self.rng.random_bool(0.3) {
            let peers: Vec<ServerId> = self
                .peers_of(s)
                .into_iter()
                .filter(|_| self.rng.random_bool(0.5))
                .collect();
            let failed = Resolution::Failed {
                peers,
                why: "a peer name: no such host".into(),
            };
            let _: crate::replication::Verdict = self.servers[s].machine.on_resolution(failed);
            self.rng.random_range(100..3_000)
        } else {
            1
        };
        self.at(resolve_after, Event::ResolveOk(s, incarnation));
        let first = self.rng.random_range(1..self.cfg.period);
        self.at(first, Event::Tick(s, incarnation));
    }

    fn step(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Event::Sync(s, inc) => {
                if self.servers[s].up && self.servers[s].incarnation == inc {
                    self.sync(s)?;
                }
                Ok(())
            }
            Event::Tick(s, inc) => {
                if self.servers[s].up && self.servers[s].incarnation == inc {
                    self.start_round(s);
                    let period = self.cfg.period;
                    self.at(period, Event::Tick(s, inc));
                }
                Ok(())
            }
            Event::CatchUp(s, inc) => {
                if self.servers[s].up && self.servers[s].incarnation == inc {
                    self.start_round(s);
                }
                Ok(())
            }
            Event::RoundDeadline(s, id) => {
                if let Some((round, _)) = self.round_of(s, id) {
                    let server = &mut self.servers[s];
                    let held = &server.tables;
                    let verdict = server
                        .machine
                        .on_deadline(round, |n| Holding::held(held, n));
                    self.trace(s, format_args!("round {id} deadline: {verdict:?}"));
                    self.round_ended(s);
                }
                Ok(())
            }
            Event::ResolveOk(s, inc) => {
                if self.servers[s].up && self.servers[s].incarnation == inc {
                    let peers = self.peers_of(s);
                    let verdict = self.servers[s]
                        .machine
                        .on_resolution(Resolution::Peers(peers));
                    self.trace(s, format_args!("resolved: {verdict:?}"));
                }
                Ok(())
            }
            Event::Crash(s) => {
                if self.servers[s].up {
                    self.stats.crashes += 1;
                    // What the writer had not synced is lost; so is everything in memory.
                    let server = &mut self.servers[s];
                    server.up = false;
                    server.queued.clear();
                    server.round = None;
                    let down_for = self.rng.random_range(200..5_000);
                    self.at(down_for, Event::Restart(s));
                }
                Ok(())
            }
            Event::Restart(s) => {
                if !self.servers[s].up {
                    self.start_server(s);
                }
                Ok(())
            }
            Event::Partition { a, b, until } => {
                self.stats.partitions += 1;
                self.cut.insert((a.min(b), a.max(b)), until);
                Ok(())
            }
            Event::Authority => {
                self.authority_step();
                self.random_fault();
                let next = self.rng.random_range(20..200);
                self.at(next, Event::Authority);
                Ok(())
            }
            Event::RouterLookup(r) => {
                self.router_lookup(r);
                let next = self.rng.random_range(50..300);
                self.at(next, Event::RouterLookup(r));
                Ok(())
            }
        }
    }

    fn peers_of(&self, s: ServerId) -> Vec<ServerId> {
        (0..self.cfg.servers).filter(|&p| p != s).collect()
    }

    fn random_fault(&mut self) {
        if !self.faults {
            return;
        }
        let n = self.cfg.servers;
        if self.rng.random_bool(0.03) {
            let s = self.rng.random_range(0..n);
            self.at(0, Event::Crash(s));
        }
        if n > 1 && self.rng.random_bool(0.02) {
            let a = self.rng.random_range(0..n);
            let b = (a + self.rng.random_range(1..n)) % n;
            let until = self.now + self.rng.random_range(500..8_000);
            self.at(0, Event::Partition { a, b, until });
        }
    }

    /// Sends a message through the simulated network.
    fn send(&mut self, from: Addr, to: Addr, msg: Msg) {
        if let (Addr::Server(a), Addr::Server(b)) = (from, to)
            && self
                .cut
                .get(&(a.min(b), a.max(b)))
                .is_some_and(|&until| until > self.now)
        {
            self.stats.dropped_messages += 1;
            return;
        }
        if self.faults && self.rng.random_bool(self.cfg.loss) {
            self.stats.dropped_messages += 1;
            return;
        }
        let copies = if self.faults && self.rng.random_bool(self.cfg.duplicate) {
            self.stats.duplicated_messages += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.rng.random_range(1..=self.cfg.max_delay);
            self.at(
                delay,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                },
            );
        }
    }

    fn deliver(&mut self, from: Addr, to: Addr, msg: Msg) -> Result<(), String> {
        match to {
            Addr::Server(s) if !self.servers[s].up => Ok(()),
            Addr::Server(s) => self.server_receives(s, from, msg),
            Addr::Authority => {
                if let Msg::Written { op, result } = msg {
                    self.authority_answered(op, result)?;
                }
                Ok(())
            }
            Addr::Router(r) => {
                if let Msg::Looked {
                    router,
                    table,
                    answer: Ok((version, checksum)),
                } = msg
                {
                    debug_assert_eq!(router, r);
                    let seen = self.routers[r]
                        .seen
                        .entry(table)
                        .or_insert((version, checksum));
                    // A router never applies an older route.
                    if version >= seen.0 {
                        *seen = (version, checksum);
                    }
                }
                Ok(())
            }
        }
    }

    fn server_receives(&mut self, s: ServerId, from: Addr, msg: Msg) -> Result<(), String> {
        match msg {
            Msg::Summary { round } => {
                let server = &self.servers[s];
                let tables = replication::summary_entries(&server.tables);
                let ready = server.machine.is_ready();
                self.send(
                    Addr::Server(s),
                    from,
                    Msg::SummaryIs {
                        round,
                        ready,
                        tables,
                    },
                );
            }
            Msg::SummaryIs {
                round,
                ready,
                tables,
            } => self.summary_received(s, round, ready, tables)?,
            Msg::Pull {
                round,
                table,
                way,
                since,
                base,
            } => {
                // A delta or a descent is sometimes not to be had (the history is bounded;
                // too much may differ), so that every way is exercised.
                let can = self.rng.random_bool(0.7);
                let answer = match (self.servers[s].tables.get(&table), way) {
                    (None, _) => PullAnswer::Gone,
                    (Some(t), Way::Delta) => match since.and_then(|v| t.delta_since(v)) {
                        Some(delta) if can => PullAnswer::Delta(delta),
                        _ => PullAnswer::Cannot,
                    },
                    (Some(t), Way::Merkle) => match base.and_then(|b| blocks(&b, &t.to_map())) {
                        Some(blocks) if can => PullAnswer::Blocks(blocks),
                        _ => PullAnswer::Cannot,
                    },
                    (Some(t), Way::Snapshot) => PullAnswer::Snapshot(t.to_map()),
                };
                self.send(
                    Addr::Server(s),
                    from,
                    Msg::Pulled {
                        round,
                        table,
                        answer,
                    },
                );
            }
            Msg::Pulled {
                round,
                table,
                answer,
            } => self.pulled(s, round, table, answer),
            Msg::Write { op, write } => self.queue(s, write, Waiter::Authority { op }),
            Msg::Forward(write) => self.queue(s, write, Waiter::Peer),
            Msg::Lookup {
                router,
                table,
                min_version,
            } => {
                let server = &self.servers[s];
                let answer = if !server.machine.is_ready() {
                    Err(ErrorCode::Unavailable)
                } else {
                    match Holding::held(&server.tables, &table) {
                        Holding::Table { version, checksum } if version >= min_version => {
                            Ok((version, checksum))
                        }
                        Holding::Table { .. } => Err(ErrorCode::Behind),
                        Holding::Dropped { version } if version >= min_version => {
                            Err(ErrorCode::UnknownTable)
                        }
                        Holding::Dropped { .. } | Holding::Absent => Err(ErrorCode::Behind),
                    }
                };
                if let Ok((version, _)) = answer
                    && version < min_version
                {
                    return Err(format!(
                        "server {s} answered {table} at version {version} to a router that saw {min_version}"
                    ));
                }
                self.send(
                    Addr::Server(s),
                    from,
                    Msg::Looked {
                        router,
                        table,
                        answer,
                    },
                );
            }
            Msg::Written { .. } | Msg::Looked { .. } => {}
        }
        Ok(())
    }

    fn queue(&mut self, s: ServerId, write: SimWrite, waiter: Waiter) {
        let server = &mut self.servers[s];
        server.queued.push((write, waiter));
        if !server.sync_scheduled {
            server.sync_scheduled = true;
            let inc = server.incarnation;
            let delay = self.rng.random_range(1..20);
            self.at(delay, Event::Sync(s, inc));
        }
    }

    /// The writer: plans every queued write against the tables, in order, makes the result
    /// durable, then answers.
    fn sync(&mut self, s: ServerId) -> Result<(), String> {
        let queued = std::mem::take(&mut self.servers[s].queued);
        self.servers[s].sync_scheduled = false;
        let mut answers = Vec::new();
        for (write, waiter) in queued {
            let server = &mut self.servers[s];
            let result =
                match store::plan_decoded(&server.tables, write.decoded(), &mut server.interner) {
                    Ok(Plan::Install(t)) => {
                        server
                            .tables
                            .insert(t.name().as_str().to_owned(), std::sync::Arc::new(t));
                        Ok(true)
                    }
                    Ok(Plan::Remove { table, version }) => {
                        server.tables.remove(&table, version);
                        Ok(true)
                    }
                    Ok(Plan::AlreadyDropped { .. } | Plan::Unchanged { .. }) => Ok(false),
                    Err(e) => Err(e.code),
                };
            answers.push((write, waiter, result));
        }
        for (write, waiter, result) in answers {
            match waiter {
                Waiter::Authority { op } => {
                    if result == Ok(true) {
                        for p in self.peers_of(s) {
                            self.send(
                                Addr::Server(s),
                                Addr::Server(p),
                                Msg::Forward(write.clone()),
                            );
                        }
                    }
                    if result == Err(ErrorCode::Behind) {
                        self.catch_up(s);
                    }
                    self.send(
                        Addr::Server(s),
                        Addr::Authority,
                        Msg::Written {
                            op,
                            result: result.map(|_| ()),
                        },
                    );
                }
                Waiter::Peer => {
                    if result == Err(ErrorCode::Behind) {
                        self.catch_up(s);
                    }
                    // The authority's versions are serial: a conflict means a server broke
                    // the rules. The forwarder counts as refused only what anti-entropy then
                    // carries (an update of a table the peer has not seen yet).
                    match result {
                        Ok(_) => {}
                        Err(code @ ErrorCode::Conflict) => {
                            return Err(format!(
                                "server {s} found a forwarded write in conflict: {code:?} ({write:?})"
                            ));
                        }
                        Err(code) => {
                            if replication::forwarded(code) == replication::Forwarded::Refused
                                && code != ErrorCode::UnknownTable
                            {
                                return Err(format!(
                                    "server {s} refused a forwarded write: {code:?} ({write:?})"
                                ));
                            }
                        }
                    }
                }
                Waiter::Pull { round, table, way } => {
                    let done = match (result, way) {
                        (Ok(_) | Err(ErrorCode::Stale), _) => TableResult::Done,
                        // A pulled batch the writer refuses: the next way.
                        (Err(_), Some(Way::Delta | Way::Merkle)) => TableResult::Next,
                        (Err(code), Some(Way::Snapshot) | None) => {
                            TableResult::Failed(format!("the writer refused the pull ({code:?})"))
                        }
                    };
                    self.table_done(s, round, &table, done);
                }
            }
        }
        Ok(())
    }

    /// A write this server could not apply for lack of its base: a round soon.
    fn catch_up(&mut self, s: ServerId) {
        let inc = self.servers[s].incarnation;
        self.at(50, Event::CatchUp(s, inc));
    }

    /// A tick: the machine starts a round if it will.
    fn start_round(&mut self, s: ServerId) {
        let Some(Action::AskSummary { round, peer }) = self.servers[s].machine.start_round() else {
            return;
        };
        // Messages name rounds by an id unique across incarnations, so no answer to an old
        // incarnation's round is taken for one of the new.
        self.seq += 1;
        let id = self.seq;
        self.servers[s].round = Some(Round {
            id,
            machine: round,
            peer,
            pulls: BTreeMap::new(),
            answered: false,
        });
        self.send(
            Addr::Server(s),
            Addr::Server(peer),
            Msg::Summary { round: id },
        );
        let deadline = self.cfg.period * 3;
        self.at(deadline, Event::RoundDeadline(s, id));
    }

    /// The round in progress if it is `id`: its machine round and peer.
    fn round_of(&self, s: ServerId, id: u64) -> Option<(u64, ServerId)> {
        self.servers[s]
            .round
            .as_ref()
            .filter(|r| r.id == id)
            .map(|r| (r.machine, r.peer))
    }

    /// Forgets the round once the machine ended it.
    fn round_ended(&mut self, s: ServerId) {
        let server = &mut self.servers[s];
        if let Some(r) = &server.round
            && !server.machine.is_current(r.machine)
        {
            server.round = None;
        }
    }

    fn summary_received(
        &mut self,
        s: ServerId,
        id: u64,
        ready: bool,
        tables: Vec<TableSummary>,
    ) -> Result<(), String> {
        let Some((round, peer)) = self.round_of(s, id) else {
            return Ok(());
        };
        match self.servers[s].round.as_mut() {
            Some(r) if !r.answered => r.answered = true,
            _ => return Ok(()),
        }
        if ready && !self.servers[s].machine.is_ready() {
            let record = &mut self.servers[s].advertised_by_ready;
            for e in &tables {
                let h = Holding::advertised(e);
                let slot = record.entry(e.name.clone()).or_insert(h);
                if !slot.at_least(&h) {
                    *slot = h;
                }
            }
        }
        let server = &mut self.servers[s];
        let held = &server.tables;
        let holdings: Vec<String> = tables
            .iter()
            .map(|e| format!("{} {}", e.name, Holding::advertised(e)))
            .collect();
        let plan = server
            .machine
            .on_summary(round, Ok((ready, tables)), |n| Holding::held(held, n));
        self.trace(
            s,
            format_args!(
                "round {id}: server {peer} (ready: {ready}) holds {holdings:?}: {:?} {:?}",
                plan.actions.iter().map(short_action).collect::<Vec<_>>(),
                plan.verdict
            ),
        );
        for action in plan.actions {
            match action {
                Action::AskSummary { .. } => {}
                Action::Diverged { table, version } => {
                    return Err(format!(
                        "servers {s} and {peer} hold {table} at version {version} with other content"
                    ));
                }
                Action::Drop { table, version, .. } => {
                    let write = SimWrite::Drop {
                        table: table.clone(),
                        version,
                    };
                    let waiter = Waiter::Pull {
                        round: id,
                        table,
                        way: None,
                    };
                    self.queue(s, write, waiter);
                }
                Action::Pull { entry, way, .. } => self.send_pull(s, id, entry, way),
            }
        }
        self.round_ended(s);
        Ok(())
    }

    /// Pulls `entry`'s table one way (the machine's choice), from the round's peer.
    fn send_pull(&mut self, s: ServerId, id: u64, entry: TableSummary, way: Way) {
        let Some((_, peer)) = self.round_of(s, id) else {
            return;
        };
        let held = self.servers[s].tables.get(&entry.name).cloned();
        // As the server's shell: a forward brought as much or more meanwhile.
        if held
            .as_ref()
            .is_some_and(|t| t.version().get() >= entry.version)
        {
            self.table_done(s, id, &entry.name, TableResult::Done);
            return;
        }
        let msg = Msg::Pull {
            round: id,
            table: entry.name.clone(),
            way,
            since: held.as_ref().map(|t| t.version().get()),
            base: held.filter(|_| way == Way::Merkle).map(|t| t.to_map()),
        };
        if let Some(r) = self.servers[s].round.as_mut() {
            r.pulls.insert(entry.name.clone(), (entry, way));
        }
        self.send(Addr::Server(s), Addr::Server(peer), msg);
    }

    fn pulled(&mut self, s: ServerId, id: u64, table: String, answer: PullAnswer) {
        let Some((advertised, way)) = self.servers[s]
            .round
            .as_ref()
            .filter(|r| r.id == id)
            .and_then(|r| r.pulls.get(&table))
            .cloned()
        else {
            return;
        };
        let waiter = Waiter::Pull {
            round: id,
            table: table.clone(),
            way: Some(way),
        };
        match answer {
            PullAnswer::Gone => self.table_done(s, id, &table, TableResult::Done),
            PullAnswer::Cannot => self.table_done(s, id, &table, TableResult::Next),
            PullAnswer::Snapshot(map) => {
                match replication::accept_snapshot(
                    map.name().as_str(),
                    map.version().get(),
                    &advertised,
                ) {
                    Ok(()) => self.queue(s, SimWrite::Put(map), waiter),
                    Err(e) => self.table_done(s, id, &table, TableResult::Failed(e.to_string())),
                }
            }
            PullAnswer::Delta(delta) | PullAnswer::Blocks(delta) => {
                let ours = self.servers[s].tables.get(&table).cloned();
                let rebuilt = ours.and_then(|t| t.apply(&delta, &mut NodeInterner::default()).ok());
                match rebuilt.map(|t| replication::accept_rebuilt(&t, &advertised)) {
                    Some(Ok(())) => self.queue(s, SimWrite::Batch(delta), waiter),
                    // The changes would not give the advertised table: the next way.
                    _ => self.table_done(s, id, &table, TableResult::Next),
                }
            }
        }
    }

    fn table_done(&mut self, s: ServerId, id: u64, table: &str, result: TableResult) {
        let Some((round, _)) = self.round_of(s, id) else {
            return;
        };
        let server = &mut self.servers[s];
        let held = &server.tables;
        let now = Holding::held(held, table);
        let next = server
            .machine
            .on_table(round, table, result.clone(), |n| Holding::held(held, n));
        self.trace(
            s,
            format_args!("round {id}: {table} {result:?}, held {now}: {next:?}"),
        );
        if let Some(Action::Pull { entry, way, .. }) = next.action {
            self.send_pull(s, id, entry, way);
        }
        self.round_ended(s);
    }

    /// With `MEMDS_SIM_TRACE` set, says what happened on server `s`.
    fn trace(&self, s: ServerId, what: std::fmt::Arguments<'_>) {
        if self.trace {
            eprintln!("{:>7} ms server {s}: {what}", self.now);
        }
    }

    fn authority_step(&mut self) {
        let t = self.rng.random_range(0..self.truth.len());
        if let Some((op, write, _)) = self.truth[t].pending.clone() {
            // Not acknowledged yet: send it again, to any server.
            self.send_write(op, write);
            return;
        }
        if !self.faults {
            return;
        }
        let truth = &mut self.truth[t];
        truth.contents += 1;
        let contents = truth.contents;
        let next_version = |v: u64| v + 1;
        let (write, after) = match truth.current.clone() {
            // Create, at version 0 the first time now and then.
            None => {
                let version = if self.rng.random_bool(0.5) { 0 } else { 1 };
                truth.used_version_zero |= version == 0;
                let map = make_map(truth.index, contents, version);
                (SimWrite::Put(map.clone()), Ok(map))
            }
            Some(Err(dropped)) => {
                let map = make_map(truth.index, contents, next_version(dropped));
                (SimWrite::Put(map.clone()), Ok(map))
            }
            Some(Ok(map)) => {
                let v = map.version().get();
                match self.rng.random_range(0..10) {
                    0 => (
                        SimWrite::Drop {
                            table: truth.name.clone(),
                            version: v,
                        },
                        Err(v),
                    ),
                    1..=2 => {
                        let moved = move_node(&map, v + 1, contents);
                        (SimWrite::Put(moved.clone()), Ok(moved))
                    }
                    3..=4 => {
                        let fresh = make_map(truth.index, contents, v + 1);
                        (SimWrite::Put(fresh.clone()), Ok(fresh))
                    }
                    _ => {
                        let i = self.rng.random_range(0..map.partitions().len());
                        let new_id = 1_000_000 + contents;
                        let mut update: BatchEdit = synth::split_update(&map, i, new_id).into();
                        update.version = v + 1;
                        update.base_version = v;
                        let mut interner = NodeInterner::default();
                        let after = CompactTable::new(&map, &mut interner)
                            .apply(&update, &mut interner)
                            .expect("a split of a valid map applies")
                            .to_map();
                        (SimWrite::Batch(update), Ok(after))
                    }
                }
            }
        };
        if let Ok(m) = &after {
            let checksum = CompactTable::new(m, &mut NodeInterner::default()).checksum();
            truth.checksums.insert(m.version().get(), checksum);
        }
        self.next_op += 1;
        let op = self.next_op;
        self.truth[t].pending = Some((op, write.clone(), after));
        self.send_write(op, write);
    }

    fn send_write(&mut self, op: u64, write: SimWrite) {
        let s = self.rng.random_range(0..self.cfg.servers);
        self.send(Addr::Authority, Addr::Server(s), Msg::Write { op, write });
    }

    fn authority_answered(&mut self, op: u64, result: Result<(), ErrorCode>) -> Result<(), String> {
        let Some(t) = self
            .truth
            .iter()
            .position(|t| t.pending.as_ref().is_some_and(|(o, ..)| *o == op))
        else {
            return Ok(());
        };
        match result {
            Ok(()) => {
                let (_, _, after) = self.truth[t].pending.take().expect("found above");
                self.truth[t].current = Some(after);
                self.stats.writes_acknowledged += 1;
                Ok(())
            }
            // Behind, or not ready: the authority tries again elsewhere.
            Err(ErrorCode::Behind | ErrorCode::Unavailable | ErrorCode::UnknownTable) => Ok(()),
            // The authority's versions are its own: stale or conflict means a server broke
            // the rules.
            Err(code) => Err(format!(
                "a server refused the authority's write {op} of {}: {code:?}",
                self.truth[t].name
            )),
        }
    }

    fn router_lookup(&mut self, r: usize) {
        let t = self.rng.random_range(0..self.truth.len());
        let table = self.truth[t].name.clone();
        let min_version = self.routers[r].seen.get(&table).map_or(0, |&(v, _)| v);
        let s = self.rng.random_range(0..self.cfg.servers);
        self.stats.lookups += 1;
        self.send(
            Addr::Router(r),
            Addr::Server(s),
            Msg::Lookup {
                router: r,
                table,
                min_version,
            },
        );
    }

    /// The invariants, after every event.
    fn check(&mut self) -> Result<(), String> {
        for s in 0..self.cfg.servers {
            let server = &self.servers[s];
            for truth in &self.truth {
                let held = Holding::held(&server.tables, &truth.name);
                // No server's holding of a table goes back, restarts included.
                let key = (s, truth.name.clone());
                if let Some(before) = self.high_water.get(&key)
                    && !held.at_least(before)
                {
                    return Err(format!(
                        "server {s} went back on {}: held {before}, now {held}",
                        truth.name
                    ));
                }
                self.high_water.insert(key, held);
                // Equal versions mean equal content, node list included: the authority's.
                if let Holding::Table { version, checksum } = held
                    && truth.checksums.get(&version) != Some(&checksum)
                {
                    return Err(format!(
                        "server {s} holds {} at version {version} with content the authority never wrote",
                        truth.name
                    ));
                }
            }
            // A ready server holds everything ready peers advertised to it.
            if server.up && server.machine.is_ready() {
                for (name, need) in &server.advertised_by_ready {
                    let held = Holding::held(&server.tables, name);
                    if !held.at_least(need) {
                        return Err(format!(
                            "server {s} is ready holding {name} as {held}, below the {need} a ready peer advertised"
                        ));
                    }
                }
                self.servers[s].advertised_by_ready.clear();
            }
        }
        Ok(())
    }

    /// Once the faults stopped, every server holds what the authority last wrote, is ready,
    /// and every router holds the authority's routes.
    fn check_converged(&self) -> Result<(), String> {
        for truth in &self.truth {
            if let Some((op, ..)) = &truth.pending {
                return Err(format!(
                    "the authority's write {op} of {} was never acknowledged",
                    truth.name
                ));
            }
            let want = match &truth.current {
                None => Holding::Absent,
                Some(Err(v)) => Holding::Dropped { version: *v },
                Some(Ok(m)) => Holding::Table {
                    version: m.version().get(),
                    checksum: truth.checksums[&m.version().get()],
                },
            };
            for (s, server) in self.servers.iter().enumerate() {
                let held = Holding::held(&server.tables, &truth.name);
                if held != want {
                    return Err(format!(
                        "after {} s without faults server {s} holds {} as {held}, the authority as {want}",
                        self.cfg.settle_time / 1000,
                        truth.name
                    ));
                }
            }
            if let Holding::Table { version, checksum } = want {
                for (r, router) in self.routers.iter().enumerate() {
                    let seen = router.seen.get(&truth.name);
                    if seen != Some(&(version, checksum)) {
                        return Err(format!(
                            "router {r} ends with {} as {seen:?}, the authority's is version {version}",
                            truth.name
                        ));
                    }
                }
            }
        }
        for (s, server) in self.servers.iter().enumerate() {
            if !server.machine.is_ready() {
                return Err(format!("server {s} is not ready after the faults stopped"));
            }
        }
        Ok(())
    }
}

impl Server {
    fn fresh(incarnation: u64, has_peers: bool) -> Self {
        Self {
            up: true,
            incarnation,
            tables: Tables::new(),
            interner: NodeInterner::default(),
            queued: Vec::new(),
            sync_scheduled: false,
            machine: Replicator::new(has_peers),
            round: None,
            advertised_by_ready: BTreeMap::new(),
        }
    }
}

/// An action, in a trace.
fn short_action(a: &Action<ServerId>) -> String {
    match a {
        Action::AskSummary { peer, .. } => format!("ask {peer}"),
        Action::Pull { entry, way, .. } => format!("pull {} by {way:?}", entry.name),
        Action::Drop { table, version, .. } => format!("drop {table} at {version}"),
        Action::Diverged { table, version } => format!("diverged {table} {version}"),
    }
}

/// What a Merkle descent of `ours` against `theirs` would pull: for each of our partitions whose
/// span holds other partitions in theirs, their partitions there, with only the nodes those
/// name (as get-ranges answers), at their version. `None` when nothing differs in partitions or
/// the spans do not align (the real descent then pulls the snapshot).
fn blocks(ours: &TableMap, theirs: &TableMap) -> Option<BatchEdit> {
    let (ours_spec, theirs_spec) = (TableSpec::from(ours), TableSpec::from(theirs));
    let end_of = |spec: &TableSpec, i: usize| {
        spec.partitions
            .get(i + 1)
            .map_or(u64::MAX, |next| next.start - 1)
    };
    let mut ranges = Vec::new();
    for (i, p) in ours_spec.partitions.iter().enumerate() {
        let end = end_of(&ours_spec, i);
        let inside: Vec<_> = theirs_spec
            .partitions
            .iter()
            .filter(|q| q.start >= p.start && q.start <= end)
            .cloned()
            .collect();
        if inside.first().map(|q| q.start) != Some(p.start) {
            return None;
        }
        if inside.len() != 1 || inside[0] != *p {
            ranges.push(memds_proto::model::RangeEdit {
                end_inclusive: end,
                partitions: inside,
            });
        }
    }
    if ranges.is_empty() {
        return None;
    }
    let named: BTreeSet<u32> = ranges
        .iter()
        .flat_map(|r| r.partitions.iter().flat_map(|p| p.replicas.iter().copied()))
        .collect();
    Some(BatchEdit {
        table: theirs_spec.table.clone(),
        base_version: ours_spec.version,
        version: theirs_spec.version,
        nodes: theirs_spec
            .nodes
            .into_iter()
            .filter(|n| named.contains(&n.id))
            .collect(),
        ranges,
    })
}

/// Table `index`'s map number `contents`, at `version`.
fn make_map(index: usize, contents: u64, version: u64) -> TableMap {
    let cfg = SynthConfig {
        seed: contents,
        tables: index + 1,
        partitions: 24 * (index + 1),
        ..SynthConfig::default()
    };
    let mut spec = TableSpec::from(&synth::generate_table(&cfg, index));
    spec.version = version;
    TableMap::try_from(spec).expect("a synthetic map is valid")
}

/// `map` at `version` with one storage node at a new address: same ids, same partitions.
fn move_node(map: &TableMap, version: u64, contents: u64) -> TableMap {
    let mut spec = TableSpec::from(map);
    spec.version = version;
    let i = (contents as usize) % spec.nodes.len();
    spec.nodes[i].addr = format!("10.9.{}.{}:7000", contents % 250, i % 250);
    TableMap::try_from(spec).expect("a moved node keeps the map valid")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::Decision;

    /// Seeds run by the test suite; `MEMDS_SIM_SEEDS` runs more, `MEMDS_SIM_SEED` one.
    const CI_SEEDS: u64 = 300;

    #[test]
    fn the_fleet_keeps_its_promises_under_simulated_faults() {
        let seeds: Vec<u64> = match std::env::var("MEMDS_SIM_SEED") {
            Ok(one) => vec![one.parse().expect("MEMDS_SIM_SEED is a number")],
            Err(_) => {
                let n = std::env::var("MEMDS_SIM_SEEDS")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(CI_SEEDS);
                (0..n).collect()
            }
        };
        let mut total = Stats::default();
        for &seed in &seeds {
            match run(seed) {
                Ok(stats) => {
                    total.events += stats.events;
                    total.simulated_ms += stats.simulated_ms;
                    total.crashes += stats.crashes;
                    total.partitions += stats.partitions;
                    total.dropped_messages += stats.dropped_messages;
                    total.duplicated_messages += stats.duplicated_messages;
                    total.writes_acknowledged += stats.writes_acknowledged;
                    total.lookups += stats.lookups;
                }
                Err(e) => panic!(
                    "seed {seed} broke an invariant: {e}\nreplay: MEMDS_SIM_SEED={seed} cargo test -p memds-server --lib sim -- --nocapture"
                ),
            }
        }
        println!(
            "sim: {} seeds clean: {:.1} simulated hours, {} events, {} crashes, {} partitions, {} messages lost, {} duplicated, {} writes acknowledged, {} router lookups",
            seeds.len(),
            total.simulated_ms as f64 / 3_600_000.0,
            total.events,
            total.crashes,
            total.partitions,
            total.dropped_messages,
            total.duplicated_messages,
            total.writes_acknowledged,
            total.lookups
        );
        assert!(total.writes_acknowledged > 0 && total.crashes > 0);
    }

    #[test]
    fn a_seed_replays_exactly() {
        let a = run(7).expect("seed 7");
        let b = run(7).expect("seed 7");
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }

    /// The small core, exhaustively (in the manner of a model checker): three servers, one
    /// table, the authority's five writes (a put at version 0, a split, a node moved, a drop at
    /// the held version, a re-create), each sent to any server, forwarded to the others by
    /// messages that may arrive in any order or never, and anti-entropy pulls between any two
    /// servers at any moment. Every reachable state is visited once; on every transition no
    /// server goes back; from every state where no message is left, anti-entropy alone brings
    /// every server to the authority's last acknowledged write.
    #[test]
    fn every_interleaving_of_writes_forwards_and_pulls_of_a_small_fleet_converges() {
        const SERVERS: usize = 3;
        let m0 = make_map(0, 1, 0);
        let mut interner = NodeInterner::default();
        let mut split: BatchEdit = synth::split_update(&m0, 3, 1_000_001).into();
        (split.base_version, split.version) = (0, 1);
        let m1 = CompactTable::new(&m0, &mut interner)
            .apply(&split, &mut interner)
            .expect("a valid split")
            .to_map();
        let m2 = move_node(&m1, 2, 7);
        let m3 = make_map(0, 2, 3);
        let name = m0.name().as_str().to_owned();
        let ops = [
            SimWrite::Put(m0.clone()),
            SimWrite::Batch(split),
            SimWrite::Put(m2.clone()),
            SimWrite::Drop {
                table: name.clone(),
                version: 2,
            },
            SimWrite::Put(m3.clone()),
        ];
        let maps = [m0, m1, m2, m3];
        let checksum = |m: &TableMap| CompactTable::new(m, &mut NodeInterner::default()).checksum();
        // What the authority holds after each write.
        let table_at = |v: usize| Holding::Table {
            version: v as u64,
            checksum: checksum(&maps[v]),
        };
        let after = [
            table_at(0),
            table_at(1),
            table_at(2),
            Holding::Dropped { version: 2 },
            table_at(3),
        ];
        // A server's tables, rebuilt from its holding (the content of a version is the
        // authority's).
        let tables_of = |h: Holding| {
            let mut t = Tables::new();
            match h {
                Holding::Absent => {}
                Holding::Table { version, .. } => {
                    let map = &maps[usize::try_from(version).expect("small")];
                    let table = CompactTable::new(map, &mut NodeInterner::default());
                    t.insert(name.clone(), std::sync::Arc::new(table));
                }
                Holding::Dropped { version } => {
                    t.remove(&name, version);
                }
            }
            t
        };
        let apply_uncached = |h: Holding, write: &SimWrite| -> Option<Holding> {
            let mut t = tables_of(h);
            match store::plan_decoded(&t, write.decoded(), &mut NodeInterner::default()) {
                Ok(Plan::Install(table)) => {
                    t.insert(name.clone(), std::sync::Arc::new(table));
                }
                Ok(Plan::Remove { table, version }) => {
                    t.remove(&table, version);
                }
                Ok(Plan::AlreadyDropped { .. } | Plan::Unchanged { .. }) | Err(_) => return None,
            }
            Some(Holding::held(&t, &name))
        };
        // Holdings take a handful of values: what a write does to each is computed once.
        let applied = std::cell::RefCell::new(std::collections::HashMap::new());
        let apply = |h: Holding, op: usize| -> Option<Holding> {
            *applied
                .borrow_mut()
                .entry((h, op))
                .or_insert_with(|| apply_uncached(h, &ops[op]))
        };
        // What a pull of `from`'s table by `to` does, by the replication rules.
        let pull_uncached = |to: Holding, from: Holding| -> Option<Holding> {
            match replication::decide(to, from) {
                Decision::Nothing => None,
                Decision::Diverged => panic!("divergence: {to} against {from}"),
                Decision::Drop { version } => apply_uncached(
                    to,
                    &SimWrite::Drop {
                        table: name.clone(),
                        version,
                    },
                ),
                Decision::Pull { .. } => {
                    let Holding::Table { version, .. } = from else {
                        unreachable!("a pull is of a table")
                    };
                    let map = maps[usize::try_from(version).expect("small")].clone();
                    apply_uncached(to, &SimWrite::Put(map))
                }
            }
        };

        let pulled = std::cell::RefCell::new(std::collections::HashMap::new());
        let pull = |to: Holding, from: Holding| -> Option<Holding> {
            *pulled
                .borrow_mut()
                .entry((to, from))
                .or_insert_with(|| pull_uncached(to, from))
        };

        /// Holdings, the next write, and the forwards in flight (to, write), sorted.
        type State = ([Holding; SERVERS], usize, Vec<(usize, usize)>);
        let start: State = ([Holding::Absent; SERVERS], 0, Vec::new());
        let mut seen: std::collections::HashSet<State> = std::collections::HashSet::new();
        let mut todo = vec![start];
        let mut finals = 0;
        while let Some((held, next, bag)) = todo.pop() {
            if !seen.insert((held, next, bag.clone())) {
                continue;
            }
            let mut successors: Vec<State> = Vec::new();
            // The authority's next write, to any server that takes it.
            if next < ops.len() {
                for i in 0..SERVERS {
                    if let Some(h) = apply(held[i], next) {
                        let mut held2 = held;
                        held2[i] = h;
                        let mut bag2 = bag.clone();
                        bag2.extend((0..SERVERS).filter(|&p| p != i).map(|p| (p, next)));
                        bag2.sort_unstable();
                        successors.push((held2, next + 1, bag2));
                    }
                }
            }
            // A forward delivered, or lost.
            for k in 0..bag.len() {
                let (to, op) = bag[k];
                let mut bag2 = bag.clone();
                bag2.remove(k);
                let mut held2 = held;
                if let Some(h) = apply(held[to], op) {
                    held2[to] = h;
                }
                successors.push((held2, next, bag2.clone()));
                successors.push((held, next, bag2));
            }
            // A pull between any two servers.
            for to in 0..SERVERS {
                for from in (0..SERVERS).filter(|&f| f != to) {
                    if let Some(h) = pull(held[to], held[from]) {
                        let mut held2 = held;
                        held2[to] = h;
                        successors.push((held2, next, bag.clone()));
                    }
                }
            }
            for (held2, ..) in &successors {
                for i in 0..SERVERS {
                    assert!(
                        held2[i].at_least(&held[i]),
                        "server {i} went back from {} to {} ({held:?} -> {held2:?})",
                        held[i],
                        held2[i]
                    );
                }
            }
            // With no message left, anti-entropy alone brings every server to the authority's
            // last acknowledged write.
            if next > 0 && bag.is_empty() {
                let want = after[next - 1];
                finals += 1;
                // Anti-entropy alone converges, round robin, in a bounded number of rounds.
                let mut fin = held;
                for _ in 0..SERVERS * SERVERS {
                    for to in 0..SERVERS {
                        for from in (0..SERVERS).filter(|&f| f != to) {
                            if let Some(h) = pull(fin[to], fin[from]) {
                                fin[to] = h;
                            }
                        }
                    }
                }
                assert!(
                    fin.iter().all(|h| *h == want),
                    "from {held:?}, anti-entropy ends at {fin:?}, not {want}"
                );
            }
            todo.extend(successors);
        }
        println!(
            "exhaustive: {} states of 3 servers, 5 writes, lossy reordered forwards and pulls; {finals} without messages in flight, all converge",
            seen.len()
        );
        assert!(finals > 0 && seen.len() > 1_000, "{} states", seen.len());
    }
}
