//! Looking into the test vhost's queues over AMQP.

use lapin::{
    Connection, ConnectionProperties,
    options::{BasicGetOptions, QueueDeclareOptions},
    types::FieldTable,
};

/// Ready messages in `queue` (not counting those delivered and unacked).
pub async fn ready_count(amqp_url: &str, queue: &str) -> u32 {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
    q.message_count()
}

/// Takes one message from `queue` (acked), or `None` when it is empty.
pub async fn take_one(amqp_url: &str, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let msg = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
    msg
}

/// Publishes raw bytes (persistent, confirmed) as a test's own client would.
pub async fn publish_raw(
    amqp_url: &str,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: lapin::BasicProperties,
) {
    let message = (routing_key.to_owned(), body.to_vec(), properties);
    publish_raw_many(amqp_url, exchange, vec![message]).await;
}

/// Publishes many raw messages on one channel, their confirms awaited
/// together.
pub async fn publish_raw_many(
    amqp_url: &str,
    exchange: &str,
    messages: Vec<(String, Vec<u8>, lapin::BasicProperties)>,
) {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for chunk in messages.chunks(1_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (routing_key, body, properties) in chunk {
            pending.push(
                ch.basic_publish(
                    exchange.into(),
                    routing_key.as_str().into(),
                    lapin::options::BasicPublishOptions::default(),
                    body,
                    properties.clone(),
                )
                .await
                .unwrap(),
            );
        }
        for confirm in pending {
            assert!(
                confirm.await.unwrap().is_ack(),
                "the broker refused the test's message"
            );
        }
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// Dead task letters as the tasks' dead-letter queue receives them: a
/// message that is not a task (so a replay of it runs nothing) under
/// `task.upper` for each id, in order, confirmed.
pub async fn dead_task_letters(amqp_url: &str, ids: impl IntoIterator<Item = String>) {
    let messages = ids
        .into_iter()
        .map(|id| {
            (
                "task.upper".to_owned(),
                b"not a task".to_vec(),
                bibliomq_core::broker::headers::persistent_json(&id, "c"),
            )
        })
        .collect();
    publish_raw_many(
        amqp_url,
        bibliomq_core::broker::topology::DEAD_LETTER_EXCHANGE,
        messages,
    )
    .await;
}

/// Consumers subscribed to `queue` now, as the queue itself counts them
/// (the management API's figure lags by its statistics interval); `None`
/// while the queue does not exist or the broker does not answer.
pub async fn consumer_count(amqp_url: &str, queue: &str) -> Option<u32> {
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .ok()?;
    let ch = conn.create_channel().await.ok()?;
    let declared = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    let _ = conn.close(200, "bye".into()).await;
    declared.ok().map(|q| q.consumer_count())
}

/// Waits until `queue` has exactly `n` consumers; fails the test otherwise.
pub async fn wait_for_consumers(amqp_url: &str, queue: &str, n: u32) {
    let last = std::sync::Mutex::new(None);
    let seen = crate::app::wait_until(crate::app::DEADLINE, || async {
        let count = consumer_count(amqp_url, queue).await;
        *last.lock().unwrap() = count;
        (count == Some(n)).then_some(())
    })
    .await;
    assert!(
        seen.is_some(),
        "{queue} never had {n} consumers; last count: {:?}",
        last.lock().unwrap()
    );
}
