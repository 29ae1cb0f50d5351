//! Whole tables: Classic whole-table mode's download and periodic refresh, and
//! [`RouterCache::warm`](crate::RouterCache::warm), all through [`Inner::fetch_table`] (one
//! get-table, or one get-delta since the cached copy), asking another server on refusal, shed
//! or failure.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use memds_client::{ClientError, DeltaAnswer};
use memds_proto::TableMap;
use memds_proto::model::BatchEdit;
use memds_proto::wire::{ErrorCode, ErrorReply};
use tokio::sync::watch;

use crate::batch::refuse;
use crate::cache::{Inner, Mode};
use crate::dispatcher::{Refusals, is_overloaded, is_refusal};
use crate::explain::{WarmKind, Warmed};
use crate::registry::TableState;
use crate::stats::{CacheError, add};
use crate::table::{Applied, RouteSource};
use crate::whole::WholeCopy;

/// A server's answer to [`Inner::fetch_table`]'s request.
pub(crate) enum Fetched {
    /// To a get-delta.
    Delta(DeltaAnswer),
    /// To a get-table: the version and snapshot bytes, or not modified.
    Table(Option<(u64, Vec<u8>)>),
}

/// Classic whole-table mode: refreshes the downloaded tables every `every` until shutdown.
pub(crate) async fn refresh_loop(
    inner: Arc<Inner>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = inner.refresh_tables().await {
            tracing::debug!(error = %e, "refreshing a downloaded table");
        }
    }
}

impl Inner {
    /// Classic mode's first touch: the whole table, from one server (see
    /// [`Inner::fetch_table`]).
    pub(crate) async fn download(&self, t: &TableState) -> Result<(), CacheError> {
        let _guard = t.nodes_fetch.lock().await;
        if t.downloaded.load(Ordering::SeqCst) {
            return Ok(());
        }
        let fetched = self.fetch_table(t, None, RouteSource::WholeTable).await?;
        self.count_whole_table(&fetched);
        Ok(())
    }

    /// Whole-table mode: brings a downloaded table up to date, by the delta since the version
    /// held when a server can tell it, else whole (see [`Inner::fetch_table`]).
    pub(crate) async fn refresh_table(&self, t: &TableState) -> Result<(), CacheError> {
        let _guard = t.nodes_fetch.lock().await;
        if !t.downloaded.load(Ordering::SeqCst) {
            return Ok(());
        }
        let held = t.copy().version;
        let fetched = self.fetch_table(t, held, RouteSource::WholeTable).await?;
        self.count_whole_table(&fetched);
        Ok(())
    }

    /// Counts what a fetch of Classic whole-table mode brought.
    pub(crate) fn count_whole_table(&self, fetched: &Warmed) {
        let c = &self.counters;
        add(&c.lookups_sent, fetched.routes);
        match fetched.kind {
            WarmKind::Whole => add(&c.table_downloads, 1),
            WarmKind::Delta => {
                add(&c.changed, fetched.changed);
                add(&c.table_deltas, 1);
            }
            WarmKind::NotModified => {}
        }
    }

