//! Crash test: the real `memds-server` binary is killed with SIGKILL at random points while
//! writes flow from several clients, then restarted on the same data directory. Every write
//! acknowledged before the kill must be there, and every table must be exactly one of the maps
//! that were written (nothing partial, nothing invented).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{KillOnDrop, connector_with, table, temp_dir};
use memds_client::ConnectOptions;
use memds_client::Role;
use rand::{Rng, SeedableRng};

const TABLES: usize = 3;
const PARTITIONS: usize = 150;

/// A killed server sends no close; a short idle timeout lets clients notice quickly.
fn admin_connector(dir: &Path) -> memds_client::Connector {
    let options = ConnectOptions {
        idle_timeout: Duration::from_millis(1500),
        ..ConnectOptions::default()
    };
    connector_with(&dir.join("tls"), Role::Admin, options)
}

fn spawn_server(dir: &Path) -> (KillOnDrop, SocketAddr) {
    // A small log bound, so compaction also happens under the kills.
    common::spawn_server(dir, &["--compact-wal-bytes", "200000"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_at_random_points() {
    let dir_tmp = temp_dir("crash");
    let dir = dir_tmp.path().to_path_buf();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0xC0FFEE);
    // The highest version acknowledged per table, and the highest attempted.
    let acked: Arc<Mutex<HashMap<usize, u64>>> = Arc::default();
    let mut attempted: HashMap<usize, u64> = HashMap::new();
    let mut kills = 0;
    for round in 0..5 {
        let (mut child, addr) = spawn_server(&dir);
        let admin = admin_connector(&dir).connect(addr).await.expect("connects");
        // Recovery check: every acknowledged write is there, and each table is exactly the map
        // of its version.
        for t in 0..TABLES {
            let name = format!("table-{t:04}");
            let want = acked.lock().expect("lock").get(&t).copied();
            let got = admin.get_table(&name, None).await;
            match (want, got) {
                (None, Err(_)) => {}
                (want, Ok(Some(map))) => {
                    let v = map.version().get();
                    assert!(
                        want.is_none_or(|w| v >= w),
                        "round {round}: {name} lost version {want:?}, has {v}"
                    );
                    assert!(
                        v <= attempted[&t],
                        "round {round}: {name} has version {v}, never written"
                    );
                    assert_eq!(
                        map,
                        table(t, PARTITIONS, v),
                        "round {round}: {name} v{v} is not what was written"
                    );
                    attempted.insert(t, attempted[&t].max(v));
                }
                (want, got) => panic!("round {round}: {name}: acked {want:?}, server has {got:?}"),
            }
        }
        // Writers: one task per table, each putting ever newer versions.
        let mut tasks = Vec::new();
        for t in 0..TABLES {
            let admin = admin.clone();
            let acked = Arc::clone(&acked);
            let start = attempted.get(&t).copied().unwrap_or(0) + 1;
            attempted.insert(t, start + 10_000);
            tasks.push(tokio::spawn(async move {
                for v in start..start + 10_000 {
                    match admin.put_table(&table(t, PARTITIONS, v)).await {
                        Ok(ack) => {
                            assert_eq!(ack.version, v);
                            acked.lock().expect("lock").insert(t, v);
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..600))).await;
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        kills += 1;
        for task in tasks {
            task.await.expect("writer task");
        }
        // Attempts never go past what a writer could have sent: clamp to acked + 1.
        for t in 0..TABLES {
            let a = acked.lock().expect("lock").get(&t).copied().unwrap_or(0);
            attempted.insert(t, a + 1);
        }
    }
    assert_eq!(kills, 5);
    eprintln!(
        "highest acknowledged version per table: {:?}",
        acked.lock().expect("lock")
    );
    let total: u64 = acked.lock().expect("lock").values().sum();
    assert!(
        total > 10,
        "too few writes were acknowledged to test anything: {total}"
    );

    // A last restart, checked the same way.
    let (mut child, addr) = spawn_server(&dir);
    let admin = admin_connector(&dir).connect(addr).await.expect("connects");
    for t in 0..TABLES {
        let map = admin
            .get_table(&format!("table-{t:04}"), None)
            .await
            .expect("get")
            .expect("present");
        let v = map.version().get();
        let a = acked.lock().expect("lock")[&t];
        assert!(v == a || v == a + 1, "table {t}: acked {a}, has {v}");
        assert_eq!(map, table(t, PARTITIONS, v));
    }
    child.kill().expect("kill");
    child.wait().expect("reaped");
}
