//! The dispatcher's decisions, sans IO, in the manner of quinn-proto: no sockets, no clock, no
//! tasks. Jobs, answers and `now: Instant` go in; out come batches to send (with the server to
//! send each to, chosen through [`PickServer`] from what the fleet says is connected and
//! loaded), the misses completed, and the next deadline to wake up at. The async shell
//! (`batch`) moves the bytes: it takes the queued jobs, sends what [`BatchMachine::poll_transmit`]
//! says, awaits the answers, applies the routes an answer carries (fetching a node list when it
//! needs one), sleeps until [`BatchMachine::poll_timeout`], and feeds each result back.
//!
//! - [`group`]: the queued jobs, grouped by table in batches of at most `max_batch` lookups,
//!   each with the earliest deadline of its misses.
//! - [`BatchMachine`]: one batch's life: where it is sent, when its late misses are hedged to a
//!   second server (after the hedge delay, once per send, never after a server shed the
//!   batch), what a refusal, a shed, a failed send or a malformed or outdated answer leads to
//!   (another server, one other at most after `overloaded`), when the batch gives up, and what
//!   each of those counts ([`Tally`]).
//!
//! What stays in the shell, and why: admission (a hit's refresh goes on its thread's lock-free
//! ring, a miss on a lock-free bounded queue, both on the caller's thread, where a lock would
//! cost every hit; past the bound a refresh is dropped and counted on the caller's thread, and
//! a miss waits for room within its timeout, polling every 200 µs); the dispatch loop's sleep
//! and wake-ups; one task per batch (so that applying one batch's answer, which may wait for a
//! node list, never delays another batch); checking and applying an answer's routes
//! (`batch::apply`, with the staleness rules of [`crate::table`]), logging, and failing the
//! misses of a batch that gives up with the error [`Refusals::error`] makes.
//!
//! Counting (what [`Tally`] adds to the cache's counters): every lookup a server accepted is in
//! `lookups_sent`, first sends, hedges and retries alike. A hedge's lookups are also in
//! `hedged`. A batch sent again after a refusal or an outdated answer is in
//! `retried_elsewhere` (all its lookups), after an `overloaded` answer in both
//! `retried_elsewhere` and `retried_overloaded` (its waiting misses only). A batch sent again
//! after a failed send, no answer in time or a malformed answer is counted in `lookups_sent`
//! only: it is neither a hedge nor a retry after a refusal.

use std::time::{Duration, Instant};

use memds_proto::wire::{ErrorCode, ErrorReply};
use tokio::sync::oneshot;

use crate::stats::CacheError;

/// Who is waiting for a miss's route.
pub(crate) type Waiter = oneshot::Sender<Result<std::sync::Arc<memds_proto::Route>, CacheError>>;

/// One queued lookup.
pub(crate) struct Job {
    /// The table, by its id in the registry.
    pub(crate) table: u32,
    pub(crate) hash: u64,
    /// A waiting miss and its deadline; `None` for a refresh.
    pub(crate) waiter: Option<(Waiter, Instant)>,
}

/// Groups jobs by table (a stable sort keeps each table's jobs in queue order) and splits each
/// group in batches of at most `max_batch` jobs; empties `jobs`.
pub(crate) fn group(jobs: &mut Vec<Job>, max_batch: usize) -> Vec<Vec<Job>> {
    let max_batch = max_batch.max(1);
    let mut batches = Vec::new();
    jobs.sort_by_key(|j| j.table);
    while !jobs.is_empty() {
        let id = jobs[jobs.len() - 1].table;
        let first = jobs.partition_point(|j| j.table < id);
        let mut group = jobs.split_off(first);
        while !group.is_empty() {
            let rest = group.split_off(group.len().min(max_batch));
            batches.push(group);
            group = rest;
        }
    }
    batches
}

/// Whether the dispatcher holds the jobs it took, and until when: only refreshes (a miss goes
/// at once, with every refresh held), fewer than a frame's worth (`max_batch`), and `linger`
/// not yet over since the first of them was taken (`since`). `None`: send now.
pub(crate) fn linger_until(
    jobs: &[Job],
    since: Instant,
    now: Instant,
    linger: Duration,
    max_batch: usize,
) -> Option<Instant> {
    let until = since + linger;
    (now < until && jobs.len() < max_batch && jobs.iter().all(|j| j.waiter.is_none()))
        .then_some(until)
}

/// The earliest deadline of a batch's misses; `now` for a batch of refreshes only (it has no
/// deadline to keep: it is not retried).
pub(crate) fn deadline(jobs: &[Job], now: Instant) -> Instant {
    jobs.iter()
        .filter_map(|j| j.waiter.as_ref().map(|(_, d)| *d))
        .min()
        .unwrap_or(now)
}

/// The fleet as the state machine sees it: a connected server not in `avoid` (positions in the
/// fleet), by whatever rule the fleet uses (power of two choices on requests in flight), or
/// `None`.
pub(crate) trait PickServer {
    fn pick(&mut self, avoid: &[usize]) -> Option<usize>;
}

