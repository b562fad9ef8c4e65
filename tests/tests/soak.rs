//! A short `weir bench soak` (issue 10): the whole agent — avro push into `file` channels, a
//! backpressured job, a `spark` sink drained by pollers, `taildir` on a rotated log — at twice
//! its sustainable rate, then at half of it. The bench checks memory, FAILED instead of
//! timeouts, nothing acknowledged lost and full rate again afterwards, and exits non-zero when
//! one fails. The ten-minute run and its figures are in RELIABILITY.md.

use std::process::Command;

use weir_tests::weir_bin;

#[test]
fn a_short_soak_under_overload_keeps_every_promise() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(weir_bin())
        .args(["bench", "soak", "--dir"])
        .arg(dir.path().join("soak"))
        .args([
            "--rate",
            "2000",
            "--channel-events",
            "3000",
            "--connections",
            "4",
        ])
        .args([
            "--warmup-seconds",
            "3",
            "--overload-seconds",
            "12",
            "--normal-seconds",
            "12",
        ])
        .args([
            "--tail-rate",
            "200",
            "--rotate-seconds",
            "3",
            "--drain-seconds",
            "30",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "soak failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The bench itself checked the promises; make sure it really measured something.
    let summary = std::fs::read_to_string(dir.path().join("soak/summary.txt")).unwrap();
    assert!(summary.contains("checks: all passed"), "{summary}");
    let csv = std::fs::read_to_string(dir.path().join("soak/soak.csv")).unwrap();
    let overload_rows = csv.lines().filter(|l| l.contains(",overload,")).count();
    assert!(overload_rows >= 10, "{csv}");
}
