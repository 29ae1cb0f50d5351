//! The dispatcher's async shell: the dispatch task that takes queued lookups and hands them
//! to [`crate::dispatcher`] to group into batches, and one task per batch that makes the sends
//! its [`BatchMachine`] decides, awaits the answers, applies the routes they carry, sleeps until
//! the machine's next deadline and feeds every result back.

use std::sync::atomic::{Ordering, fence};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use memds_client::{ClientError, PendingReply};
use memds_proto::model::MAX_REPLICAS;
use memds_proto::wire::{ErrorReply, Response, Routes};
use memds_proto::{Route, TableName};
use tokio::sync::watch;

use crate::cache::Inner;
use crate::dispatcher::{
    BatchMachine, Job, Outcome, PickServer, SendKind, Tally, Timing, Waiter, deadline, group,
    is_overloaded, is_refusal, linger_until,
};
use crate::fleet::{Fleet, InFlight, Server};
use crate::registry::{Nodes, TableState};
use crate::stats::{CacheError, add};
use crate::table::{Applied, Check, RouteSource};

/// The longest a sleeping dispatcher waits without being woken right after it had work: it
/// covers a refresh queued just as the dispatcher went to sleep (see [`Inner::counted_hit`]).
/// Each wake that finds nothing doubles it, up to [`DISPATCH_BACKSTOP_IDLE`], so an idle cache
/// wakes about ten times a second rather than two hundred.
pub(crate) const DISPATCH_BACKSTOP: Duration = Duration::from_millis(5);
pub(crate) const DISPATCH_BACKSTOP_IDLE: Duration = Duration::from_millis(100);

/// Takes queued jobs, groups them by table and sends batch frames.
pub(crate) async fn dispatch(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    // Most jobs taken from the miss queue, and from each thread's ring, per round.
    const MAX_TAKE: usize = 4096;
    // Grows to what a round takes; shrunk again when the dispatcher sleeps, so an idle
    // cache keeps no buffer for the largest burst it ever saw (up to `MAX_TAKE` jobs, about
    // 40 bytes each, per ring and from the miss queue).
    const IDLE_BUF: usize = 64;
    let mut buf = Vec::new();
    let mut backstop = DISPATCH_BACKSTOP;
    // When the refreshes held in `buf` were first taken (see `linger_until`).
    let mut held_since: Option<Instant> = None;
    loop {
        take(&inner, &mut buf, MAX_TAKE);
        if buf.is_empty() {
            // Announce the sleep, then look once more: a miss queued before the flag was seen
            // is caught here, one queued after it notifies (and a notification sent before the
            // wait starts is kept by `Notify`); a refresh is caught by the backstop at worst.
            buf.shrink_to(IDLE_BUF);
            inner.dispatcher_asleep.store(true, Ordering::SeqCst);
            // The flag, then the queues; a miss stores into the queue, then reads the flag
            // (`wake_for_miss`). Without a fence on both sides each could read the other's
            // old value (the queue's own operations are not sequentially consistent), and the
            // miss would wait for the backstop.
            fence(Ordering::SeqCst);
            if inner.queue.is_empty() && inner.threads.iter().all(|t| t.ring.is_empty()) {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => break,
                    () = inner.wake.notified() => {}
                    () = tokio::time::sleep(backstop) => {
                        backstop = (backstop * 2).min(DISPATCH_BACKSTOP_IDLE);
                    }
                }
            }
            inner.dispatcher_asleep.store(false, Ordering::SeqCst);
            continue;
        }
        backstop = DISPATCH_BACKSTOP;
        let now = Instant::now();
        let since = *held_since.get_or_insert(now);
        // A caller of `drain` waits for every queued lookup: nothing is held meanwhile.
        let linger = if inner.draining.load(Ordering::SeqCst) > 0 {
            Duration::ZERO
        } else {
            inner.refresh_linger
        };
        if let Some(until) = linger_until(&buf, since, now, linger, inner.max_batch) {
            // Hold the refreshes: a miss or a drain (begun before the flag was seen, or waking
            // us after it) ends the wait, refreshes do not.
            inner.dispatcher_lingering.store(true, Ordering::SeqCst);
            // As for the sleep above: without it a miss could wait out the linger.
            fence(Ordering::SeqCst);
            if inner.queue.is_empty() && inner.draining.load(Ordering::SeqCst) == 0 {
                tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => {}
                    () = inner.wake.notified() => {}
                    () = tokio::time::sleep_until(until.into()) => {}
                }
            }
            inner.dispatcher_lingering.store(false, Ordering::SeqCst);
            if !*shutdown.borrow() {
                continue;
            }
        }
        held_since = None;
        for jobs in group(&mut buf, inner.max_batch) {
            let table = inner.by_id(jobs[0].table);
            send_batch(&inner, table, jobs);
        }
        if *shutdown.borrow() {
            break;
        }
        // Let answers and callers run between takes.
        tokio::task::yield_now().await;
    }
    // Fail what is still queued.
    loop {
        take(&inner, &mut buf, usize::MAX);
        if buf.is_empty() {
            break;
        }
        for job in buf.drain(..) {
            if let Some((w, _)) = job.waiter {
                let _ = w.send(Err(CacheError::Shutdown));
            }
            inner.job_done(1);
        }
    }
}