/// The delays a batch keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    /// The longest a server is waited for, for an answer.
    pub(crate) request_timeout: Duration,
    /// How long after a send its misses still waiting are sent to a second server.
    pub(crate) hedge_delay: Duration,
}

/// How long a batch waits before asking again when no server can be asked, or before asking
/// the server that just failed it again (no other being up): not in a tight loop.
pub(crate) const PAUSE: Duration = Duration::from_millis(10);

/// Which send of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendKind {
    /// The batch (or, once a server shed it, its waiting misses), first or again.
    Primary,
    /// The misses still waiting after the hedge delay, to a second server.
    Hedge,
}

/// A send the shell is to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transmit {
    pub(crate) kind: SendKind,
    /// The server, by its position in the fleet.
    pub(crate) server: usize,
    /// The batch's lookups to send, by index; `None` for all of them.
    pub(crate) subset: Option<Vec<usize>>,
}

impl Transmit {
    /// The hashes to send, of the batch's `hashes`.
    pub(crate) fn hashes(&self, hashes: &[u64]) -> Vec<u64> {
        match &self.subset {
            Some(s) => s.iter().map(|&i| hashes[i]).collect(),
            None => hashes.to_vec(),
        }
    }
}

/// What came of a send, as the shell found it.
#[derive(Clone, Debug)]
pub(crate) enum Outcome {
    /// Routes applied: every miss the send carried was completed (the shell reports which
    /// with [`BatchMachine::complete`]).
    Answered,
    /// An error answer other than a refusal or `overloaded` (an unknown table): the first
    /// send's waiting misses were failed with it; a hedge's is ignored.
    ServerError,
    /// The server broke the protocol (the shell counted and logged it).
    Malformed,
    /// No answer in time, the connection lost, or no node list to resolve the answer with.
    Failed,
    /// `behind` or `unavailable`: the server is not asked again for the batch.
    Refused(ErrorReply),
    /// An answer at an older table version than the cache has seen by now: counted as
    /// `behind`; the misses are asked again.
    Outdated,
    /// Shed as `overloaded`, costing that many lookups.
    Overloaded(ErrorReply, u64),
}

/// What a batch adds to the cache's counters (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) lookups_sent: u64,
    pub(crate) hedged: u64,
    pub(crate) retried: u64,
    pub(crate) retried_overloaded: u64,
    pub(crate) refreshes_shed: u64,
    pub(crate) overloaded: u64,
    pub(crate) behind: u64,
    pub(crate) unavailable: u64,
    pub(crate) dropped: u64,
}

/// The first send in flight.
#[derive(Debug)]
struct Primary {
    server: usize,
    /// Lookups it carries.
    n: u64,
    /// When it is given up as failed.
    until: Instant,
    /// Its send went out (a hedge may follow).
    sent: bool,
}

/// The hedge of the current first send.
#[derive(Debug, PartialEq, Eq)]
enum Hedge {
    None,
    /// Due at `at`, to a server other than `first`.
    Armed {
        at: Instant,
        first: usize,
    },
    /// Sent: `n` misses to `server`.
    InFlight {
        server: usize,
        n: u64,
    },
}

/// One batch's decisions (see the module docs). Indexes are positions in the batch.
#[derive(Debug)]
pub(crate) struct BatchMachine {
    servers: usize,
    timing: Timing,
    deadline: Instant,
    /// The misses still waiting.
    pending: Vec<bool>,
    refreshes: u64,
    refusals: Refusals,
    /// The server that last failed (no answer, a malformed one): avoided while another is up,
    /// asked again after a pause when none is.
    failed: Option<usize>,
    /// The pause before asking the failed server again is over.
    paused_for_failed: bool,
    /// No send before this.
    paused_until: Option<Instant>,
    answered: bool,
    /// Some server refused the batch (its refreshes are counted there, not as dropped).
    refused: bool,
    /// Some server shed the batch (its refreshes were counted in `refreshes_shed`).
    shed: bool,
    retry: Option<Retry>,
    primary: Option<Primary>,
    hedge: Hedge,
    /// The current first send armed a hedge.
    hedge_this_send: bool,
    /// A hedge of the batch was sent (it is then the one other server after a shed).
    hedge_ever_sent: bool,
    /// After the first send was shed with a hedge under way: the hedge is waited for until
    /// then, with the shed's outcome to apply after it, and the batch ends.
    hedge_as_retry: Option<(Instant, Outcome, usize)>,
    done: bool,
    tally: Tally,
}