    /// Brings the table's copy up to date from the fleet, with `nodes_fetch` held: the delta
    /// since version `since` if given, else (or when a server cannot tell that delta, or it
    /// does not apply to the copy) the whole table; the routes are recorded as from `source`.
    /// Shared by Classic whole-table mode's download and refresh and by `warm`.
    ///
    /// It waits for a connected server within the request timeout. A server that refuses
    /// (behind, not ready) or whose answer is older than a version the cache has seen (a
    /// table, a delta, or `not modified` at an older version) is not asked again; the fetch
    /// fails once every connected server has refused. One that sheds it (`overloaded`) is not
    /// asked again either, and a second one shedding it fails the fetch
    /// ([`CacheError::Overloaded`]). One that fails or sends something malformed (a snapshot
    /// over the limit or damaged, an answer of another kind) is avoided while another is up.
    pub(crate) async fn fetch_table(
        &self,
        t: &TableState,
        since: Option<u64>,
        source: RouteSource,
    ) -> Result<Warmed, CacheError> {
        let mut since = since;
        let deadline = Instant::now() + self.request_timeout;
        let mut tried: Option<usize> = None;
        let mut refusals = Refusals::default();
        // An answer older than what the cache holds or has seen: refused as `behind`.
        let behind = |refusals: &mut Refusals, server: usize, held: Option<u64>, what: String| {
            let reply = ErrorReply::new(
                ErrorCode::Behind,
                format!(
                    "{what}, older than the {} already seen",
                    t.newest_version().max(held).unwrap_or_default()
                ),
            );
            self.count_refusal(&reply, 1);
            refusals.add(server, reply);
        };
        while Instant::now() < deadline && !refusals.all(self.fleet.len()) {
            let Some(server) = self
                .fleet
                .pick(&refusals.avoiding(tried))
                .or_else(|| self.fleet.pick(&refusals.shunned()))
            else {
                if !refusals.shunned().is_empty() {
                    // Every connected server refused or shed the fetch.
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            if tried == Some(server.index) {
                // The same server again (no other is up) after it failed: not in a tight loop.
                let left = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(left.min(Duration::from_millis(10))).await;
            }
            tried = Some(server.index);
            let name = t.name.as_str();
            let in_flight = server.begin();
            // A server that never answers must not hold the fetch, and the lock every miss on
            // the table may wait for, past the deadline.
            let answer = tokio::time::timeout_at(deadline.into(), async {
                match since {
                    Some(held) => server
                        .client
                        .get_delta(name, held)
                        .await
                        .map(Fetched::Delta),
                    None => server
                        .client
                        .get_table_snapshot(name, None)
                        .await
                        .map(Fetched::Table),
                }
            })
            .await;
            drop(in_flight);
            let Ok(answer) = answer else {
                break;
            };
            match answer {
                Ok(Fetched::Table(Some((_, bytes)))) => match self.decode(t, &bytes) {
                    Err(reason) => refuse(self, &server, &t.name, &reason),
                    Ok(map) if t.is_behind(map.version().get()) => behind(
                        &mut refusals,
                        server.index,
                        since,
                        format!("sent version {} of the table", map.version().get()),
                    ),
                    Ok(map) => {
                        let mut fetched = self.install_whole(t, &map, source);
                        fetched.bytes = Some(bytes.len() as u64);
                        return Ok(fetched);
                    }
                },
                Ok(Fetched::Table(None)) => {
                    let reason = "answered an unconditional get-table with not modified";
                    refuse(self, &server, &t.name, reason);
                }
                Ok(Fetched::Delta(DeltaAnswer::Delta(delta))) if t.is_behind(delta.version) => {
                    behind(
                        &mut refusals,
                        server.index,
                        since,
                        format!("sent a delta to version {}", delta.version),
                    );
                }
                Ok(Fetched::Delta(DeltaAnswer::Delta(delta))) => {
                    match self.apply_delta(t, &BatchEdit::from(delta), source) {
                        Ok(fetched) => return Ok(fetched),
                        Err(reason) => {
                            tracing::info!(server = %server.client.remote_address(), table = %t.name, %reason, "a delta that does not apply to the cached table: fetching it whole");
                            since = None;
                            tried = None;
                        }
                    }
                }
                Ok(Fetched::Delta(
                    DeltaAnswer::NotModified(version) | DeltaAnswer::NoDelta(version),
                )) if since.is_some_and(|held| version < held) || t.is_behind(version) => {
                    behind(
                        &mut refusals,
                        server.index,
                        since,
                        format!("holds version {version} of the table"),
                    );
                }
                Ok(Fetched::Delta(DeltaAnswer::NotModified(version))) => {
                    return Ok(Warmed {
                        kind: WarmKind::NotModified,
                        version: since.unwrap_or(version),
                        routes: 0,
                        changed: 0,
                        evicted: 0,
                        bytes: None,
                    });
                }
                // The server cannot tell what changed since the copy: the whole table, from
                // any server (this one is not avoided: it did not fail).
                Ok(Fetched::Delta(DeltaAnswer::NoDelta(_))) => {
                    since = None;
                    tried = None;
                }
                Err(ClientError::Server(e)) if is_refusal(e.code) => {
                    self.count_refusal(&e, 1);
                    refusals.add(server.index, e);
                }
                // Shed: one other server is asked, no more.
                Err(ClientError::Server(e)) if is_overloaded(e.code) => {
                    add(&self.counters.overloaded, 1);
                    if refusals.add_overloaded(server.index, e) >= 2 {
                        break;
                    }
                }
                Err(ClientError::Server(e)) => return Err(CacheError::Server(e)),
                // Damaged, of another table, or of another kind: refused before it is used;
                // another server may send one that is not.
                Err(
                    e @ (ClientError::Snapshot(_)
                    | ClientError::Protocol(_)
                    | ClientError::Decode(_)),
                ) => {
                    refuse(self, &server, &t.name, &e.to_string());
                }
                Err(_) => {}
            }
        }
        Err(self.give_up(&refusals, t))
    }

    /// Decodes a whole-table snapshot a server sent for `t`: within the snapshot limit, and
    /// of that table (another table's map would be cached as this one's).
    pub(crate) fn decode(&self, t: &TableState, bytes: &[u8]) -> Result<TableMap, String> {
        let map = memds_proto::snapshot::decode(bytes, self.max_snapshot_bytes)
            .map_err(|e| ClientError::Snapshot(e).to_string())?;
        if map.name() != &t.name {
            return Err(format!(
                "asked for table {:?}, the snapshot holds {:?}",
                t.name.as_str(),
                map.name().as_str()
            ));
        }
        Ok(map)
    }

    /// Caches every route of a whole table (through the staleness rules, within capacity) and
    /// makes it the table's copy.
    pub(crate) fn install_whole(
        &self,
        t: &TableState,
        map: &TableMap,
        source: RouteSource,
    ) -> Warmed {
        let version = map.version().get();
        t.saw_version(version);
        let compact =
            memds_proto::CompactTable::new(map, &mut memds_proto::NodeInterner::default());
        let now = self.now();
        let mut copy = t.copy();
        let (mut changed, mut evicted) = (0, 0);
        for e in compact.iter() {
            let route = Arc::new(compact.route(&e));
            if t.routes.insert_from(route, now, source) == Applied::Changed {
                changed += 1;
                evicted += self.enforce_capacity(t);
            }
        }
        *copy = WholeCopy::downloaded(version, compact.node_specs());
        drop(copy);
        if let Mode::Classic { whole_table: true } = self.mode {
            t.downloaded.store(true, Ordering::SeqCst);
        }
        t.routes.maybe_rebuild(now, true);
        Warmed {
            kind: WarmKind::Whole,
            version,
            routes: compact.len() as u64,
            changed,
            evicted,
            bytes: None,
        }
    }

    /// Applies a delta to the table's copy and cached routes: checked whole first
    /// ([`WholeCopy::delta_routes`]), then each new route inserted (replacing the routes of
    /// its range, which the new routes cover exactly). Answers why not when it does not apply.
    pub(crate) fn apply_delta(
        &self,
        t: &TableState,
        delta: &BatchEdit,
        source: RouteSource,
    ) -> Result<Warmed, String> {
        let mut copy = t.copy();
        let made = copy.delta_routes(&t.name, delta)?;
        let now = self.now();
        let (mut changed, mut evicted) = (0, 0);
        for route in &made.routes {
            if t.routes.insert_from(Arc::new(route.clone()), now, source) == Applied::Changed {
                changed += 1;
                evicted += self.enforce_capacity(t);
            }
        }
        copy.advance(delta.version, made.added);
        drop(copy);
        t.saw_version(delta.version);
        t.routes.maybe_rebuild(now, true);
        Ok(Warmed {
            kind: WarmKind::Delta,
            version: delta.version,
            routes: made.routes.len() as u64,
            changed,
            evicted,
            bytes: None,
        })
    }

    /// The error of a request no server answered: overloaded if any server shed it, else the
    /// refusals if any server refused, else a timeout.
    pub(crate) fn give_up(&self, refusals: &Refusals, t: &TableState) -> CacheError {
        refusals
            .error(self.fleet.len(), t.newest_version())
            .unwrap_or(CacheError::Timeout(self.request_timeout, self.fleet.up()))
    }
}

impl Inner {
    /// Brings every downloaded table up to date (see
    /// [`RouterCache::refresh_tables`](crate::RouterCache::refresh_tables)).
    pub(crate) async fn refresh_tables(&self) -> Result<(), CacheError> {
        let mut first_error = None;
        for t in self.all_tables() {
            if let Err(e) = self.refresh_table(&t).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