/// Moves up to `max` jobs from the miss queue and up to `max` from each thread's ring into
/// `buf`: every ring gets its turn each round.
pub(crate) fn take(inner: &Inner, buf: &mut Vec<Job>, max: usize) {
    while buf.len() < max {
        match inner.queue.pop() {
            Some(job) => buf.push(job),
            None => break,
        }
    }
    for t in inner.threads.iter() {
        t.ring.pop_into(max, |table, hash| {
            buf.push(Job {
                table,
                hash,
                waiter: None,
            });
        });
    }
}

/// A batch in flight: its hashes and the misses waiting on it, shared with `explain` (which
/// reads its hashes through the table's `in_flight`).
pub(crate) struct Batch {
    pub(crate) table: Arc<TableState>,
    pub(crate) hashes: Vec<u64>,
    /// Which of the hashes are misses (the others are refreshes): what an inserted route is
    /// recorded as coming from.
    pub(crate) is_miss: Vec<bool>,
    pub(crate) waiters: Mutex<Vec<Option<Waiter>>>,
}

impl Batch {
    fn waiters(&self) -> std::sync::MutexGuard<'_, Vec<Option<Waiter>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Completes the miss at `i`, if it still waits.
    pub(crate) fn complete(&self, i: usize, result: Result<Arc<Route>, CacheError>) {
        let waiter = self.waiters()[i].take();
        if let Some(w) = waiter {
            let _ = w.send(result);
        }
    }

    /// Tells the machine which misses the shell completed.
    fn report_completed(&self, m: &mut BatchMachine) {
        let waiters = self.waiters();
        for i in m.pending_misses() {
            if waiters[i].is_none() {
                m.complete(i);
            }
        }
    }

    /// Fails every miss still waiting with `error`.
    fn fail_pending(&self, error: &CacheError) {
        for w in self.waiters().iter_mut() {
            if let Some(w) = w.take() {
                let _ = w.send(Err(error.clone()));
            }
        }
    }
}

/// Makes a batch of jobs of one table and starts its task.
pub(crate) fn send_batch(inner: &Arc<Inner>, table: Arc<TableState>, jobs: Vec<Job>) {
    let deadline = deadline(&jobs, Instant::now());
    let mut hashes = Vec::with_capacity(jobs.len());
    let mut waiters = Vec::with_capacity(jobs.len());
    for j in jobs {
        hashes.push(j.hash);
        waiters.push(j.waiter.map(|(w, _)| w));
    }
    let is_miss: Vec<bool> = waiters.iter().map(Option::is_some).collect();
    let machine = BatchMachine::new(
        is_miss.clone(),
        deadline,
        inner.fleet.len(),
        Timing {
            request_timeout: inner.request_timeout,
            hedge_delay: inner.hedge_delay,
        },
    );
    let batch = Arc::new(Batch {
        table,
        hashes,
        is_miss,
        waiters: Mutex::new(waiters),
    });
    // For `explain`: one push per batch (and one removal when it is done), never per lookup.
    batch.table.in_flight().push(Arc::downgrade(&batch));
    let shutdown = inner.shutdown.subscribe();
    inner
        .tasks
        .spawn(run_batch(Arc::clone(inner), batch, machine, shutdown));
}

