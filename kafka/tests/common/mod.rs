//! Helpers shared by the mock-cluster tests.

use rdkafka::client::Client;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, DefaultProducerContext, Producer};
use rdkafka::ClientConfig;

/// A 3-broker mock cluster owned by a client handle, so that the group's initial rebalance
/// delay (3 s by default) can be set to 0 through the raw bindings.
pub struct Mock {
    handle: BaseProducer,
}

impl Mock {
    // `unsafe` allowed (the workspace denies it): rdkafka has no safe setter for the mock
    // cluster's initial rebalance delay, so this test calls librdkafka's C function on the
    // cluster pointer its own handle owns (checked non-null).
    #[allow(unsafe_code)]
    pub fn start(topic: &str, partitions: i32) -> Mock {
        let handle: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "3")
            .create()
            .unwrap();
        // SAFETY: the handle owns the mock cluster and outlives this call.
        unsafe {
            let cluster =
                rdkafka::bindings::rd_kafka_handle_mock_cluster(handle.client().native_ptr());
            assert!(!cluster.is_null());
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
        }
        let mock = Mock { handle };
        mock.cluster().create_topic(topic, partitions, 3).unwrap();
        mock
    }

    pub fn cluster(&self) -> MockCluster<'_, DefaultProducerContext> {
        let client: &Client<DefaultProducerContext> = self.handle.client();
        client.mock_cluster().unwrap()
    }

    pub fn brokers(&self) -> String {
        self.cluster().bootstrap_servers()
    }

    #[allow(dead_code)] // not every test binary takes brokers down
    pub fn all_brokers(&self, up: bool) {
        for b in 1..=3 {
            if up {
                self.cluster().broker_up(b).unwrap();
            } else {
                self.cluster().broker_down(b).unwrap();
            }
        }
    }
}
