//! A real Redis Cluster (three primaries, three replicas): two boxes share
//! rooms through it on sharded Pub/Sub (`SPUBLISH`/`SSUBSCRIBE`), with the
//! clinic's keys in one slot, while operators move that slot to another
//! primary and fail its primary over to a replica. Box B's screen gets
//! every event of box A once and in order throughout, B subscribes again
//! on the slot's new owner, and the stream has each event once. Two boxes
//! of another clinic, on another primary, share their rooms too, and
//! nothing crosses between the clinics.

mod common;

use common::{
    until_live, wait_drained, wait_until, TestCluster, TestGateway, TestWsClient, PROMPTLY,
    RECONNECT,
};
use serde_json::{json, Value};
use smartwait_gateway::Config;

const STREAM: &str = "smartwait:{test-clinic}:events";
const CHANNEL: &str = "smartwait:{test-clinic}:broadcast";

fn on_cluster(cluster: &TestCluster, clinic: &str, node: &str) -> impl FnOnce(&mut Config) {
    let nodes = cluster.addresses();
    let clinic = clinic.to_owned();
    let node = node.to_owned();
    move |config: &mut Config| {
        // Only the scheme and credentials of url are used.
        config.redis.url = "redis://cluster".to_owned();
        config.redis.cluster_nodes = nodes;
        config.clinic.id = clinic;
        config.clinic.node = node;
        config.limits.client_queue = 4096;
    }
}

/// A clinic id whose keys sit on another primary than `STREAM`'s.
async fn clinic_on_another_primary(cluster: &TestCluster) -> String {
    let ours = cluster.primary_for(STREAM).await;
    for n in 0.. {
        let clinic = format!("other-clinic-{n}");
        let stream = format!("smartwait:{{{clinic}}}:events");
        if cluster.primary_for(&stream).await != ours {
            return clinic;
        }
    }
    unreachable!()
}

async fn display(gateway: &TestGateway) -> TestWsClient {
    let mut screen = gateway.connect(None).await;
    let joined = screen.request("join-patients-room", Value::Null).await;
    assert_eq!(joined["ok"], true, "{joined}");
    screen
}

/// Publishes ticks `range` on `a`; their seqs.
async fn ticks(a: &TestGateway, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for n in range {
        seqs.push(a.broadcast_numbered("tick", n).await);
    }
    seqs
}

/// The next `count` frames on `screen`: ticks `from..from + count`, in order.
async fn expect_ticks(screen: &mut TestWsClient, from: u64, count: u64) {
    for n in from..from + count {
        let frame = tokio::time::timeout(RECONNECT, screen.next_json())
            .await
            .unwrap_or_else(|_| panic!("tick {n} did not reach box b"));
        assert_eq!(frame["event"], "tick", "{frame}");
        assert_eq!(frame["data"]["n"], n, "every tick once, in order: {frame}");
    }
}