/// The fleet, for the machine: picks by power of two choices and keeps the server picked for
/// the send that follows.
struct Picker<'a> {
    fleet: &'a Fleet,
    picked: Option<Server>,
}

impl PickServer for Picker<'_> {
    fn pick(&mut self, avoid: &[usize]) -> Option<usize> {
        let server = self.fleet.pick(avoid)?;
        let index = server.index;
        self.picked = Some(server);
        Some(index)
    }
}

/// A send awaiting its answer.
struct Awaited {
    server: Server,
    subset: Option<Vec<usize>>,
    sent: Instant,
    /// The answer and the node list it needs are waited for until then.
    until: Instant,
    reply: PendingReply,
    _in_flight: InFlight,
}

/// The shell of one batch: makes the sends its machine decides (the first, a hedge, retries),
/// awaits their answers, applies them and feeds the outcomes back, sleeping until the machine's
/// next deadline; on shutdown, fails the misses still waiting with [`CacheError::Shutdown`].
/// Every rule (where, when, how often, what is counted) is the machine's; see
/// [`crate::dispatcher`].
async fn run_batch(
    inner: Arc<Inner>,
    batch: Arc<Batch>,
    mut m: BatchMachine,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = batch.table.name.as_str();
    let mut primary: Option<Awaited> = None;
    let mut hedge: Option<Awaited> = None;
    let mut shut_down = false;
    loop {
        let mut fleet = Picker {
            fleet: &inner.fleet,
            picked: None,
        };
        while let Some(t) = m.poll_transmit(Instant::now(), &mut fleet) {
            let server = fleet
                .picked
                .take()
                .expect("poll_transmit names the server just picked");
            let sent = Instant::now();
            let in_flight = server.begin();
            let reply = server
                .send(name, t.hashes(&batch.hashes), batch.table.newest_version())
                .await;
            m.on_sent(t.kind, Instant::now(), reply.is_some());
            if let Some(reply) = reply {
                let awaited = Awaited {
                    server,
                    subset: t.subset,
                    sent,
                    until: sent + inner.request_timeout,
                    reply,
                    _in_flight: in_flight,
                };
                match t.kind {
                    SendKind::Primary => primary = Some(awaited),
                    SendKind::Hedge => hedge = Some(awaited),
                }
            }
        }
        flush(&inner, m.take_tally());
        if m.is_done() {
            break;
        }
        // An answer the machine no longer waits for is not awaited (dropping it forgets the
        // request and ends its count in flight).
        if !m.primary_in_flight() {
            primary = None;
        }
        if !m.hedge_in_flight() {
            hedge = None;
        }
        let wake = m.poll_timeout();
        tokio::select! {
            answer = async { (&mut primary.as_mut().expect("guarded").reply).await }, if primary.is_some() => {
                let a = primary.take().expect("guarded");
                let outcome = outcome(&inner, &batch, &a, answer, SendKind::Primary).await;
                batch.report_completed(&mut m);
                m.on_answer(SendKind::Primary, outcome, Instant::now());
            }
            answer = async { (&mut hedge.as_mut().expect("guarded").reply).await }, if hedge.is_some() => {
                let a = hedge.take().expect("guarded");
                let outcome = outcome(&inner, &batch, &a, answer, SendKind::Hedge).await;
                batch.report_completed(&mut m);
                m.on_answer(SendKind::Hedge, outcome, Instant::now());
            }
            () = sleep_until(wake) => m.handle_timeout(Instant::now()),
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                shut_down = true;
                break;
            }
        }
        flush(&inner, m.take_tally());
    }
    drop((primary, hedge));
    if shut_down {
        batch.fail_pending(&CacheError::Shutdown);
    } else if !m.pending_misses().is_empty() {
        batch.fail_pending(&inner.give_up(m.refusals(), &batch.table));
    }
    batch
        .table
        .in_flight()
        .retain(|b| b.strong_count() > 0 && !std::ptr::eq(b.as_ptr(), Arc::as_ptr(&batch)));
    inner.job_done(batch.hashes.len() as u64);
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Adds what a batch counted to the cache's counters.
fn flush(inner: &Inner, t: Tally) {
    let c = &inner.counters;
    for (counter, n) in [
        (&c.lookups_sent, t.lookups_sent),
        (&c.hedged, t.hedged),
        (&c.retried, t.retried),
        (&c.retried_overloaded, t.retried_overloaded),
        (&c.refreshes_shed, t.refreshes_shed),
        (&c.overloaded, t.overloaded),
        (&c.behind, t.behind),
        (&c.unavailable, t.unavailable),
        (&c.dropped, t.dropped),
    ] {
        if n > 0 {
            add(counter, n);
        }
    }
}

