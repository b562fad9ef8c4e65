//! What the agent supplies to micro-batch jobs: their `avro` output's client.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use weir_avro_rpc::client::RpcClient;
use weir_avro_rpc::datum::Status;
use weir_avro_rpc::protocol::Protocol;
use weir_avro_rpc::transport::{BoxStream, ClientLayers};
use weir_core::Event;
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