impl BatchMachine {
    /// A batch whose lookup `i` is a miss if `is_miss[i]`, in a fleet of `servers`.
    pub(crate) fn new(
        is_miss: Vec<bool>,
        deadline: Instant,
        servers: usize,
        timing: Timing,
    ) -> Self {
        let refreshes = is_miss.iter().filter(|&&m| !m).count() as u64;
        Self {
            servers,
            timing,
            deadline,
            pending: is_miss,
            refreshes,
            refusals: Refusals::default(),
            failed: None,
            paused_for_failed: false,
            paused_until: None,
            answered: false,
            refused: false,
            shed: false,
            retry: None,
            primary: None,
            hedge: Hedge::None,
            hedge_this_send: false,
            hedge_ever_sent: false,
            hedge_as_retry: None,
            done: false,
            tally: Tally::default(),
        }
    }

    /// The misses still waiting, by index.
    pub(crate) fn pending_misses(&self) -> Vec<usize> {
        (0..self.pending.len())
            .filter(|&i| self.pending[i])
            .collect()
    }

    /// A miss was answered (or failed) by the shell.
    pub(crate) fn complete(&mut self, i: usize) {
        self.pending[i] = false;
    }

    /// The next send to make at `now`, if any (call until `None`).
    pub(crate) fn poll_transmit(
        &mut self,
        now: Instant,
        fleet: &mut impl PickServer,
    ) -> Option<Transmit> {
        if self.done {
            return None;
        }
        if let Hedge::Armed { at, first } = self.hedge
            && now >= at
        {
            self.hedge = Hedge::None;
            let misses = self.pending_misses();
            if !misses.is_empty()
                && let Some(server) = fleet.pick(&self.refusals.avoiding(Some(first)))
            {
                let n = misses.len() as u64;
                self.hedge_ever_sent = true;
                self.tally.hedged += n;
                self.hedge = Hedge::InFlight { server, n };
                return Some(Transmit {
                    kind: SendKind::Hedge,
                    server,
                    subset: Some(misses),
                });
            }
        }
        if self.primary.is_some()
            || self.hedge_as_retry.is_some()
            || self.paused_until.is_some_and(|t| now < t)
        {
            return None;
        }
        self.paused_until = None;
        if self.refusals.all(self.servers) {
            self.finish();
            return None;
        }
        let shunned = self.refusals.shunned();
        let Some(server) = fleet
            .pick(&self.refusals.avoiding(self.failed))
            .or_else(|| fleet.pick(&shunned))
        else {
            // No server to ask: refreshes are dropped. After a refusal or an overloaded answer
            // the misses fail now (the servers not asked are not connected, and one that
            // comes back is not ready at first); before any, they wait for a server until
            // their deadline.
            if !shunned.is_empty() || self.pending_misses().is_empty() || now >= self.deadline {
                self.finish();
            } else {
                self.paused_until = Some(now + PAUSE);
            }
            return None;
        };
        if self.failed == Some(server) && !self.paused_for_failed {
            self.paused_for_failed = true;
            self.paused_until = Some(now + PAUSE);
            return None;
        }
        self.paused_for_failed = false;
        // Once a server has shed the batch, only the misses still waiting are sent: the
        // refreshes were dropped.
        let subset = self.shed.then(|| self.pending_misses());
        let n = match &subset {
            Some(misses) if misses.is_empty() => {
                self.finish();
                return None;
            }
            Some(misses) => misses.len(),
            None => self.pending.len(),
        } as u64;
        match self.retry.take() {
            Some(Retry::Refused) => self.tally.retried += n,
            Some(Retry::Overloaded) => {
                self.tally.retried += n;
                self.tally.retried_overloaded += n;
            }
            None => {}
        }
        // A batch some server shed is not hedged: an overloaded fleet gets at most one extra
        // lookup per miss.
        self.hedge_this_send = subset.is_none() && !self.pending_misses().is_empty();
        self.hedge = Hedge::None;
        self.primary = Some(Primary {
            server,
            n,
            until: now + self.timing.request_timeout,
            sent: false,
        });
        Some(Transmit {
            kind: SendKind::Primary,
            server,
            subset,
        })
    }

    /// A send was made at `now` (`accepted`: the connection took it; else it failed at once).
    pub(crate) fn on_sent(&mut self, kind: SendKind, now: Instant, accepted: bool) {
        match kind {
            SendKind::Primary => {
                let Some(p) = self.primary.as_mut() else {
                    return;
                };
                if !accepted {
                    self.on_answer(SendKind::Primary, Outcome::Failed, now);
                    return;
                }
                p.sent = true;
                self.tally.lookups_sent += p.n;
                if self.hedge_this_send {
                    self.hedge = Hedge::Armed {
                        at: now + self.timing.hedge_delay,
                        first: p.server,
                    };
                }
            }
            SendKind::Hedge => {
                if let Hedge::InFlight { n, .. } = self.hedge {
                    if accepted {
                        self.tally.lookups_sent += n;
                    } else {
                        self.hedge_done(now);
                    }
                }
            }
        }
    }