/// Whether the node on `port` has a shard-channel subscriber for the clinic.
async fn subscribed_on(cluster: &TestCluster, port: u16) -> bool {
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("SHARDCHANNELS")
        .query_async(&mut cluster.node(port).client().await)
        .await
        .unwrap_or_default();
    channels.iter().any(|channel| channel == CHANNEL)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boxes_share_rooms_through_a_cluster_while_the_clinics_slot_moves_and_fails_over() {
    let cluster = TestCluster::start().await;
    let a = TestGateway::start_with(on_cluster(&cluster, "test-clinic", "a")).await;
    let b = TestGateway::start_with(on_cluster(&cluster, "test-clinic", "b")).await;
    // A box of another clinic, whose slot sits on another primary.
    let other_clinic = clinic_on_another_primary(&cluster).await;
    let c = TestGateway::start_with(on_cluster(&cluster, &other_clinic, "c")).await;
    let d = TestGateway::start_with(on_cluster(&cluster, &other_clinic, "d")).await;
    for gateway in [&a, &b, &c, &d] {
        wait_drained(gateway).await;
    }
    // Each box's subscription proven by its canary before live delivery is asked of it.
    for gateway in [&a, &b, &c, &d] {
        wait_until(RECONNECT, "the box's subscription to receive", || async {
            let health = gateway.health().await;
            health["redis"]["canary"]["lastRoundTripMs"].is_u64()
                && health["redis"]["why"].is_null()
        })
        .await;
    }
    let mut a_screen = display(&a).await;
    let mut b_screen = display(&b).await;
    let mut c_screen = display(&c).await;
    let mut d_screen = display(&d).await;
    until_live(&a, &mut a_screen, &mut b_screen).await;
    until_live(&c, &mut c_screen, &mut d_screen).await;
    // Fan-out stays within a clinic.
    let (status, _) = c
        .publish(
            "/api/broadcast",
            json!({"room": "patients", "event": "other_clinic", "data": null}),
        )
        .await;
    assert_eq!(status, 202);
    d_screen.expect_event("other_clinic").await;
    let owner = cluster.primary_for(STREAM).await;
    assert!(
        subscribed_on(&cluster, owner).await,
        "sharded Pub/Sub on the slot's primary"
    );

    let mut published = ticks(&a, 0..100).await;
    expect_ticks(&mut b_screen, 0, 100).await;

    // The clinic's slot moves to another primary, with its keys.
    let moved_to = cluster.move_slot_of(STREAM).await;
    assert_ne!(moved_to, owner);
    published.extend(ticks(&a, 100..200).await);
    expect_ticks(&mut b_screen, 100, 100).await;
    wait_until(PROMPTLY, "b to subscribe on the slot's new primary", || {
        subscribed_on(&cluster, moved_to)
    })
    .await;

    // Its primary fails over to its replica.
    let promoted = cluster.fail_over_primary_of(STREAM).await;
    published.extend(ticks(&a, 200..300).await);
    expect_ticks(&mut b_screen, 200, 100).await;
    wait_until(PROMPTLY, "b to subscribe on the promoted replica", || {
        subscribed_on(&cluster, promoted)
    })
    .await;

    // Live again, once; and the stream has every tick once, in order.
    wait_drained(&a).await;
    drop(a_screen);
    let mut a_screen = display(&a).await;
    until_live(&a, &mut a_screen, &mut b_screen).await;
    let extra = tokio::time::timeout(std::time::Duration::from_secs(3), b_screen.next_json()).await;
    assert!(extra.is_err(), "b got more: {extra:?}");
    let stream: Vec<u64> = cluster
        .node(promoted)
        .stream("test-clinic")
        .await
        .into_iter()
        .filter(|entry| entry.node == "a" && entry.event == "tick")
        .map(|entry| entry.seq)
        .collect();
    assert_eq!(
        stream, published,
        "every tick once, in order, in the stream"
    );
    let health = b.health().await;
    assert_eq!(health["status"], "healthy", "{health}");

    // The fleet keys work on a cluster too (their own slots, one command each).
    let fleet_index = cluster.primary_for("smartwait:fleet:seen").await;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("smartwait:fleet:seen")
        .arg(0)
        .arg(-1)
        .query_async(&mut cluster.node(fleet_index).client().await)
        .await
        .expect("ZRANGE");
    for member in ["test-clinic/a", "test-clinic/b"] {
        assert!(
            members.iter().any(|m| m == member),
            "{member} in {members:?}"
        );
    }

    // Nothing crossed between the clinics, either way.
    let crossed =
        tokio::time::timeout(std::time::Duration::from_secs(1), d_screen.next_json()).await;
    assert!(crossed.is_err(), "another clinic's box got: {crossed:?}");
    let other_stream = cluster
        .node(
            cluster
                .primary_for(&format!("smartwait:{{{other_clinic}}}:events"))
                .await,
        )
        .stream(&other_clinic)
        .await;
    assert!(
        other_stream.iter().all(|entry| entry.node == "c"),
        "only its own clinic's events in its stream"
    );
    assert!(
        cluster
            .node(promoted)
            .stream("test-clinic")
            .await
            .iter()
            .all(|entry| entry.node == "a"),
        "and none of it in ours"
    );
}
