//! The keyed ZeroMQ event feed: with auth on, the keyless PUB socket is not
//! served, and a libzmq DEALER follows events with a key through the
//! request socket (`follow`), until it unfollows or its key is revoked.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bibliomq_core::config::Settings;
use bibliomq_testkit::{
    TestApp, TestEdge,
    app::{DEADLINE, wait_until},
};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{ask, context, spawn_with_edge};

/// Keys required; no rate limit (the tests submit many tasks with one key).
fn secured(s: &mut Settings) {
    s.auth.enabled = true;
    s.auth.rate_per_sec = 0.0;
}

/// A libzmq DEALER on a thread of its own: sends what it is given, hands
/// over every JSON frame it receives. Stops when dropped.
struct Dealer {
    outgoing: std::sync::mpsc::Sender<Value>,
    incoming: mpsc::UnboundedReceiver<Value>,
    stop: Arc<AtomicBool>,
}

impl Dealer {
    fn connect(endpoint: &str) -> Self {
        let socket = context().socket(zmq::DEALER).unwrap();
        socket.set_linger(0).unwrap();
        // Short receive timeouts only so the thread notices `stop` and sends.
        socket.set_rcvtimeo(20).unwrap();
        socket.connect(endpoint).unwrap();
        let (outgoing, to_send) = std::sync::mpsc::channel::<Value>();
        let (tx, incoming) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                while let Ok(request) = to_send.try_recv() {
                    // As a REQ would: an empty delimiter, then the request.
                    socket
                        .send_multipart([&b""[..], request.to_string().as_bytes()], 0)
                        .unwrap();
                }
                match socket.recv_multipart(0) {
                    Ok(frames) => {
                        assert_eq!(frames.len(), 2, "delimiter + one JSON frame: {frames:?}");
                        assert!(frames[0].is_empty(), "{frames:?}");
                        let body = serde_json::from_slice(&frames[1]).unwrap();
                        if tx.send(body).is_err() {
                            return;
                        }
                    }
                    Err(zmq::Error::EAGAIN) => {}
                    Err(e) => panic!("DEALER receive failed: {e}"),
                }
            }
        });
        Self {
            outgoing,
            incoming,
            stop,
        }
    }

    fn send(&self, request: Value) {
        self.outgoing.send(request).unwrap();
    }

    /// The next frame, keep-alives included, waiting at most `within`.
    async fn next_frame(&mut self, within: Duration) -> Option<Value> {
        tokio::time::timeout(within, self.incoming.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next frame that is not a keep-alive, waiting at most `within`.
    async fn next(&mut self, within: Duration) -> Option<Value> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let frame = self.next_frame(end - tokio::time::Instant::now()).await?;
            if frame.get("keep_alive").is_none() {
                return Some(frame);
            }
        }
    }

    /// Sends `request` and returns the next frame, which must come.
    async fn ask(&mut self, request: Value) -> Value {
        self.send(request);
        self.next(DEADLINE).await.expect("an answer")
    }
}