    /// The answer to a send, as the shell found it at `now`.
    pub(crate) fn on_answer(&mut self, kind: SendKind, outcome: Outcome, now: Instant) {
        match kind {
            SendKind::Hedge => {
                let Hedge::InFlight { server, n } = self.hedge else {
                    return;
                };
                match outcome {
                    Outcome::Refused(reply) => {
                        self.count_refusal(&reply, n);
                        self.refusals.add(server, reply);
                    }
                    Outcome::Overloaded(reply, lookups) => {
                        self.tally.overloaded += lookups;
                        self.refusals.add_overloaded(server, reply);
                    }
                    Outcome::Outdated => self.tally.behind += n,
                    // The first server's answer, or its retries, still complete the misses.
                    Outcome::Answered
                    | Outcome::ServerError
                    | Outcome::Malformed
                    | Outcome::Failed => {}
                }
                self.hedge_done(now);
            }
            SendKind::Primary => {
                let Some(p) = self.primary.take() else {
                    return;
                };
                // Shed, with a hedge already sent to another server: that hedge is the misses'
                // one other server. It is waited for, not replaced by a retry.
                if matches!(outcome, Outcome::Overloaded(..))
                    && self.hedge_ever_sent
                    && self.hedge_this_send
                    && self.hedge != Hedge::None
                {
                    self.hedge_as_retry =
                        Some((now + self.timing.request_timeout, outcome, p.server));
                    return;
                }
                self.hedge = Hedge::None;
                let hedge_was_the_retry = self.hedge_ever_sent && self.hedge_this_send;
                self.primary_outcome(p.server, p.n, outcome, hedge_was_the_retry, now);
            }
        }
    }

    fn hedge_done(&mut self, now: Instant) {
        self.hedge = Hedge::None;
        if let Some((_, outcome, server)) = self.hedge_as_retry.take() {
            self.primary_outcome(server, 0, outcome, true, now);
        }
    }

    fn primary_outcome(
        &mut self,
        server: usize,
        n: u64,
        outcome: Outcome,
        hedge_was_the_retry: bool,
        now: Instant,
    ) {
        match outcome {
            Outcome::Answered | Outcome::ServerError => {
                self.answered = true;
                self.finish();
                return;
            }
            Outcome::Malformed | Outcome::Failed => self.failed = Some(server),
            Outcome::Refused(reply) => {
                self.count_refusal(&reply, n);
                self.refusals.add(server, reply);
                self.refused = true;
                self.retry = Some(Retry::Refused);
            }
            Outcome::Outdated => {
                self.tally.behind += n;
                self.failed = Some(server);
                self.refused = true;
                self.retry = Some(Retry::Refused);
            }
            Outcome::Overloaded(reply, lookups) => {
                self.tally.overloaded += lookups;
                if !self.shed {
                    self.tally.refreshes_shed += self.refreshes;
                    self.shed = true;
                }
                let shedders = self.refusals.add_overloaded(server, reply);
                if hedge_was_the_retry || shedders >= 2 {
                    self.finish();
                    return;
                }
                self.retry = Some(Retry::Overloaded);
            }
        }
        // The server failed, lied, refused or shed: misses try another until their deadline
        // (after an overloaded answer, one other); refreshes go (their hits were answered
        // already).
        if self.pending_misses().is_empty() || now >= self.deadline {
            self.finish();
        }
    }

    /// Time passed: a first send not answered by its deadline failed; a hedge waited for in
    /// place of a retry is given up.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Some(p) = &self.primary
            && p.sent
            && now >= p.until
        {
            self.on_answer(SendKind::Primary, Outcome::Failed, now);
        }
        if let Some((until, ..)) = &self.hedge_as_retry
            && now >= *until
        {
            self.hedge_done(now);
        }
    }

    /// When the shell must call [`BatchMachine::handle_timeout`] and
    /// [`BatchMachine::poll_transmit`] again, if nothing else happens first.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let hedge = match self.hedge {
            Hedge::Armed { at, .. } => Some(at),
            _ => None,
        };
        [
            hedge,
            self.primary.as_ref().filter(|p| p.sent).map(|p| p.until),
            self.hedge_as_retry.as_ref().map(|(until, ..)| *until),
            self.paused_until,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether a first send is awaited (the shell drops its answer's future otherwise).
    pub(crate) fn primary_in_flight(&self) -> bool {
        self.primary.is_some()
    }

    /// Whether a hedge is awaited (the shell drops its answer's future otherwise).
    pub(crate) fn hedge_in_flight(&self) -> bool {
        matches!(self.hedge, Hedge::InFlight { .. })
    }

    /// Whether the batch is over: answered, or given up (the misses still waiting then fail
    /// with [`Refusals::error`] of [`BatchMachine::refusals`], or a timeout).
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// The servers that refused or shed the batch.
    pub(crate) fn refusals(&self) -> &Refusals {
        &self.refusals
    }

    /// What the batch counted since the last call.
    pub(crate) fn take_tally(&mut self) -> Tally {
        std::mem::take(&mut self.tally)
    }

    fn finish(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        self.primary = None;
        self.hedge = Hedge::None;
        self.hedge_as_retry = None;
        if !self.answered && !self.refused && !self.shed {
            self.tally.dropped += self.refreshes;
        }
    }

    fn count_refusal(&mut self, reply: &ErrorReply, lookups: u64) {
        match reply.code {
            ErrorCode::Behind => self.tally.behind += lookups,
            _ => self.tally.unavailable += lookups,
        }
    }
}

pub(crate) fn is_refusal(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Behind | ErrorCode::Unavailable)
}