/// What came of a send, for the machine: the routes of an answer applied (completing the
/// misses they answer), an error answer other than a refusal failing the first send's misses,
/// a malformed answer counted and logged.
async fn outcome(
    inner: &Inner,
    batch: &Batch,
    a: &Awaited,
    answer: Result<Response, ClientError>,
    kind: SendKind,
) -> Outcome {
    let n = a.subset.as_ref().map_or(batch.hashes.len(), Vec::len) as u64;
    let unapplied = match answer {
        Ok(Response::Routes(routes)) => {
            if kind == SendKind::Primary {
                inner.metrics.round_trip(a.sent.elapsed());
            }
            match apply(
                inner,
                batch,
                &a.server,
                routes,
                a.subset.as_deref(),
                a.until,
            )
            .await
            {
                Ok(()) => return Outcome::Answered,
                Err(u) => u,
            }
        }
        Ok(Response::Error(e)) if is_refusal(e.code) => Unapplied::Refused(e),
        Ok(Response::Error(e)) if is_overloaded(e.code) => Unapplied::Overloaded(e, n),
        Ok(Response::Error(e)) => {
            // The first send's misses fail with it; a hedge's is ignored (the first server's
            // answer, or its retries, still complete the misses).
            if kind == SendKind::Primary {
                batch.fail_pending(&CacheError::Server(e));
            }
            return Outcome::ServerError;
        }
        Err(e) => Unapplied::from(e),
        Ok(other) => Unapplied::from(ClientError::unexpected(&other)),
    };
    let addr = a.server.client.remote_address();
    let table = &batch.table.name;
    match unapplied {
        Unapplied::Malformed(reason) => {
            refuse(inner, &a.server, table, &reason);
            Outcome::Malformed
        }
        Unapplied::Failed => Outcome::Failed,
        Unapplied::Refused(reply) => {
            tracing::debug!(server = %addr, %table, %reply, "refused; asking another server");
            Outcome::Refused(reply)
        }
        Unapplied::Outdated(reason) => {
            tracing::debug!(server = %addr, %table, %reason, "an outdated answer; asking another server");
            Outcome::Outdated
        }
        Unapplied::Overloaded(reply, lookups) => {
            tracing::debug!(
                server = %addr,
                %table,
                %reply,
                "shed as overloaded; dropping the refreshes, asking one other server for the misses"
            );
            Outcome::Overloaded(reply, lookups)
        }
    }
}

