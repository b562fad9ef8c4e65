//! Kafka interop through the noida-db broker fixture, with independent clients only:
//! kcat produces, Debian's python3-confluent-kafka consumes.

use weir_tests::kafka::{confluent_python, Broker};

#[test]
fn kcat_to_confluent_kafka_through_noida_db() {
    let broker = Broker::start();
    broker.create_topic("smoke", 2);
    let lines: Vec<String> = (0..20).map(|i| format!("k{i}\tvalue-{i}")).collect();
    broker.kcat_produce("smoke", &lines, true);

    let script = format!(
        "from confluent_kafka import Consumer\n\
         c = Consumer({{'bootstrap.servers': '{}', 'group.id': 'smoke', \
         'auto.offset.reset': 'earliest', 'enable.auto.commit': False}})\n\
         c.subscribe(['smoke'])\n\
         got = []\n\
         for _ in range(200):\n\
         \x20   m = c.poll(0.2)\n\
         \x20   if m is not None and m.error() is None: got.append((m.key() or b'').decode() + '=' + m.value().decode())\n\
         \x20   if len(got) >= 20: break\n\
         c.close()\n\
         print('\\n'.join(sorted(got)))\n",
        broker.bootstrap()
    );
    let out = confluent_python().args(["-c", &script]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut want: Vec<String> = (0..20).map(|i| format!("k{i}=value-{i}")).collect();
    want.sort();
    let got: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(got, want);

    // And kcat reads back what kcat wrote, across both partitions.
    let mut read: Vec<String> = broker
        .kcat_consume("smoke", "%k=%s\n", false)
        .lines()
        .map(str::to_owned)
        .collect();
    read.sort();
    assert_eq!(read, want);
}
