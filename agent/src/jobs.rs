//! What the agent supplies to micro-batch jobs: their `avro` output's client and their
//! `kafka` output.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use weir_avro_rpc::client::RpcClient;
use weir_avro_rpc::datum::Status;
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::transport::{BoxStream, ClientLayers};
use weir_core::Event;
use weir_kafka::output::KafkaOutputConfig;
use weir_streaming::config::{JobConfig, OutputConfig};
use weir_streaming::output::EventsFn;

/// Sends each batch of results with `appendBatch` to a Flume `AvroSource` (or weir's), on one
/// connection that is reopened after any failure. `Ok` only for an `OK` answer, so the job
/// does not commit its inputs for a batch whose results were refused.
pub fn avro_events_output(host: String, port: u16) -> EventsFn {
    let client: Arc<Mutex<Option<RpcClient<BoxStream>>>> = Arc::new(Mutex::new(None));
    Arc::new(move |events: Vec<Event>| {
        let (client, host) = (client.clone(), host.clone());
        Box::pin(async move {
            let mut slot = client.lock().await;
            let c = match slot.as_mut() {
                Some(c) => c,
                None => {
                    let addr = format!("{host}:{port}");
                    let c = crate::client::open(
                        &addr,
                        &host,
                        &ClientLayers::default(),
                        Protocol::flume(),
                        Duration::from_secs(20),
                    )
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                    slot.insert(c)
                }
            };
            match c.append_batch(&events).await {
                Ok(Status::Ok) => Ok(()),
                Ok(status) => {
                    *slot = None;
                    Err(format!("{host}:{port} answered {status:?}").into())
                }
                Err(e) => {
                    *slot = None;
                    Err(format!("appendBatch to {host}:{port} failed: {e}").into())
                }
            }
        })
    })
}

/// A job's `kafka` output and the consumer group its transactions commit the job's Kafka
/// input offsets to.
#[derive(Clone, Debug)]
pub struct KafkaJobOutput {
    pub config: KafkaOutputConfig,
    /// The Kafka input's `group.id` or, in group mode, its `group`; `None` without a
    /// transactional id or Kafka input.
    pub group: Option<String>,
    /// The input is in consumer-group mode: its member's metadata fences the transactions.
    pub group_mode: bool,
}

/// The job's `kafka` output, if it has one, checked: problems as `(key path relative to the
/// job table, message)`. Exactly-once commits the Kafka inputs' offsets to their consumer
/// group, so a transactional output needs every Kafka input to name the same group
/// (`properties."group.id"`, or `group` in consumer-group mode, where the job has one
/// Kafka input: a transaction carries one member's metadata).
pub fn kafka_output(job: &JobConfig) -> Result<Option<KafkaJobOutput>, (String, String)> {
    let OutputConfig::Kafka(table) = &job.output else {
        return Ok(None);
    };
    let config = crate::components::kafka_output(table).map_err(|e| {
        let path = if e.path.is_empty() {
            "output".to_string()
        } else {
            format!("output.{}", e.path)
        };
        (path, e.message)
    })?;
    let mut group = None;
    let mut group_mode = false;
    if config.transactional_id.is_some() {
        let inputs = job.kafka_inputs();
        for (at, table) in &inputs {
            // A bad input table is reported on its own.
            let Ok(input) = crate::components::kafka_input(table) else {
                continue;
            };
            let id = match (&input.group, input.properties.get("group.id")) {
                (Some(g), _) if inputs.len() > 1 => {
                    return Err((
                        "output.transactional_id".into(),
                        format!(
                            "exactly-once in consumer-group mode (`{at}.group = \"{g}\"`) \
                             takes one Kafka input: a transaction carries one group \
                             member's offsets"
                        ),
                    ))
                }
                (Some(g), _) => {
                    group_mode = true;
                    g
                }
                (None, Some(id)) => id,
                (None, None) => {
                    return Err((
                        "output.transactional_id".into(),
                        format!(
                            "exactly-once commits the consumed offsets to the Kafka input's \
                             consumer group: set `group.id` in `{at}.properties` (or \
                             `{at}.group` for consumer-group mode)"
                        ),
                    ))
                }
            };
            match &group {
                Some(g) if g != id => {
                    return Err((
                        "output.transactional_id".into(),
                        format!(
                            "one transaction commits offsets to one consumer group, but the \
                             Kafka inputs name `{g}` and `{id}`"
                        ),
                    ))
                }
                _ => group = Some(id.clone()),
            }
        }
    }
    Ok(Some(KafkaJobOutput {
        config,
        group,
        group_mode,
    }))
}