impl Drop for Dealer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The `task.succeeded` event of task `id`, skipping others; `None` when
/// the feed is quiet for `within`.
async fn event_of(dealer: &mut Dealer, id: &str, within: Duration) -> Option<Value> {
    loop {
        let frame = dealer.next(within).await?;
        if frame["event"]["task_id"] == id {
            return Some(frame);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_required_events_reach_only_a_follower_with_a_key_that_may_see_them() {
    let (app, edge): (TestApp, TestEdge) = spawn_with_edge(secured).await;
    assert_eq!(
        edge.ports.zmq_pub, None,
        "with auth on, the keyless PUB feed is not served"
    );
    let endpoint = edge.request_endpoint();
    let service = app.key("service", None, None).await;
    let patron = app.key("patron", None, Some("nobody")).await;

    // Refusals are replies, and start nothing.
    let none = ask(&endpoint, json!({"action": "follow"})).await;
    assert_eq!(none["error"]["code"], "unauthorized", "{none}");
    let forbidden = ask(&endpoint, json!({"action": "follow", "key": patron})).await;
    assert_eq!(forbidden["error"]["code"], "forbidden", "{forbidden}");
    let bad = ask(
        &endpoint,
        json!({"action": "follow", "key": service, "keys": "task..x"}),
    )
    .await;
    assert_eq!(
        (&bad["error"]["code"], &bad["error"]["field"]),
        (&json!("invalid_keys"), &json!("keys")),
        "{bad}"
    );
    let mistyped = ask(
        &endpoint,
        json!({"action": "follow", "key": service, "keys": [1]}),
    )
    .await;
    assert_eq!(mistyped["error"]["field"], "keys", "{mistyped}");

    // Followed: the answer comes once the feed is bound, so every outcome
    // after it is delivered, and only those that match.
    let mut dealer = Dealer::connect(&endpoint);
    let answer = dealer
        .ask(json!({"action": "follow", "key": service, "keys": ["task.succeeded"]}))
        .await;
    assert_eq!(answer, json!({"ok": true, "following": ["task.succeeded"]}));
    for n in 0..5 {
        let id = app.submit_sum_as(&service, n).await;
        let frame = event_of(&mut dealer, &id, DEADLINE)
            .await
            .unwrap_or_else(|| panic!("no event for task {id}"));
        assert_eq!(frame["ok"], true, "{frame}");
        assert_eq!(frame["routing_key"], "task.succeeded", "{frame}");
        assert_eq!(frame["event"]["state"], "succeeded", "{frame}");
    }

    // Unfollowed: answered, and nothing more comes, while a second
    // follower (the witness) gets the next event.
    let mut witness = Dealer::connect(&endpoint);
    let answer = witness
        .ask(json!({"action": "follow", "key": service, "keys": "task.*"}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    let answer = dealer
        .ask(json!({"action": "unfollow", "key": service}))
        .await;
    assert_eq!(answer, json!({"ok": true, "following": []}));
    let id = app.submit_sum_as(&service, 99).await;
    assert!(event_of(&mut witness, &id, DEADLINE).await.is_some());
    assert_eq!(
        dealer.next(Duration::from_millis(500)).await,
        None,
        "an event after unfollow"
    );
}

/// A key revoked while it follows (by hand in SQL, as an operator would)
/// stops its feed at the next event, with a last `unauthorized` frame; a
/// follower with another key goes on. Without the re-check at each event
/// the revoked follower would go on receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_key_is_revoked_gets_no_further_event() {
    let (app, edge) = spawn_with_edge(|s| {
        secured(s);
        // Revocation must not wait for the cache to expire.
        s.auth.cache_ttl = Duration::from_secs(3600);
    })
    .await;
    let endpoint = edge.request_endpoint();
    let kept = app.key("service", None, None).await;
    let revoked = app.key("service", None, None).await;
    let mut keeps = Dealer::connect(&endpoint);
    let mut loses = Dealer::connect(&endpoint);
    for (dealer, key) in [(&mut keeps, &kept), (&mut loses, &revoked)] {
        let answer = dealer
            .ask(json!({"action": "follow", "key": key, "keys": "task.*"}))
            .await;
        assert_eq!(answer["ok"], true, "{answer}");
    }
    let id = app.submit_sum_as(&kept, 1).await;
    for dealer in [&mut keeps, &mut loses] {
        assert!(event_of(dealer, &id, DEADLINE).await.is_some());
    }

    app.revoke_in_sql(&revoked).await;
    // The announcement reaches the edge soon, not at once: submit until the
    // revoked follower's feed ends, counting what it still got meanwhile.
    let end = tokio::time::Instant::now() + DEADLINE;
    let last = loop {
        assert!(
            tokio::time::Instant::now() < end,
            "the revoked key went on following"
        );
        let id = app.submit_sum_as(&kept, 2).await;
        assert!(
            event_of(&mut keeps, &id, DEADLINE).await.is_some(),
            "the follower with a valid key missed task {id}"
        );
        match loses.next(DEADLINE).await {
            Some(frame) if frame["ok"] == false => break frame,
            Some(frame) => assert_eq!(frame["event"]["task_id"], id, "{frame}"),
            None => panic!("the revoked follower got neither its event nor an error"),
        }
    };
    assert_eq!(last["error"]["code"], "unauthorized", "{last}");
    let id = app.submit_sum_as(&kept, 3).await;
    assert!(event_of(&mut keeps, &id, DEADLINE).await.is_some());
    assert_eq!(
        loses.next(Duration::from_millis(500)).await,
        None,
        "an event after the key was revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_required_the_keyless_feed_is_served_only_when_asked_for() {
    let (_app, edge) = spawn_with_edge(|s| {
        secured(s);
        s.edge.open_feed = Some(true);
    })
    .await;
    assert!(edge.ports.zmq_pub.is_some());
}

/// What each key's feed carries is what its role may see: an admin every
/// event, a service key the task events (its role is tasks only), a branch
/// librarian the circulation events of that branch, which name patrons.
/// Each follows `#`; the admin's feed is the witness that an event was
/// published, and events reach each feed in the order they were published,
/// so the first event a feed gets after others were published shows
/// whether those were held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_carries_only_the_events_its_key_may_see() {
    let (app, edge) = spawn_with_edge(secured).await;
    let endpoint = edge.request_endpoint();
    app.add_patrons("feed", 2).await;
    app.add_title("9780000000002", "Feed", &[2, 2]).await;
    let admin = app.key("admin", None, None).await;
    let service = app.key("service", None, None).await;
    let norte = app.key("librarian", Some("norte"), None).await;
    let mut feeds = Vec::new();
    for key in [&admin, &service, &norte] {
        let mut dealer = Dealer::connect(&endpoint);
        let answer = dealer.ask(json!({"action": "follow", "key": key})).await;
        assert_eq!(answer["following"], json!(["#"]), "{answer}");
        feeds.push(dealer);
    }
    let [mut admin_feed, mut service_feed, mut norte_feed] =
        <[Dealer; 3]>::try_from(feeds).unwrap_or_else(|_| unreachable!());
    let lend = |branch: &'static str, patron: &'static str| {
        let (app, admin) = (&app, &admin);
        async move {
            let (status, _, body) = app
                .call_as(
                    Some(admin),
                    Method::POST,
                    "/v1/loans",
                    Some(&json!({"isbn": "9780000000002", "patron": patron, "branch": branch})),
                )
                .await;
            assert_eq!(status, 201, "{body}");
        }
    };
    let next_key = |frame: Option<Value>| -> String {
        let frame = frame.expect("an event");
        frame["routing_key"].as_str().unwrap().to_owned()
    };

    // Two loans, at central and at norte: the admin sees both.
    lend("central", "feed1").await;
    lend("norte", "feed2").await;
    let mut seen = vec![
        next_key(admin_feed.next(DEADLINE).await),
        next_key(admin_feed.next(DEADLINE).await),
    ];
    seen.sort();
    assert_eq!(seen, ["loaned.central", "loaned.norte"]);
    // Then a task: the first event the service key gets is the task's.
    let id = app.submit_sum_as(&service, 7).await;
    let frame = service_feed.next(DEADLINE).await.expect("the task's event");
    assert_eq!(frame["event"]["task_id"], id, "{frame}");
    assert!(event_of(&mut admin_feed, &id, DEADLINE).await.is_some());
    // The norte librarian got the norte loan, and nothing of the others.
    assert_eq!(next_key(norte_feed.next(DEADLINE).await), "loaned.norte");
    lend("central", "feed1").await;
    assert_eq!(next_key(admin_feed.next(DEADLINE).await), "loaned.central");
    lend("norte", "feed1").await;
    assert_eq!(
        next_key(norte_feed.next(DEADLINE).await),
        "loaned.norte",
        "the central loan and the task reached a norte librarian"
    );
}

/// A follower that goes away without a word is noticed: a quiet feed sends
/// a keep-alive every 15 s, and once its socket is gone the edge ends the
/// feed and RabbitMQ drops its queue. Without the keep-alive, a feed whose
/// patterns never match would keep its task and its queue until the edge
/// stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_goes_away_is_noticed_and_its_queue_dropped() {
    let (app, edge) = spawn_with_edge(|s| s.edge.open_feed = Some(false)).await;
    // Feeds' queues are named by the server (`amq.gen-...`): the
    // dashboard counts them apart.
    let feed_queues = || async {
        let (status, body) = app.get_json("/v1/dashboard/queues").await;
        assert_eq!(status, 200, "{body}");
        body["temporary_queues"].as_u64().unwrap()
    };
    let before = feed_queues().await;
    let mut dealer = Dealer::connect(&edge.request_endpoint());
    let answer = dealer
        .ask(json!({"action": "follow", "keys": "nothing.ever"}))
        .await;
    assert_eq!(answer["ok"], true, "{answer}");
    // The management API's figures lag by a few seconds.
    wait_until(DEADLINE, || async {
        (feed_queues().await == before + 1).then_some(())
    })
    .await
    .expect("the feed's queue never showed");
    let frame = dealer
        .next_frame(Duration::from_secs(20))
        .await
        .expect("a quiet feed sends keep-alives");
    assert_eq!(frame, json!({"ok": true, "keep_alive": true}));

    drop(dealer);
    // The next keep-alive (15 s) finds the socket gone.
    wait_until(Duration::from_secs(60), || async {
        (feed_queues().await == before).then_some(())
    })
    .await
    .expect("the feed of a follower that went away lingered");
}