/// Whether a server's error answer means it shed the lookup (its lookup limit): ask one other
/// server at most, never the same one again.
pub(crate) fn is_overloaded(code: ErrorCode) -> bool {
    code == ErrorCode::Overloaded
}

/// The servers that refused one request (a batch, or a whole-table download), or shed it as
/// overloaded: none of them is asked again for it.
#[derive(Debug, Default)]
pub(crate) struct Refusals {
    /// Their positions in the fleet, each once: those that refused (`behind`, `unavailable`).
    pub(crate) servers: Vec<usize>,
    /// How many of them answered `behind` (the others answered `unavailable`).
    pub(crate) behind: usize,
    /// The last refusal.
    pub(crate) last: Option<ErrorReply>,
    /// The servers that answered `overloaded`, each once.
    pub(crate) overloaded: Vec<usize>,
    /// The last `overloaded` answer.
    pub(crate) last_overloaded: Option<ErrorReply>,
}

impl Refusals {
    pub(crate) fn add(&mut self, server: usize, reply: ErrorReply) {
        if !self.servers.contains(&server) {
            self.servers.push(server);
            if reply.code == ErrorCode::Behind {
                self.behind += 1;
            }
        }
        self.last = Some(reply);
    }

    /// Records an `overloaded` answer; answers how many servers have shed the request.
    pub(crate) fn add_overloaded(&mut self, server: usize, reply: ErrorReply) -> usize {
        if !self.overloaded.contains(&server) {
            self.overloaded.push(server);
        }
        self.last_overloaded = Some(reply);
        self.overloaded.len()
    }

    /// The servers never to ask again: those that refused and those that shed the request.
    pub(crate) fn shunned(&self) -> Vec<usize> {
        let mut shunned = self.servers.clone();
        shunned.extend(self.overloaded.iter().filter(|s| !self.servers.contains(s)));
        shunned
    }

    /// Whether every server of a fleet of `servers` refused or shed the request.
    pub(crate) fn all(&self, servers: usize) -> bool {
        self.shunned().len() >= servers
    }

    /// The servers to avoid: those that refused or shed the request, and `failed` (the server
    /// that last failed, avoided when another is up).
    pub(crate) fn avoiding(&self, failed: Option<usize>) -> Vec<usize> {
        let mut avoid = self.shunned();
        avoid.extend(failed);
        avoid
    }

    /// The error for a request no server answered, if any server shed or refused it: shed
    /// ([`CacheError::Overloaded`]) if any server shed it, else refused.
    pub(crate) fn error(&self, servers: usize, min_version: Option<u64>) -> Option<CacheError> {
        if let Some(last) = self.last_overloaded.clone() {
            return Some(CacheError::Overloaded {
                servers,
                overloaded: self.overloaded.len(),
                last,
            });
        }
        let last = self.last.clone()?;
        Some(CacheError::Refused {
            servers,
            behind: self.behind,
            unavailable: self.servers.len() - self.behind,
            min_version,
            last,
        })
    }
}

