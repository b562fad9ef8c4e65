//! Test helpers: hex parsing and the golden captures in `shared/spec/golden/`.

/// Parse hex, ignoring whitespace.
pub fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("test hex"))
        .collect()
}

pub const GOLDEN_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/spec/golden/");

/// One file's packs (one per line).
pub fn golden_file(name: &str) -> Vec<Vec<u8>> {
    let path = format!("{GOLDEN_DIR}{name}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(hex)
        .collect()
}

/// Every `*.hex` pack file except the raw zlib streams.
pub fn golden_packs() -> Vec<(String, Vec<Vec<u8>>)> {
    let mut out = Vec::new();
    let dir = std::fs::read_dir(GOLDEN_DIR).unwrap_or_else(|e| panic!("{GOLDEN_DIR}: {e}"));
    for entry in dir {
        let name = entry
            .expect("dir entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if name.ends_with(".hex") && !name.ends_with(".zlib.hex") {
            out.push((name.clone(), golden_file(&name)));
        }
    }
    out.sort();
    assert!(out.len() >= 16, "golden files missing from {GOLDEN_DIR}");
    out
}

/// A temporary directory removed on drop.
pub struct TempDir(std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("weir-avro-rpc-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