/// Why an answer was not applied. Either way the batch's misses go to another server, as
/// after a failed send (after `Overloaded`, to one other server at most).
pub(crate) enum Unapplied {
    /// The server broke the protocol: counted and logged by [`refuse`].
    Malformed(String),
    /// No answer in time, a connection lost, or no node list to resolve the answer with (the
    /// server could not send it, or the table changed in the meantime).
    Failed,
    /// The server refused the lookup: `behind` the version asked for, or `unavailable` (not
    /// ready). It is not asked again for the batch.
    Refused(ErrorReply),
    /// The answer is at an older table version than the cache has seen by now (the request
    /// left before that version was seen, or the server ignored `min_version`): counted as
    /// `behind`, and the misses are asked again.
    Outdated(String),
    /// The server shed the lookup, or the node list its answer needed, as `overloaded` (its
    /// lookup limit), costing that many lookups (the hashes of the frame, or one node-list
    /// fetch). It is not asked again for the batch.
    Overloaded(ErrorReply, u64),
}

impl From<ClientError> for Unapplied {
    fn from(e: ClientError) -> Self {
        match e {
            // An answer that did not decode, or of another kind than asked for.
            ClientError::Protocol(reason) => Self::Malformed(reason),
            ClientError::Decode(e) => Self::Malformed(e.to_string()),
            // A node-list fetch the server shed.
            ClientError::Server(e) if is_overloaded(e.code) => Self::Overloaded(e, 1),
            _ => Self::Failed,
        }
    }
}

/// Counts a server answer refused as malformed, and logs it: at warn for the first refusal on
/// the server's connection, at debug after that (a lying server would otherwise log once per
/// batch; the counter keeps the rate).
pub(crate) fn refuse(inner: &Inner, server: &Server, table: &TableName, reason: &str) {
    add(&inner.counters.protocol_errors, 1);
    let addr = server.client.remote_address();
    if server.first_refusal() {
        tracing::warn!(server = %addr, table = %table, %reason, "refused a malformed answer and asked another server; later ones from this connection are logged at debug");
    } else {
        tracing::debug!(server = %addr, table = %table, %reason, "refused a malformed answer");
    }
}

/// Applies an answer: confirm or insert each route, complete the waiting misses. A route is
/// confirmed in place only by an answer from the node list it was resolved from; any other is
/// resolved through the answer's list (fetched by its digest) and inserted, so a node that
/// moved under the same id reaches the cache as a new epoch would. `subset` maps the answer's
/// routes to batch indexes when the answer is a hedge's; a node list it needs is fetched by
/// `until`. An answer that fails [`check_answer`] is refused whole before anything
/// of it is used, and one whose routes name nodes missing from its node list before any of its
/// routes is inserted. An answer at an older table version than the cache has seen is not
/// used at all ([`Unapplied::Outdated`]): a miss is never handed a route older than one the
/// cache could have given (and the table's staleness rules keep cached routes from moving
/// backwards besides); a newer one raises the version every later lookup asks for.
pub(crate) async fn apply(
    inner: &Inner,
    batch: &Batch,
    server: &Server,
    routes: Routes,
    subset: Option<&[usize]>,
    until: Instant,
) -> Result<(), Unapplied> {
    let t = &batch.table;
    let now = inner.now();
    let index_of = |k: usize| subset.map_or(k, |s| s[k]);
    let asked = subset.map_or(batch.hashes.len(), <[usize]>::len);
    let ids = check_answer(&routes, asked, |k| batch.hashes[index_of(k)])
        .map_err(Unapplied::Malformed)?;
    if let Some(newest) = t.newest_version()
        && routes.table_version < newest
    {
        return Err(Unapplied::Outdated(format!(
            "answered at version {}, older than the {newest} already seen",
            routes.table_version
        )));
    }
    t.saw_version(routes.table_version);
    let mut to_insert = Vec::new();
    for (k, r) in routes.routes.iter().enumerate() {
        match t
            .routes
            .check(routes.table_version, r, ids[k], routes.nodes_digest, now)
        {
            Check::Confirmed | Check::Stale => {
                let i = index_of(k);
                if let Some(route) = t.routes.get(batch.hashes[i]) {
                    batch.complete(i, Ok(route));
                } else {
                    to_insert.push(k);
                }
            }
            Check::Insert => to_insert.push(k),
        }
    }
    if to_insert.is_empty() {
        return Ok(());
    }
    let nodes = nodes_for(t, server, routes.nodes_digest, until).await?;
    let mut resolved = Vec::with_capacity(to_insert.len());
    for k in to_insert {
        let r = &routes.routes[k];
        let Some(route) = nodes.resolve(&t.name, routes.table_version, r, ids[k]) else {
            // The list carries the answer's digest yet lacks a node the answer names: the
            // server of the answer or that of the list lied. The list is dropped so that the
            // next answer fetches it afresh rather than failing against it too.
            t.nodes.compare_and_swap(&nodes, Arc::new(Nodes::default()));
            return Err(Unapplied::Malformed(format!(
                "partition {} names a node missing from the node list of digest {:#018x}",
                r.partition, routes.nodes_digest
            )));
        };
        resolved.push((k, route));
    }
    let mut changed = 0;
    for (k, route) in resolved {
        let route = Arc::new(route);
        let i = index_of(k);
        let source = if batch.is_miss[i] {
            RouteSource::Miss
        } else {
            RouteSource::Refresh
        };
        let applied = t
            .routes
            .insert_answer(Arc::clone(&route), routes.nodes_digest, now, source);
        if applied == Applied::Changed {
            changed += 1;
        }
        // A waiting miss gets the answer even if the cache kept something newer.
        let answer = t.routes.get(batch.hashes[i]).unwrap_or(route);
        batch.complete(i, Ok(answer));
    }
    add(&inner.counters.changed, changed);
    inner.enforce_capacity(t);
    t.routes.maybe_rebuild(inner.now(), false);
    Ok(())
}

