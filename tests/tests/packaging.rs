//! The Debian package and the systemd unit, checked with the real tools: `cargo deb`,
//! `dpkg-deb` and `systemd-analyze verify` (scripts/test installs them when missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_tests::weir_bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stdout}\n{stderr}",
        out.status
    );
    format!("{stdout}{stderr}")
}

/// `systemd-analyze verify` reports problems on stderr but exits 0 for most of them, so the
/// unit passes only with no output at all. `/usr/bin/weir` is replaced by the binary under
/// test because verify checks that every command exists.
fn verify_unit(unit_text: &str, dir: &Path) -> String {
    let unit = dir.join("weir.service");
    std::fs::write(
        &unit,
        unit_text.replace("/usr/bin/weir", &weir_bin().display().to_string()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (Debian's systemd package; scripts/test installs it)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("packaging/weir.service")).unwrap();
    for key in [
        "Type=notify",
        "ExecStartPre=/usr/bin/weir validate",
        "ExecReload=/usr/bin/weir validate",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "WatchdogSec=",
        "StateDirectory=weir",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
    ] {
        assert!(text.contains(key), "weir.service lacks {key}");
    }
    let problems = verify_unit(&text, tmp.path());
    assert_eq!(problems, "", "systemd-analyze verify complained");

    // The check is not vacuous: a misspelt type and an unknown key are reported.
    let broken = text.replace("Type=notify", "Type=notif\nBogusKey=1");
    let problems = verify_unit(&broken, tmp.path());
    assert!(problems.contains("notif"), "{problems}");
    assert!(problems.contains("BogusKey"), "{problems}");
}

#[test]
fn the_packaged_default_config_is_valid_and_listens_on_loopback_only() {
    let path = repo().join("packaging/weir.toml");
    let out = run(Command::new(weir_bin())
        .args(["validate", "--config"])
        .arg(&path));
    assert!(out.contains("ok"), "{out}");
    let text = std::fs::read_to_string(&path).unwrap();
    for line in text.lines().filter(|l| l.trim_start().starts_with("bind")) {
        assert!(line.contains("\"127.0.0.1:"), "not loopback: {line}");
    }
    assert!(text.contains("data_dir = \"/var/lib/weir\""));
}

#[test]
fn cargo_deb_builds_a_package_with_binary_unit_conffile_and_user_setup() {
    let tmp = tempfile::tempdir().unwrap();
    let deb = tmp.path().join("weir.deb");
    // The debug binary the other tests run: packaging is checked, not release optimisation.
    run(Command::new("cargo")
        .current_dir(repo())
        .args([
            "deb",
            "-p",
            "weir",
            "--no-build",
            "--profile",
            "dev",
            "--no-strip",
            "--fast",
            "-o",
        ])
        .arg(&deb));

    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for field in [
        "Package: weir",
        "Architecture: amd64",
        "Depends: adduser",
        "Section: net",
    ] {
        assert!(info.contains(field), "control lacks {field}:\n{info}");
    }
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/weir",
        "./etc/weir/weir.toml",
        "/lib/systemd/system/weir.service",
        "./usr/share/doc/weir/README.md",
        "./usr/share/doc/weir/copyright",
    ] {
        assert!(contents.contains(path), "package lacks {path}:\n{contents}");
    }

    let control = tmp.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    let conffiles = std::fs::read_to_string(control.join("conffiles")).unwrap();
    assert_eq!(conffiles.trim(), "/etc/weir/weir.toml");
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(postinst.contains("/var/lib/weir"), "{postinst}");
    assert!(
        postinst.contains("deb-systemd-helper") && !postinst.contains("#DEBHELPER#"),
        "the unit is enabled by the generated snippet: {postinst}"
    );
    let postrm = std::fs::read_to_string(control.join("postrm")).unwrap();
    assert!(postrm.contains("purge"), "{postrm}");
    run(Command::new("sh").arg("-n").arg(control.join("postinst")));
    run(Command::new("sh").arg("-n").arg(control.join("postrm")));

    // Unpacked into a throwaway root, the binary runs and accepts its own conffile, and the
    // unit as installed still verifies.
    let root = tmp.path().join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let out = run(Command::new(root.join("usr/bin/weir"))
        .args(["validate", "--config"])
        .arg(root.join("etc/weir/weir.toml")));
    assert!(out.contains("ok"), "{out}");
    let unit = [
        "lib/systemd/system/weir.service",
        "usr/lib/systemd/system/weir.service",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.exists())
    .expect("unit in the package");
    let text = std::fs::read_to_string(unit).unwrap();
    assert_eq!(verify_unit(&text, tmp.path()), "");
}