/// Why the next send of a batch is a retry.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Retry {
    /// A server refused the batch (`behind`, `unavailable`, or an outdated answer).
    Refused,
    /// A server shed the batch (`overloaded`).
    Overloaded,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_linger_until_a_miss_a_full_frame_or_the_bound() {
        let t0 = Instant::now();
        let linger = Duration::from_millis(2);
        let refresh = |hash| Job {
            table: 0,
            hash,
            waiter: None,
        };
        let refreshes: Vec<Job> = (0..10).map(refresh).collect();
        // Held until the bound, counted from the first one taken.
        assert_eq!(
            linger_until(&refreshes, t0, t0 + Duration::from_millis(1), linger, 1024),
            Some(t0 + linger)
        );
        // Past the bound, with a frame's worth, or with no linger: sent now.
        assert_eq!(
            linger_until(&refreshes, t0, t0 + linger, linger, 1024),
            None
        );
        assert_eq!(linger_until(&refreshes, t0, t0, linger, 10), None);
        assert_eq!(linger_until(&refreshes, t0, t0, Duration::ZERO, 1024), None);
        // A miss goes at once, and the refreshes with it.
        let (tx, _rx) = oneshot::channel();
        let mut with_miss = refreshes;
        with_miss.push(Job {
            table: 0,
            hash: 99,
            waiter: Some((tx, t0 + Duration::from_secs(1))),
        });
        assert_eq!(linger_until(&with_miss, t0, t0, linger, 1024), None);
    }
    #[test]
    pub(crate) fn a_request_shed_or_refused_avoids_those_servers_and_says_why_it_failed() {
        let mut r = Refusals::default();
        assert!(r.error(3, None).is_none());
        r.add(0, ErrorReply::new(ErrorCode::Behind, "behind"));
        assert!(matches!(
            r.error(3, Some(7)),
            Some(CacheError::Refused {
                servers: 3,
                behind: 1,
                unavailable: 0,
                min_version: Some(7),
                ..
            })
        ));
        assert_eq!(
            r.add_overloaded(2, ErrorReply::new(ErrorCode::Overloaded, "shed")),
            1
        );
        // The same server shedding again is counted once.
        assert_eq!(
            r.add_overloaded(2, ErrorReply::new(ErrorCode::Overloaded, "shed")),
            1
        );
        assert_eq!(r.shunned(), vec![0, 2]);
        assert_eq!(r.avoiding(Some(1)), vec![0, 2, 1]);
        assert!(!r.all(3) && r.all(2));
        // Shed by a server: overloaded, even if another refused.
        match r.error(3, Some(7)) {
            Some(CacheError::Overloaded {
                servers: 3,
                overloaded: 1,
                last,
            }) => assert_eq!(last.code, ErrorCode::Overloaded),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            r.add_overloaded(1, ErrorReply::new(ErrorCode::Overloaded, "shed")),
            2
        );
        assert!(r.all(3));
    }

    use std::sync::atomic::Ordering;

    use crate::cache::Mode;
    use crate::registry::PerThread;
    use crate::ring::RefreshRing;

    const TIMING: Timing = Timing {
        request_timeout: Duration::from_secs(2),
        hedge_delay: Duration::from_millis(50),
    };

    /// A fleet of connected servers (`up`) that always picks the first one not avoided, and
    /// remembers every pick.
    struct FakeFleet {
        up: Vec<bool>,
    }

    impl FakeFleet {
        fn of(n: usize) -> Self {
            Self { up: vec![true; n] }
        }
    }

    impl PickServer for FakeFleet {
        fn pick(&mut self, avoid: &[usize]) -> Option<usize> {
            (0..self.up.len()).find(|i| self.up[*i] && !avoid.contains(i))
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn machine(is_miss: &[bool], t0: Instant, servers: usize) -> BatchMachine {
        BatchMachine::new(
            is_miss.to_vec(),
            t0 + TIMING.request_timeout,
            servers,
            TIMING,
        )
    }

    /// Answers every send of a batch at once, completing its misses; returns the lookups sent.
    fn answer_everything(m: &mut BatchMachine, fleet: &mut FakeFleet, now: Instant) -> u64 {
        while let Some(t) = m.poll_transmit(now, fleet) {
            m.on_sent(t.kind, now, true);
            for i in m.pending_misses() {
                m.complete(i);
            }
            m.on_answer(t.kind, Outcome::Answered, now);
        }
        assert!(m.is_done());
        m.take_tally().lookups_sent
    }

    #[test]
    fn a_late_miss_is_hedged_to_a_second_server_after_the_hedge_delay() {
        let t0 = Instant::now();
        let mut fleet = FakeFleet::of(3);
        // Two misses and a refresh.
        let mut m = machine(&[true, false, true], t0, 3);
        let first = m.poll_transmit(t0, &mut fleet).expect("the first send");
        assert_eq!(
            (first.kind, first.server, first.subset),
            (SendKind::Primary, 0, None)
        );
        m.on_sent(SendKind::Primary, t0, true);
        assert_eq!(m.poll_transmit(t0, &mut fleet), None);
        assert_eq!(m.poll_timeout(), Some(t0 + TIMING.hedge_delay));
        // Not before the delay.
        assert_eq!(m.poll_transmit(t0 + ms(49), &mut fleet), None);
        // One miss is answered meanwhile (by nobody in particular): only the other is hedged.
        m.complete(0);
        let at = t0 + TIMING.hedge_delay;
        let hedge = m.poll_transmit(at, &mut fleet).expect("the hedge");
        assert_eq!(
            hedge,
            Transmit {
                kind: SendKind::Hedge,
                server: 1,
                subset: Some(vec![2]),
            }
        );
        m.on_sent(SendKind::Hedge, at, true);
        let tally = m.take_tally();
        assert_eq!((tally.hedged, tally.lookups_sent), (1, 3 + 1));
        // The hedge answers first; the batch still waits for the first answer (its refresh).
        m.complete(2);
        m.on_answer(SendKind::Hedge, Outcome::Answered, at + ms(1));
        assert!(!m.is_done() && m.primary_in_flight());
        m.on_answer(SendKind::Primary, Outcome::Answered, at + ms(2));
        assert!(m.is_done());
        assert_eq!(
            m.take_tally(),
            Tally::default(),
            "nothing more: no retry, nothing dropped"
        );
    }

    #[test]
    fn no_hedge_for_refreshes_only_nor_for_misses_answered_in_time() {
        let t0 = Instant::now();
        let mut fleet = FakeFleet::of(2);
        let mut refreshes = machine(&[false, false], t0, 2);
        refreshes.poll_transmit(t0, &mut fleet).expect("sent");
        refreshes.on_sent(SendKind::Primary, t0, true);
        assert_eq!(refreshes.poll_timeout(), Some(t0 + TIMING.request_timeout));
        assert_eq!(refreshes.poll_transmit(t0 + ms(60), &mut fleet), None);

        let mut answered = machine(&[true], t0, 2);
        answered.poll_transmit(t0, &mut fleet).expect("sent");
        answered.on_sent(SendKind::Primary, t0, true);
        answered.complete(0);
        answered.on_answer(SendKind::Primary, Outcome::Answered, t0 + ms(10));
        assert!(answered.is_done());
        assert_eq!(answered.poll_transmit(t0 + ms(60), &mut fleet), None);
        assert_eq!(answered.take_tally().hedged, 0);
    }

    #[test]
    fn a_failed_send_goes_to_another_server_counted_as_sent_only() {
        let t0 = Instant::now();
        let mut fleet = FakeFleet::of(3);
        let mut m = machine(&[true, true, false], t0, 3);
        let first = m.poll_transmit(t0, &mut fleet).expect("sent");
        assert_eq!(first.server, 0);
        // The connection would not take it.
        m.on_sent(SendKind::Primary, t0, false);
        let again = m.poll_transmit(t0, &mut fleet).expect("sent again");
        assert_eq!(
            (again.server, again.subset),
            (1, None),
            "the whole batch, elsewhere"
        );
        m.on_sent(SendKind::Primary, t0, true);
        // No answer by the request timeout: failed too; the next goes to a third server.
        let late = t0 + TIMING.request_timeout;
        assert_eq!(m.poll_timeout(), Some(t0 + TIMING.hedge_delay));
        let hedge = m
            .poll_transmit(t0 + TIMING.hedge_delay, &mut fleet)
            .expect("hedge");
        assert_eq!(
            (hedge.kind, hedge.server),
            (SendKind::Hedge, 0),
            "the hedge avoids server 1 only"
        );
        m.on_sent(SendKind::Hedge, t0 + TIMING.hedge_delay, false);
        m.handle_timeout(late - ms(1));
        assert!(m.primary_in_flight());
        let m_deadline = m.poll_timeout();
        assert_eq!(m_deadline, Some(late));
        m.handle_timeout(late);
        assert!(!m.primary_in_flight());
        // Past the misses' deadline (the request timeout from t0): the batch gives up.
        assert_eq!(m.poll_transmit(late, &mut fleet), None);
        assert!(m.is_done());
        let tally = m.take_tally();
        // Counted: the lookups a connection accepted (3), the hedge's miss; no retry counters;
        // the refresh dropped (no server answered and none refused).
        assert_eq!(
            tally,
            Tally {
                lookups_sent: 3,
                hedged: 2,
                dropped: 1,
                ..Tally::default()
            }
        );
        assert_eq!(m.pending_misses(), vec![0, 1]);
        assert!(
            m.refusals().error(3, None).is_none(),
            "a timeout, not a refusal"
        );
    }

    #[test]
    fn the_server_that_failed_is_asked_again_after_a_pause_when_no_other_is_up() {
        let t0 = Instant::now();
        let mut fleet = FakeFleet::of(1);
        let mut m = machine(&[true], t0, 1);
        assert_eq!(m.poll_transmit(t0, &mut fleet).map(|t| t.server), Some(0));
        m.on_sent(SendKind::Primary, t0, true);
        m.on_answer(SendKind::Primary, Outcome::Malformed, t0 + ms(1));
        assert_eq!(m.poll_transmit(t0 + ms(1), &mut fleet), None);
        assert_eq!(m.poll_timeout(), Some(t0 + ms(1) + PAUSE));
        assert_eq!(
            m.poll_transmit(t0 + ms(1) + PAUSE, &mut fleet)
                .map(|t| t.server),
            Some(0)
        );
    }

    #[test]
    fn a_shed_batch_sends_only_its_misses_to_one_other_server_then_fails() {
        let t0 = Instant::now();
        let mut fleet = FakeFleet::of(3);
        let mut m = machine(&[true, false, false], t0, 3);
        m.poll_transmit(t0, &mut fleet).expect("sent");
        m.on_sent(SendKind::Primary, t0, true);
        let shed = ErrorReply::new(ErrorCode::Overloaded, "shed");
        m.on_answer(
            SendKind::Primary,
            Outcome::Overloaded(shed.clone(), 3),
            t0 + ms(1),
        );
        let retry = m
            .poll_transmit(t0 + ms(1), &mut fleet)
            .expect("the one retry");
        assert_eq!((retry.server, retry.subset), (1, Some(vec![0])));
        m.on_sent(SendKind::Primary, t0 + ms(1), true);
        // Not hedged.
        assert_eq!(m.poll_timeout(), Some(t0 + ms(1) + TIMING.request_timeout));
        m.on_answer(SendKind::Primary, Outcome::Overloaded(shed, 1), t0 + ms(2));
        assert!(m.is_done());
        assert_eq!(
            m.take_tally(),
            Tally {
                lookups_sent: 4,
                retried: 1,
                retried_overloaded: 1,
                refreshes_shed: 2,
                overloaded: 4,
                ..Tally::default()
            }
        );
        assert!(matches!(
            m.refusals().error(3, None),
            Some(CacheError::Overloaded { overloaded: 2, .. })
        ));
    }

    #[test]
    fn a_refused_batch_is_sent_whole_elsewhere_until_every_server_refused() {
        let t0 = Instant::now();
        let mut fleet = FakeFleet::of(2);
        let mut m = machine(&[true, false], t0, 2);
        for server in [0, 1] {
            let t = m.poll_transmit(t0, &mut fleet).expect("sent");
            assert_eq!((t.server, t.subset), (server, None));
            m.on_sent(SendKind::Primary, t0, true);
            let behind = ErrorReply::new(ErrorCode::Behind, "behind");
            m.on_answer(SendKind::Primary, Outcome::Refused(behind), t0);
        }
        assert_eq!(m.poll_transmit(t0, &mut fleet), None);
        assert!(m.is_done());
        let tally = m.take_tally();
        assert_eq!(
            (
                tally.lookups_sent,
                tally.retried,
                tally.behind,
                tally.dropped
            ),
            (4, 2, 4, 0)
        );
        assert!(matches!(
            m.refusals().error(2, Some(9)),
            Some(CacheError::Refused { behind: 2, .. })
        ));
    }

    /// `n` route calls, every third a miss: the jobs they queue, through a thread's ring for
    /// hits (as `Inner::counted_hit` does) and directly for misses, then grouped and sent.
    fn lookups_for_calls(mode: Mode, n: u32) -> (u64, u64) {
        let t0 = Instant::now();
        let thread = PerThread {
            ring: RefreshRing::new(1 << 12),
            hits: Default::default(),
            refused: Default::default(),
        };
        let mut jobs = Vec::new();
        let mut waiting = Vec::new();
        for call in 0..n {
            let (table, hash) = (call % 3, u64::from(call));
            if call % 3 == 0 {
                let (tx, rx) = oneshot::channel();
                waiting.push(rx);
                jobs.push(Job {
                    table,
                    hash,
                    waiter: Some((tx, t0 + TIMING.request_timeout)),
                });
            } else {
                thread.hit(mode, true, table, hash);
            }
        }
        thread.ring.pop_into(usize::MAX, |table, hash| {
            jobs.push(Job {
                table,
                hash,
                waiter: None,
            })
        });
        let queued = jobs.len() as u64;
        let mut fleet = FakeFleet::of(2);
        let mut sent = 0;
        for batch in group(&mut jobs, 64) {
            assert!(batch.len() <= 64 && batch.iter().all(|j| j.table == batch[0].table));
            let is_miss: Vec<bool> = batch.iter().map(|j| j.waiter.is_some()).collect();
            let mut m = BatchMachine::new(is_miss, deadline(&batch, t0), 2, TIMING);
            sent += answer_everything(&mut m, &mut fleet, t0);
        }
        (queued, sent)
    }

    #[test]
    fn constant_work_sends_one_lookup_per_call_classic_only_the_misses() {
        assert_eq!(lookups_for_calls(Mode::ConstantWork, 1000), (1000, 1000));
        let classic = Mode::Classic { whole_table: false };
        assert_eq!(lookups_for_calls(classic, 1000), (334, 334));
    }

    #[test]
    fn refreshes_past_the_bound_are_dropped_and_counted() {
        let thread = PerThread {
            ring: RefreshRing::new(8),
            hits: Default::default(),
            refused: Default::default(),
        };
        let queued = (0..20)
            .filter(|&h| thread.hit(Mode::ConstantWork, true, 0, h))
            .count();
        assert_eq!(queued, 8);
        assert_eq!(thread.hits.load(Ordering::Relaxed), 20);
        assert_eq!(thread.refused.load(Ordering::Relaxed), 12);
        // Room again once the dispatcher took them; a shut cache queues nothing.
        assert_eq!(thread.ring.pop_into(usize::MAX, |_, _| {}), 8);
        assert!(thread.hit(Mode::ConstantWork, true, 0, 1));
        assert!(!thread.hit(Mode::ConstantWork, false, 0, 2));
        assert_eq!(thread.refused.load(Ordering::Relaxed), 13);
    }
}