/// Checks a server's answer to `asked` hashes (`hash(k)` is the k-th) before any of it is used:
/// one route per hash, in order, each holding its hash, each with 1 to 7 distinct replicas and
/// a leader among them, and replica counts that add up. Answers the replica ids of each route.
pub(crate) fn check_answer(
    routes: &Routes,
    asked: usize,
    hash: impl Fn(usize) -> u64,
) -> Result<Vec<&[u32]>, String> {
    if routes.routes.len() != asked {
        return Err(format!(
            "{} routes for {asked} hashes asked",
            routes.routes.len()
        ));
    }
    let ids = routes
        .replica_slices()
        .ok_or("the replica counts do not add up to the replica list")?;
    for (k, (r, ids)) in routes.routes.iter().zip(&ids).enumerate() {
        let h = hash(k);
        if !(r.start <= h && h <= r.end_inclusive) {
            return Err(format!(
                "the route of partition {} [{}, {}] does not hold hash {h}",
                r.partition, r.start, r.end_inclusive
            ));
        }
        if ids.is_empty() || ids.len() > MAX_REPLICAS || usize::from(r.leader) >= ids.len() {
            return Err(format!(
                "partition {}: leader {} of {} replicas",
                r.partition,
                r.leader,
                ids.len()
            ));
        }
        // At most 7 replicas: comparing pairs is cheaper than any set.
        if let Some((i, id)) = ids
            .iter()
            .enumerate()
            .find(|&(i, id)| ids[..i].contains(id))
        {
            return Err(format!(
                "partition {}: node {id} is replica {i} and an earlier one",
                r.partition
            ));
        }
    }
    Ok(ids)
}

