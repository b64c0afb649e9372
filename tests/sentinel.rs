//! Redis Sentinel, for real: a primary, a replica and three
//! `redis-sentinel`s on free ports. The gateway finds the primary through
//! the sentinels, keeps its outbox until the replica has each batch (WAIT),
//! and follows a failover by itself. With the replica's link silenced by a
//! proxy so that acknowledged writes exist on the primary alone, the
//! primary killed and the replica promoted, the new primary's stream still
//! ends with every event exactly once, in seq order.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{
    wait_drained, wait_until, TcpProxy, TestGateway, TestRedis, TestSentinels, PROMPTLY, RECONNECT,
    SENTINEL_MASTER,
};
use smartwait_gateway::Config;

/// Publishes on `gateway` until `stop` is set; the seqs it was answered.
fn publish_continuously(
    gateway: Arc<TestGateway>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<u64>> {
    tokio::spawn(async move {
        let mut seqs = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            seqs.push(gateway.broadcast_numbered("tick", n).await);
            n += 1;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seqs
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_loses_acknowledged_writes_still_ends_with_every_event_once_in_order() {
    let mut primary = TestRedis::start().await;
    // Everyone reaches the primary through a proxy that can silence the
    // replica's link alone.
    let to_primary = TcpProxy::start(primary.port).await;
    let replica_of = to_primary.port.to_string();
    let replica = TestRedis::start_with(&["--replicaof", "127.0.0.1", &replica_of]).await;
    let sentinels = TestSentinels::start(to_primary.port, 1, 3).await;
    let addresses = sentinels.addresses();
    let gateway = Arc::new(
        TestGateway::start_with(move |config: &mut Config| {
            // Only the scheme, credentials and db of url are used.
            config.redis.url = format!("redis://{SENTINEL_MASTER}");
            config.redis.sentinels = addresses;
            config.redis.sentinel_master = SENTINEL_MASTER.to_owned();
            config.clinic.node = "a".to_owned();
        })
        .await,
    );
    wait_drained(&gateway).await;

    let stop = Arc::new(AtomicBool::new(false));
    let publisher = publish_continuously(gateway.clone(), stop.clone());
    wait_until(PROMPTLY, "batches confirmed on the replica", || async {
        gateway.health().await["redis"]["replicas"]["confirmedSeq"].as_u64() > Some(10)
    })
    .await;

    // From now on, what the primary acknowledges is on the primary alone.
    assert_eq!(to_primary.freeze_replicas(), 1, "the replica's link");
    let frozen_at = gateway.health().await["redis"]["replicas"]["confirmedSeq"]
        .as_u64()
        .expect("confirmedSeq");
    let last_on_primary_only = Arc::new(Mutex::new(0u64));
    wait_until(PROMPTLY, "writes acknowledged by the primary alone", || {
        let gateway = gateway.clone();
        let last = last_on_primary_only.clone();
        async move {
            let health = gateway.health().await;
            let replicated = health["redis"]["lastReplicatedSeq"].as_u64().unwrap_or(0);
            *last.lock().expect("last") = replicated;
            replicated > frozen_at + 20 && health["redis"]["replicas"]["acked"] == 0
        }
    })
    .await;
    let health = gateway.health().await;
    assert!(
        health["redis"]["backlog"].as_u64() > Some(0),
        "unconfirmed events stay in the outbox: {health}"
    );

    primary.kill();
    // What the replica will be promoted with lacks acknowledged writes.
    let replicated_on_replica: u64 = redis::cmd("GET")
        .arg("smartwait:{test-clinic}:nodes:a:replicated")
        .query_async(&mut replica.client().await)
        .await
        .expect("replicated on the replica");
    assert!(
        replicated_on_replica < *last_on_primary_only.lock().expect("last"),
        "the failover loses writes: {replicated_on_replica}"
    );
    wait_until(
        RECONNECT,
        "the sentinels to promote the replica",
        || async { sentinels.primary_port().await == Some(replica.port) },
    )
    .await;
    let promoted = std::time::Instant::now();
    // The gateway follows by itself, and re-sends what the new primary lacks.
    wait_until(
        RECONNECT,
        "the gateway to replicate to the new primary",
        || async {
            let health = gateway.health().await;
            health["redis"]["state"] == "connected"
                && health["redis"]["lastReplicatedSeq"].as_u64()
                    > Some(*last_on_primary_only.lock().expect("last"))
        },
    )
    .await;
    // A figure for BENCHMARKS.md, not an assertion: how long after the
    // sentinels named the new primary the gateway replicated to it.
    eprintln!(
        "sentinel failover: replicating to the new primary {} ms after the promotion",
        promoted.elapsed().as_millis()
    );
    stop.store(true, Ordering::SeqCst);
    let published = publisher.await.expect("publisher");
    let health = gateway.health().await;
    assert!(
        health["redis"]["backlog"].as_u64() > Some(0),
        "the new primary has no replica yet: nothing is confirmed: {health}"
    );
    // The old primary returns; the sentinels make it the new one's replica,
    // and the outbox drains.
    primary.launch().await;
    wait_drained(&gateway).await;

    let stream: Vec<u64> = replica
        .stream("test-clinic")
        .await
        .into_iter()
        .filter(|entry| entry.node == "a" && entry.event == "tick")
        .map(|entry| entry.seq)
        .collect();
    assert_eq!(
        stream.len(),
        published.len(),
        "every event once in the new primary's stream"
    );
    assert_eq!(stream, published, "in seq order, none twice, none missing");
}