/// The table's node list with the given digest, fetched from `server` if the cached one differs
/// (one fetch at a time per table), all by `until`: a server that never sends the list must not
/// hold the fetch, which every answer on the table may wait for. A list not sorted by id
/// without repeats is refused before it is stored: routes find their nodes in it by binary
/// search, which on such a list misses nodes or finds an impostor.
pub(crate) async fn nodes_for(
    t: &TableState,
    server: &Server,
    digest: u64,
    until: Instant,
) -> Result<Arc<Nodes>, Unapplied> {
    let current = t.nodes.load_full();
    if current.digest == digest && !current.nodes.is_empty() {
        return Ok(current);
    }
    let fetch = async {
        let _guard = t.nodes_fetch.lock().await;
        let current = t.nodes.load_full();
        if current.digest == digest && !current.nodes.is_empty() {
            return Ok(current);
        }
        let fetched = server.client.get_nodes(t.name.as_str()).await?;
        if let Some(w) = fetched.nodes.windows(2).find(|w| w[0].id >= w[1].id) {
            return Err(Unapplied::Malformed(format!(
                "node list not sorted by id without repeats: node {} before node {}",
                w[0].id, w[1].id
            )));
        }
        let fetched = Arc::new(Nodes::new(fetched));
        t.nodes.store(Arc::clone(&fetched));
        Ok(fetched)
    };
    let nodes = tokio::time::timeout_at(until.into(), fetch)
        .await
        .unwrap_or(Err(Unapplied::Failed))?;
    // Another digest: the table changed between the answer and the list.
    if nodes.digest == digest {
        Ok(nodes)
    } else {
        Err(Unapplied::Failed)
    }
}

impl Inner {
    /// Wakes the dispatcher for a miss: from its sleep, or from holding refreshes (a miss goes
    /// at once and carries them).
    pub(crate) fn wake_for_miss(&self) {
        // The miss is in the queue; now read the flags (see the fences in `dispatch`).
        fence(Ordering::SeqCst);
        if self.dispatcher_lingering.load(Ordering::SeqCst)
            && self.dispatcher_lingering.swap(false, Ordering::AcqRel)
        {
            self.wake.notify_one();
            return;
        }
        self.wake_dispatcher();
    }

    pub(crate) fn wake_dispatcher(&self) {
        if self.dispatcher_asleep.load(Ordering::SeqCst)
            && self.dispatcher_asleep.swap(false, Ordering::AcqRel)
        {
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memds_proto::wire::WireRoute;

    /// An answer of one route per `(start, end, replica ids, leader)`.
    pub(crate) fn answer(routes: &[(u64, u64, &[u32], u8)]) -> Routes {
        let mut out = Routes::default();
        for &(start, end_inclusive, ids, leader) in routes {
            out.routes.push(WireRoute {
                partition: start,
                start,
                end_inclusive,
                epoch: 1,
                leader,
                replica_count: ids.len() as u8,
            });
            out.replicas.extend_from_slice(ids);
        }
        out
    }

    #[test]
    pub(crate) fn check_answer_refuses_whatever_does_not_answer_the_hashes_asked() {
        let asked = [10u64, 20];
        let hash = |k: usize| asked[k];
        let good = answer(&[(0, 15, &[1, 2, 3], 0), (16, 99, &[2], 0)]);
        assert_eq!(
            check_answer(&good, 2, hash),
            Ok(vec![&[1u32, 2, 3][..], &[2][..]])
        );
        let mut uneven = good.clone();
        uneven.replicas.pop();
        let cases = [
            (
                "a route more",
                answer(&[(0, 15, &[1], 0), (16, 99, &[2], 0), (100, 200, &[3], 0)]),
            ),
            ("a route fewer", answer(&[(0, 15, &[1], 0)])),
            ("replica counts that do not add up", uneven),
            (
                "a route that does not hold its hash",
                answer(&[(0, 15, &[1], 0), (21, 99, &[2], 0)]),
            ),
            (
                "a route that ends before it starts",
                answer(&[(0, 15, &[1], 0), (30, 5, &[2], 0)]),
            ),
            ("no replicas", answer(&[(0, 15, &[], 0), (16, 99, &[2], 0)])),
            (
                "eight replicas",
                answer(&[(0, 15, &[1, 2, 3, 4, 5, 6, 7, 8], 0), (16, 99, &[2], 0)]),
            ),
            (
                "a leader past the replicas",
                answer(&[(0, 15, &[1, 2], 2), (16, 99, &[2], 0)]),
            ),
            (
                "a replica twice",
                answer(&[(0, 15, &[1, 2, 1], 0), (16, 99, &[2], 0)]),
            ),
        ];
        for (what, routes) in cases {
            assert!(
                check_answer(&routes, 2, hash).is_err(),
                "{what} was accepted"
            );
        }
    }
}
